"""Fixtures of the subscription tests: a real receiving endpoint, and the queue (SQLite file or
the real Redis) with a real consumer, for the database of the `settings` fixture (which here
lets subscriptions reach loopback, where the receivers are)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from uuid import uuid4

import pytest
import redis
from receiver import Receiver
from support import unavailable

from vitasync_fhir.config import Settings
from vitasync_fhir.notify import queue as queue_module

REDIS_URL = os.environ.get("VITASYNC_TEST_REDIS", "redis://127.0.0.1:6379/5")
FAST = {
    "subscription_backoff_seconds": 0.2,
    "subscription_backoff_max_seconds": 1.0,
    "subscription_max_attempts": 4,
    "subscription_timeout_seconds": 5.0,
    "notify_relay_grace_seconds": 0.0,
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The receivers listen on loopback, which a production server refuses to notify."""
    return Settings(**{**settings.model_dump(), "subscription_allow_private": True})


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    endpoint = Receiver().start()
    yield endpoint
    endpoint.stop()


@pytest.fixture(params=["sqlite-queue", "redis-queue"])
def hook_settings(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Settings]:
    """`settings` with its own queue (SQLite file or Redis) and fast retries."""
    redis_url = None
    if request.param == "redis-queue":
        try:
            redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
        except redis.RedisError as error:
            unavailable(f"Redis is not reachable at {REDIS_URL}: {error}")
        redis_url = REDIS_URL
    made = Settings(
        **{
            **settings.model_dump(),
            "redis_url": redis_url,
            "queue_name": f"test-{uuid4().hex[:12]}",
            **FAST,
        }
    )
    yield made
    if redis_url:
        try:
            queue_module.queue_for(made).huey.flush()
        except redis.RedisError:
            pass
    queue_module.forget(made)
