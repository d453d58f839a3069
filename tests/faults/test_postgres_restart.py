"""PostgreSQL goes away under load and comes back: requests fail fast with a 503 and an
OperationOutcome while it is away, and the same server process answers again once it is back.

The test runs a PostgreSQL of its own (initdb in a temporary folder, on a free port), so stopping
it disturbs nothing else on the machine.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
from factories import FHIR_JSON
from live import free_port, kill_hard, start
from support import service_headers, unavailable

from vitasync_fhir import migrations
from vitasync_fhir.config import Settings

FAIL_FAST_SECONDS = 8.0  # connect_timeout is 5 s; a request must never hang longer


class OwnPostgres:
    def __init__(self, folder, port: int) -> None:  # type: ignore[no-untyped-def]
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not bins or os.geteuid() != 0:
            unavailable("needs PostgreSQL's binaries and root (to run them as user postgres)")
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            unavailable("needs the postgres system user")
        self.bin = bins[-1]
        self.data = folder / "pgdata"
        self.port = port
        self.data.mkdir()
        shutil.chown(self.data, "postgres", "postgres")
        self._as_postgres("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres")

    def _as_postgres(self, tool: str, *args: str) -> None:
        command = ["runuser", "-u", "postgres", "--", f"{self.bin}/{tool}", *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed: {done.stderr or done.stdout}")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.data / "server.log")  # the server must not hold our pipes open
        self._as_postgres("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        self._as_postgres("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")


@pytest.fixture
def own_postgres():  # type: ignore[no-untyped-def]
    # Not under pytest's tmp_path: user postgres must be able to reach the folder.
    folder = Path(tempfile.mkdtemp(prefix="vitasync-pg-"))
    os.chmod(folder, 0o755)
    server = OwnPostgres(folder, free_port())
    server.start()
    yield server
    try:
        server.stop()
    except RuntimeError:
        pass
    shutil.rmtree(folder, ignore_errors=True)


def _load(base: str, headers: dict, path: str, stop: threading.Event, seen: list) -> None:
    with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
        while not stop.is_set():
            started = time.monotonic()
            answer = http.get(path)
            seen.append((started, time.monotonic() - started, answer.status_code, answer))
            time.sleep(0.02)


def test_postgres_restart_answers_503_then_recovers(own_postgres, tmp_path) -> None:
    migrations.upgrade(own_postgres.url)
    key = tmp_path / "signing.pem"
    env = {
        **os.environ,
        "VITASYNC_DATABASE_URL": own_postgres.url,
        "VITASYNC_SIGNING_KEY_FILE": str(key),
        "VITASYNC_DATA_DIR": str(tmp_path / "var"),
        "VITASYNC_AUTH_CACHE_SECONDS": "0",  # every request needs the database
    }
    process, base = start(cwd=tmp_path, env=env, workers=2)
    try:
        settings = Settings(database_url=own_postgres.url, base_url=base, signing_key_file=key)
        headers = {**service_headers(settings), **FHIR_JSON}
        made = httpx.post(f"{base}/fhir/Patient", json={"resourceType": "Patient"}, headers=headers)
        assert made.status_code == 201
        seen: list = []
        stop = threading.Event()
        path = f"/fhir/Patient/{made.json()['id']}"
        loaders = [
            threading.Thread(target=_load, args=(base, headers, path, stop, seen)) for _ in range(4)
        ]
        for loader in loaders:
            loader.start()
        time.sleep(1.0)
        own_postgres.stop()
        down_at = time.monotonic()
        time.sleep(3.0)
        own_postgres.start()
        up_at = time.monotonic()
        time.sleep(5.0)
        stop.set()
        for loader in loaders:
            loader.join()
    finally:
        kill_hard(process)

    statuses = {status for _, _, status, _ in seen}
    assert statuses <= {200, 503}, f"only 200 or 503 may answer, saw {statuses}"
    failed = [(s, took, a) for s, took, status, a in seen if status == 503]
    assert failed, "no request met the outage"
    for _, took, answer in failed:
        assert took < FAIL_FAST_SECONDS, f"a request hung for {took:.1f} s"
        assert answer.json()["resourceType"] == "OperationOutcome"
    assert all(up_at - 0.5 <= s or s <= down_at + FAIL_FAST_SECONDS for s, _, _ in failed)
    recovered = [s for s, _, status, _ in seen if status == 200 and s > up_at]
    assert recovered, "the server did not answer again after PostgreSQL came back"
    last_failure = max(s for s, _, _ in failed)
    assert last_failure - up_at < 3.0, "failures went on long after PostgreSQL was back"
