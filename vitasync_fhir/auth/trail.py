"""The audit trail of reads: AuditEvents written in batches, apart from the requests they record.

A read must not cost a write: recording each read's AuditEvent in the read's own transaction made
a read four times dearer than the read itself. Reads, searches, operations and denials therefore
hand their event to this trail, which a thread of its own writes in batches every `audit_flush_ms`
(one transaction per batch). Writes keep their AuditEvent in their own transaction, atomic with
the change. Reading AuditEvents first waits for the trail to be written (`drain`), so a caller
never misses an event this worker has recorded. When the database is down the trail keeps the
events and retries; only past `audit_max_pending` events does it drop the oldest, with an error
in the log. A crash of the process loses at most the last `audit_flush_ms` of read events.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time

from vitasync_fhir.config import Settings

log = logging.getLogger(__name__)

BATCH = 500


class AuditTrail:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._queue: queue.SimpleQueue[dict | threading.Event | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

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
                self._thread = threading.Thread(
                    target=self._run, name="audit-trail", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        from vitasync_fhir.db import Database

        database = Database(self.settings.model_copy(update={"db_pool_size": 1}))
        pending: list[dict] = []
        waiting: list[threading.Event] = []
        stopping = False
        try:
            while not stopping or pending:
                stopping = self._collect(pending, waiting, block=not pending) or stopping
                if pending and not await self._write(database, pending):
                    if stopping:
                        log.error("audit trail: %d events not stored at shutdown", len(pending))
                        break
                    await asyncio.sleep(1.0)  # the database is away: keep them, try again
                    continue
                for done in waiting:
                    done.set()
                waiting.clear()
        finally:
            for done in waiting:
                done.set()
            await database.dispose()

    def _collect(self, pending: list[dict], waiting: list[threading.Event], *, block: bool) -> bool:
        """Gather a batch: wait for a first item if told to, then up to `audit_flush_ms` more.

        True when `close` asked the thread to stop.
        """
        deadline = time.monotonic() + self.settings.audit_flush_ms / 1000
        while len(pending) < BATCH:
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

    async def _write(self, database, pending: list[dict]) -> bool:  # type: ignore[no-untyped-def]
        from vitasync_fhir.auth import audit

        batch = pending[:BATCH]
        try:
            await database.run(lambda session: audit.record_many(session, batch))
        except Exception as error:  # the trail must outlive a database outage
            log.warning("audit trail: %d events wait, the write failed: %s", len(pending), error)
            return False
        del pending[: len(batch)]
        return True
