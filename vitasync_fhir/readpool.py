"""Reads outside a transaction on PostgreSQL, on a small pool of autocommit psycopg connections.

The read by id is the server's commonest request, and SQLAlchemy's async session around its one
primary-key query cost about 1.1 ms of CPU (session, greenlet hand-offs, pool checkout and reset,
result processing) where the same query on a plain psycopg connection costs about 0.25 ms
(measured in-process). Read sessions (`Database.read_sessions`, autocommit already) carry this
pool in `session.info`, and `Store._first` sends the read and vread queries here; everything else
goes through SQLAlchemy.

The pool is as simple as the job: a request takes an idle connection, or opens one itself while
fewer than `limit` are open (so a connection error reaches that request at once and it answers
503; psycopg_pool instead opens connections in the background and retries with a back-off, and a
request waited its full timeout while PostgreSQL was away), or waits up to `WAIT_SECONDS` for one
to come back. A connection that failed is closed, and so is every idle one with it: they are as
old as the one that failed (PostgreSQL restarted, say), and the next requests open fresh ones.
Connections belong to the event loop that opened them; the pool starts over in a new loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy.engine import make_url

from vitasync_fhir.config import Settings

WAIT_SECONDS = 10.0  # as SQLAlchemy's pool_timeout in db.py
APPLICATION_NAME = "vitasync-reads"  # how its connections show in pg_stat_activity


class ReadPoolTimeout(psycopg.OperationalError):
    """Every connection stayed busy for WAIT_SECONDS."""


def conninfo(database_url: str) -> str:
    """The libpq URI of a SQLAlchemy PostgreSQL URL."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


class ReadPool:
    def __init__(self, settings: Settings, *, options: str, limit: int) -> None:
        self.conninfo = conninfo(settings.database_url)
        self.options = options
        self.limit = limit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[psycopg.AsyncConnection] = []
        self._open = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    async def fetch_one(self, query: str, params: dict[str, Any]) -> Any:
        connection = await self._acquire()
        try:
            cursor = await connection.execute(query, params)
            row = await cursor.fetchone()
        except psycopg.OperationalError:
            await self._discard([connection, *self._take_idle()])
            raise
        except BaseException:
            await self._discard([connection])
            raise
        if connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            self._idle.append(connection)
            self._wake(1)
        else:
            await self._discard([connection])
        return row

    async def _acquire(self) -> psycopg.AsyncConnection:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # Connections of a finished loop can be neither used nor closed from this one.
            self._loop, self._idle, self._open, self._waiting = loop, [], 0, deque()
        deadline = loop.time() + WAIT_SECONDS
        while not self._idle and self._open >= self.limit:
            waiter = loop.create_future()
            self._waiting.append(waiter)
            try:
                await asyncio.wait_for(waiter, max(deadline - loop.time(), 0))
            except TimeoutError:
                raise ReadPoolTimeout("no database connection came free") from None
            finally:
                if waiter in self._waiting:
                    self._waiting.remove(waiter)
        if self._idle:
            return self._idle.pop()
        self._open += 1
        try:
            return await psycopg.AsyncConnection.connect(
                self.conninfo,
                autocommit=True,
                row_factory=namedtuple_row,
                options=self.options,
                connect_timeout=5,
                application_name=APPLICATION_NAME,
            )
        except BaseException:
            self._open -= 1
            self._wake(1)
            raise

    def _wake(self, count: int) -> None:
        while count and self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                count -= 1

    def _take_idle(self) -> list[psycopg.AsyncConnection]:
        idle, self._idle = self._idle, []
        return idle

    async def _discard(self, connections: list[psycopg.AsyncConnection]) -> None:
        self._open -= len(connections)
        self._wake(len(connections))
        for connection in connections:
            try:
                await connection.close()
            except psycopg.Error:
                pass

    async def close(self) -> None:
        if self._loop is asyncio.get_running_loop():
            await self._discard(self._take_idle())
