"""The conformance suite (conformance/, `python -m conformance`) as part of `make test`: a real
server driven by fhirpy, fhirclient and fhir-kit-client, every returned resource checked by
@medplum/core's validator, schemathesis over the OpenAPI description; on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from support import ROOT, create_postgres_database, drop_postgres_database, unavailable


@pytest.fixture(params=["sqlite", "postgresql"])
def conformance_database(request, worker_id):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        yield None
        return
    name = f"vitasync_conformance_{worker_id}_{os.getpid()}"
    yield create_postgres_database(name)
    drop_postgres_database(name)


def test_the_conformance_suite_passes(conformance_database, synthea_dir, tmp_path):
    if shutil.which("node") is None or shutil.which("npm") is None:
        unavailable("Node.js and npm are needed for the JavaScript clients and the validator")
    command = [sys.executable, "-m", "conformance", "--synthea", str(synthea_dir)]
    if conformance_database:
        command += ["--database-url", conformance_database]
    done = subprocess.run(
        [*command, "--keep", str(tmp_path / "work")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-5000:]
    assert "conformance: PASSED" in done.stdout
