"""$export with the production queue: real Redis, two `vitasync-fhir worker` processes; the job
runs once, whichever worker takes it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from operations_support import exported, keys, kick_off, populate, search_ids, wait_manifest
from sqlalchemy import create_engine, select
from support import BASE_URL, service_headers, unavailable

from vitasync_fhir.app import create_app
from vitasync_fhir.config import Settings
from vitasync_fhir.db import sync_url
from vitasync_fhir.export.tables import export_jobs
from vitasync_fhir.notify import queue as queue_module

REDIS_URL = os.environ.get("VITASYNC_TEST_REDIS", "redis://127.0.0.1:6379/5")
ROOT = Path(__file__).resolve().parents[3]


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITASYNC_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        env[f"VITASYNC_{name.upper()}"] = str(value)
    return {**env, "PYTHONPATH": str(ROOT)}


@pytest.fixture
def redis_settings(settings: Settings) -> Iterator[Settings]:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as error:
        unavailable(f"Redis is not reachable at {REDIS_URL}: {error}")
    config = settings.model_copy(
        update={"redis_url": REDIS_URL, "queue_name": f"export-{uuid.uuid4().hex[:8]}"}
    )
    yield config
    queue_module.queue_for(config).huey.flush()
    queue_module.forget(config)


@pytest.fixture
def workers(redis_settings: Settings, tmp_path: Path) -> Iterator[list[subprocess.Popen]]:
    started = []
    for number in range(2):
        log = open(tmp_path / f"worker-{number}.log", "ab")  # noqa: SIM115 - the child owns it
        started.append(
            subprocess.Popen(
                [sys.executable, "-m", "vitasync_fhir", "worker"],
                cwd=tmp_path,
                env=_env(redis_settings),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        log.close()
    yield started
    for process in started:
        process.terminate()
    for process in started:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_two_worker_processes_run_each_export_once(
    redis_settings: Settings, workers: list[subprocess.Popen]
) -> None:
    with TestClient(create_app(redis_settings), base_url=BASE_URL) as client:
        client.headers.update(service_headers(redis_settings))
        populate(client, patients=2)
        urls = [kick_off(client, "/fhir/$export?_type=Patient,Observation") for _ in range(3)]
        for status_url in urls:
            files = exported(client, wait_manifest(client, status_url))
            assert keys(files) == search_ids(client, "Patient") | search_ids(client, "Observation")
    engine = create_engine(sync_url(redis_settings.database_url))
    try:
        with engine.connect() as conn:
            ids = [u.rsplit("/", 1)[1] for u in urls]
            rows = conn.execute(select(export_jobs.c.attempts).where(export_jobs.c.id.in_(ids)))
            assert [r.attempts for r in rows] == [1, 1, 1]
    finally:
        engine.dispose()
    assert all(process.poll() is None for process in workers)
