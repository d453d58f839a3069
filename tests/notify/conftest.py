"""Fixtures for the e-mail tests: a real SMTP server (aiosmtpd) behind STARTTLS with a certificate
made here, AUTH required; the real Redis; queue consumers in threads or in killable processes.

Each test gets its own queue name (its own Redis keys, in Redis db 5) and its own data_dir, and the
database of the `settings` fixture (SQLite file and PostgreSQL).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from live import free_port
from notify_helpers import (
    MADE_SETTINGS,
    REDIS_URL,
    Certificates,
    RedisServer,
    SmtpServer,
    WorkerProcess,
    make_certificates,
)
from support import unavailable

from vitasync_fhir.config import Settings
from vitasync_fhir.notify import queue as queue_module


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def smtp(certificates: Certificates) -> Iterator[SmtpServer]:
    server = SmtpServer(certificates).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _forget_queues() -> Iterator[None]:
    yield
    while MADE_SETTINGS:
        made = MADE_SETTINGS.pop()
        if made.redis_url:
            try:
                queue_module.queue_for(made).huey.flush()
            except redis.RedisError:
                pass
        queue_module.forget(made)


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as error:
        unavailable(f"Redis is not reachable at {REDIS_URL}: {error}")
    return REDIS_URL


@pytest.fixture(params=["sqlite-queue", "redis-queue"])
def queue_url(request: pytest.FixtureRequest) -> str | None:
    """None for the embedded SQLite queue, else a Redis URL."""
    if request.param == "sqlite-queue":
        return None
    return request.getfixturevalue("redis_url")


@pytest.fixture
def worker_process(tmp_path: Path) -> Iterator[Callable[[Settings], WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(settings: Settings) -> WorkerProcess:
        process = WorkerProcess(settings, tmp_path).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis server of this test alone, on another free port, that the test may stop."""
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed")
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisServer(port=free_port(), folder=folder)
    server.start()
    yield server
    server.stop()
