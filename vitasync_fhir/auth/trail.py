"""The audit trail of reads: AuditEvents written in batches, apart from the requests they record.

A read must not cost a write: recording each read's AuditEvent in the read's own transaction made
a read four times dearer than the read itself. Reads, searches, operations and denials therefore
hand their event to this trail, which a thread of its own writes in batches every `audit_flush_ms`
(one transaction per batch, on a synchronous connection: `audit.store_many`). Writes keep their
AuditEvent in their own transaction, atomic with the change. Reading AuditEvents first waits for
the trail to be written (`drain`), so a caller never misses an event this worker has recorded.
When the database is down the trail keeps the events and retries; only past `audit_max_pending`
events does it drop the oldest, with an error in the log. A crash of the process loses at most
the last `audit_flush_ms` of read events. An event's id is chosen before its first attempt, so a
batch whose commit went through unacknowledged is not stored twice.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time

import psycopg
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError, IntegrityError, InterfaceError, OperationalError

from vitasync_fhir.config import Settings

log = logging.getLogger(__name__)

BATCH = 500


class AuditTrail:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._queue: queue.SimpleQueue[dict | threading.Event | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()
        self._failing = False  # the last write failed: the database is away

    def add(self, event: dict) -> None:
        self._queue.put(event)
        self._ensure_thread()

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every event added before this call is stored; False on timeout."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    async def settle(self) -> None:
        await asyncio.to_thread(self.drain)

    def close(self) -> None:
        """Write what is pending and stop the thread."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout=30)
        self._thread = None

    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        with self._start:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="audit-trail", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        from vitasync_fhir.db import make_sync_engine

        # A synchronous connection: the thread has nothing to await, and a statement costs it a
        # fifth of the CPU it cost through an async session (measured: `select 1` and commit
        # 160 against 750 us), which the requests of this worker would otherwise wait for.
        engine = make_sync_engine(self.settings.model_copy(update={"db_pool_size": 1}))
        pending: list[dict] = []
        waiting: list[threading.Event] = []
        stopping = False
        try:
            while not stopping or pending:
                stopping = self._collect(pending, waiting, block=not pending) or stopping
                self._failing = bool(pending) and not self._write(engine, pending)
                if self._failing:
                    if stopping:
                        log.error("audit trail: %d events not stored at shutdown", len(pending))
                        break
                    time.sleep(1.0)  # the database is away: keep them, try again
                    continue
                if not pending:  # a backlog from an outage is written a batch at a time
                    for done in waiting:
                        done.set()
                    waiting.clear()
        finally:
            for done in waiting:
                done.set()
            engine.dispose()

    def _collect(self, pending: list[dict], waiting: list[threading.Event], *, block: bool) -> bool:
        """Gather a batch: wait for a first item if told to, then up to `audit_flush_ms` more.

        True when `close` asked the thread to stop.
        """
        deadline = time.monotonic() + self.settings.audit_flush_ms / 1000
        # While writing fails, everything waiting is gathered, so that past audit_max_pending
        # the oldest are dropped (and said so) instead of the queue growing without end.
        limit = self.settings.audit_max_pending + BATCH if self._failing else BATCH
        while len(pending) < limit:
            try:
                if block:
                    item = self._queue.get()
                    block = False
                    deadline = time.monotonic() + self.settings.audit_flush_ms / 1000
                else:
                    left = deadline - time.monotonic()
                    if left > 0 and not waiting:  # someone waits for the trail: write now
                        item = self._queue.get(timeout=left)
                    else:
                        item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return True
            if isinstance(item, threading.Event):
                waiting.append(item)
            else:
                pending.append(item)
        overflow = len(pending) - self.settings.audit_max_pending
        if overflow > 0:
            log.error("audit trail: dropping %d events, the database is unreachable", overflow)
            del pending[:overflow]
        return False

    def _write(self, engine: Engine, pending: list[dict]) -> bool:
        from vitasync_fhir.auth import audit
        from vitasync_fhir.fhir.service import new_id

        batch = pending[:BATCH]
        for event in batch:  # ids kept across attempts: a batch stored twice fails as a duplicate
            event.setdefault("id", new_id())
        try:
            with engine.begin() as connection:
                audit.store_many(connection, batch)
        except Exception as error:  # the trail must outlive a database outage
            # COPY raises psycopg's own error; SQLite's comes through SQLAlchemy.
            duplicate = isinstance(error, IntegrityError | psycopg.IntegrityError)
            stored = _stored(engine, batch) if duplicate else set()
            if stored:  # an earlier attempt committed them, and its answer was lost on the way
                log.warning("audit trail: %d events had been stored already", len(stored))
                pending[:] = [event for event in pending if event.get("id") not in stored]
            elif not isinstance(error, _AWAY):  # the database answered: one event it refuses
                self._write_one_by_one(engine, batch)  # must not hold back all the others
                del pending[: len(batch)]
                return True
            else:
                log.warning("audit trail: %d events wait, writing failed: %s", len(pending), error)
            return False
        del pending[: len(batch)]
        return True

    def _write_one_by_one(self, engine: Engine, batch: list[dict]) -> None:
        """Store each event of a batch the database refused on its own; one it refuses alone
        is dropped with an error in the log (what it recorded: action, type, agent)."""
        from vitasync_fhir.auth import audit

        for event in batch:
            try:
                with engine.begin() as connection:
                    audit.store_many(connection, [event])
            except Exception as error:  # noqa: BLE001 - this event only; the rest go on
                if isinstance(error, _AWAY):
                    self._queue.put(event)  # the database went away meanwhile: try it later
                    continue
                if _stored(engine, [event]):
                    continue
                log.error(
                    "audit trail: an event could not be stored and is dropped (%s %s by %s): %s",
                    event.get("subtype", [{}])[0].get("code"),
                    [e.get("type", {}).get("code") for e in event.get("entity", [])],
                    [a.get("who") for a in event.get("agent", [])],
                    error,
                )


# Errors that mean the database is away (down, restarting, unreachable), not that it refused
# what was sent: the events are kept and tried again.
_AWAY = (
    OperationalError,
    InterfaceError,
    DisconnectionError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)


def _stored(engine: Engine, batch: list[dict]) -> set[str]:
    """The ids of the batch's events that are in the store."""
    from vitasync_fhir.fhir.tables import resources

    ids = [event["id"] for event in batch]
    query = select(resources.c.id).where(
        resources.c.resource_type == "AuditEvent", resources.c.id.in_(ids)
    )
    try:
        with engine.connect() as connection:
            return set(connection.execute(query).scalars())
    except Exception:  # noqa: BLE001 - unknown: keep the events and try again
        return set()
