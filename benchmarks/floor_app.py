"""The floor: the least a Python ASGI app can do to answer a FHIR read from PostgreSQL.

A raw ASGI callable (no framework, no validation, no transaction: autocommit) that answers
`GET /fhir/{type}/{id}` with the stored JSON text from the same `resources` table, through a
small pool of psycopg async connections. The harness runs it with uvicorn, the same worker count
and pool size as the server, so the ratio of our read throughput to this one is the cost of
everything VitaSync adds on top of one primary-key query.

Configured by FLOOR_DATABASE_DSN (libpq DSN) and FLOOR_POOL_SIZE (connections kept per worker;
as many again may open under load, like the server's SQLAlchemy pool with its overflow).
"""

from __future__ import annotations

import asyncio
import os

import psycopg

QUERY = "SELECT content FROM resources WHERE resource_type = %s AND id = %s"
NOT_FOUND = b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found"}]}'
FHIR_JSON = [(b"content-type", b"application/fhir+json")]


class Pool:
    """Connections opened on demand up to `limit`, then shared; broken ones are dropped."""

    def __init__(self, dsn: str, *, limit: int) -> None:
        self.dsn = dsn
        self.limit = limit
        self.opened = 0
        self.idle: asyncio.Queue[psycopg.AsyncConnection] = asyncio.Queue()

    async def acquire(self) -> psycopg.AsyncConnection:
        if self.idle.empty() and self.opened < self.limit:
            self.opened += 1
            try:
                return await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
            except BaseException:
                self.opened -= 1
                raise
        return await self.idle.get()

    def release(self, conn: psycopg.AsyncConnection) -> None:
        if conn.closed:
            self.opened -= 1
        else:
            self.idle.put_nowait(conn)

    async def close(self) -> None:
        while not self.idle.empty():
            await self.idle.get_nowait().close()


pool: Pool | None = None


async def fetch(resource_type: str, resource_id: str) -> str | None:
    assert pool is not None
    conn = await pool.acquire()
    try:
        cursor = await conn.execute(QUERY, (resource_type, resource_id))
        row = await cursor.fetchone()
    except psycopg.Error:
        await conn.close()
        raise
    finally:
        pool.release(conn)
    return row[0] if row else None


async def answer(send, status: int, body: bytes) -> None:  # type: ignore[no-untyped-def]
    await send({"type": "http.response.start", "status": status, "headers": FHIR_JSON})
    await send({"type": "http.response.body", "body": body})


async def lifespan(receive, send) -> None:  # type: ignore[no-untyped-def]
    global pool
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            size = int(os.environ.get("FLOOR_POOL_SIZE", "10"))
            pool = Pool(os.environ["FLOOR_DATABASE_DSN"], limit=2 * size)
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if pool is not None:
                await pool.close()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    parts = scope["path"].strip("/").split("/")
    if parts == ["fhir", "metadata"]:
        await answer(send, 200, b'{"resourceType":"CapabilityStatement"}')
        return
    if len(parts) != 3 or parts[0] != "fhir":
        await answer(send, 404, NOT_FOUND)
        return
    content = await fetch(parts[1], parts[2])
    if content is None:
        await answer(send, 404, NOT_FOUND)
    else:
        await answer(send, 200, content.encode())
