"""The `vitasync-fhir` command as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
from factories import FHIR_JSON, patient
from live import served
from support import service_headers

from vitasync_fhir.config import Settings


def test_serve_migrates_the_embedded_database_on_first_start(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITASYNC_")}
    env["VITASYNC_DATA_DIR"] = str(tmp_path / "var")
    with served(cwd=tmp_path, env=env) as base:
        database = tmp_path / "vitasync.sqlite3"
        assert database.exists()
        assert httpx.get(f"{base}/fhir/Patient").status_code == 401
        settings = Settings(
            database_url=f"sqlite:///{database}", base_url=base, data_dir=tmp_path / "var"
        )
        headers = service_headers(settings)
        created = httpx.post(
            f"{base}/fhir/Patient", json=patient(), headers={**FHIR_JSON, **headers}
        )
        assert created.status_code == 201
        assert created.headers["location"].startswith(f"{base}/fhir/Patient/")
        read = httpx.get(created.headers["location"], headers=headers)
        assert read.json()["id"] == created.json()["id"]


def test_migrate_command_builds_the_schema(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    env = {**os.environ, "VITASYNC_DATABASE_URL": url}
    done = subprocess.run(
        [sys.executable, "-m", "vitasync_fhir.cli", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "newest schema" in done.stdout
    import sqlite3

    tables = {
        r[0]
        for r in sqlite3.connect(tmp_path / "cli.sqlite3").execute(
            "select name from sqlite_master where type='table'"
        )
    }
    assert {"resources", "resource_history", "alembic_version"} <= tables
