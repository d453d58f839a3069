"""A real bearer token for the benchmark: an admin account made in the benchmark database with
`vitasync-fhir create-user`, signed in at `POST /api/auth/login`.

This is the default token factory of `run.py` whenever the server refuses an anonymous request.
Any other factory has the same shape: `factory(base_url=..., database_url=...) -> str`.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import httpx

from benchmarks.procs import ROOT


def make_admin(*, base_url: str, database_url: str) -> tuple[str, str]:
    """A new admin account in the database: its e-mail and password."""
    password = secrets.token_urlsafe(24)
    email = f"bench-admin-{secrets.token_hex(4)}@vitasync.test"  # a database may be measured again
    env = {**os.environ, "VITASYNC_DATABASE_URL": database_url, "VITASYNC_BASE_URL": base_url}
    made = subprocess.run(
        [sys.executable, "-m", "vitasync_fhir", "create-user", "--email", email,
         "--password", password, "--role", "admin", "--given", "Bench", "--family", "Admin"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    if made.returncode != 0:
        raise RuntimeError(f"create-user failed: {made.stderr.strip() or made.stdout.strip()}")
    return email, password


def admin_token(*, base_url: str, database_url: str) -> str:
    email, password = make_admin(base_url=base_url, database_url=database_url)
    answer = httpx.post(f"{base_url}/api/auth/login", json={"email": email, "password": password},
                        timeout=30)
    if answer.status_code != 200:
        raise RuntimeError(f"login failed: HTTP {answer.status_code} {answer.text[:300]}")
    return str(answer.json()["access_token"])


def requires_token(base_url: str) -> bool:
    """Whether the server refuses an anonymous FHIR read (401) rather than answering it."""
    answer = httpx.get(f"{base_url}/fhir/Patient/bench-probe", timeout=30)
    return answer.status_code == 401
