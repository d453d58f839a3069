"""The Huey queue of one configuration: RedisHuey when `redis_url` is set, else a SQLite file.

`queue_for(settings)` is the one accessor the request path (after commit), the tasks, the worker and
`serve` share. It returns the same `Queue` for equal settings, so a process holds one Huey instance
(and one synchronous engine for the tasks) per configuration; tests that build several Settings get
one queue each. The queue is only a fast path: the outbox table is the record of what must be sent,
and the relay hands over whatever the queue lost.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from huey import Huey, RedisHuey, SqliteHuey
from huey.api import TaskWrapper
from redis import ConnectionPool
from sqlalchemy.engine import Engine

from vitasync_fhir.config import Settings
from vitasync_fhir.db import make_sync_engine

log = logging.getLogger(__name__)

_queues: dict[str, Queue] = {}
_lock = threading.Lock()


@dataclass(eq=False)
class Queue:
    """One configuration's Huey instance, its registered tasks and the engine its tasks use."""

    settings: Settings
    huey: Huey
    send: TaskWrapper = field(init=False)
    relay: TaskWrapper = field(init=False)
    reminders: TaskWrapper = field(init=False)
    _engine: Engine | None = field(default=None, init=False)

    @property
    def engine(self) -> Engine:
        with _lock:
            if self._engine is None:
                self._engine = make_sync_engine(self.settings)
            return self._engine

    def hand_over(self, outbox_ids: Iterable[int]) -> None:
        """Queue a send task per outbox row; raises if the queue is unreachable."""
        for outbox_id in outbox_ids:
            self.send(outbox_id)

    def close(self) -> None:
        with _lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()


def _key(settings: Settings) -> str:
    password = settings.smtp_password.get_secret_value() if settings.smtp_password else ""
    return settings.model_dump_json() + "\0" + password


def _huey(settings: Settings) -> Huey:
    if settings.redis_url:
        # Short socket timeouts: a request's after-commit hand-over must not hang on a dead Redis.
        pool = ConnectionPool.from_url(
            settings.redis_url,
            socket_connect_timeout=2,
            socket_timeout=10,
            health_check_interval=30,
        )
        return RedisHuey(settings.queue_name, connection_pool=pool, results=False)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    filename = str(settings.data_dir / "queue.sqlite3")
    return SqliteHuey(settings.queue_name, filename=filename, results=False, timeout=30)


def queue_for(settings: Settings) -> Queue:
    """The queue of this configuration, built (and its tasks registered) on first use."""
    key = _key(settings)
    with _lock:
        queue = _queues.get(key)
        if queue is not None:
            return queue
        queue = Queue(settings=settings, huey=_huey(settings))
        from vitasync_fhir.notify import tasks  # the tasks module needs this one: import late

        tasks.install(queue)
        from vitasync_fhir.export import tasks as export_tasks

        export_tasks.install(queue)
        from vitasync_fhir.subscriptions import tasks as subscription_tasks

        subscription_tasks.install(queue)
        _queues[key] = queue
        return queue


def forget(settings: Settings) -> None:
    """Drop (and close) the queue of this configuration; tests call it when they finish."""
    with _lock:
        queue = _queues.pop(_key(settings), None)
    if queue is not None:
        queue.close()
