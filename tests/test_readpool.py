"""The read pool (PostgreSQL): reads by id outside a transaction reuse a few autocommit
connections with the server's session settings, wait when all are busy, fail fast when a
connection dies, and recover on the next request; through the app, the dead connection is a 503
with an OperationOutcome (or, on the plain read's lane, read again) and the next read a 200."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url
from support import BASE_URL, pg_dsn, service_headers

from vitasync_fhir import readpool
from vitasync_fhir.app import create_app
from vitasync_fhir.config import Settings
from vitasync_fhir.db import Database
from vitasync_fhir.readpool import ReadPool, ReadPoolTimeout

PID = "SELECT pg_backend_pid() AS pid"


def _pool(url: str, limit: int = 4) -> ReadPool:
    database = Database(Settings(database_url=url))
    assert database.read_pool is not None
    return ReadPool(database.settings, options=database.read_pool.options, limit=limit)


def _terminate_readers(url: str) -> int:
    """End every read-pool connection to this database, as a PostgreSQL restart would."""
    name = make_url(url).database
    with psycopg.connect(pg_dsn("test"), autocommit=True) as conn:
        ended = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = %s AND application_name = %s",
            (name, readpool.APPLICATION_NAME),
        ).fetchone()
    return ended[0] if ended else 0


def test_reads_reuse_one_connection_with_the_session_settings(postgres_url: str) -> None:
    pool = _pool(postgres_url)

    async def reads() -> set[tuple]:
        seen = {
            tuple(
                await pool.fetch_one(
                    "SELECT pg_backend_pid() AS pid, current_setting('statement_timeout') AS t,"
                    " current_setting('plan_cache_mode') AS plans, current_setting('jit') AS jit",
                    {},
                )
            )
            for _ in range(20)
        }
        await pool.close()
        return seen

    first = asyncio.run(reads())
    assert len(first) == 1, "sequential reads opened more than one connection"
    (_, timeout, plans, jit) = next(iter(first))
    assert (timeout, plans, jit) == ("15s", "force_custom_plan", "off")
    # A new event loop (a command run twice, say) starts over with connections of its own.
    second = asyncio.run(reads())
    assert len(second) == 1 and second != first


def test_no_more_than_limit_connections_and_waiters_are_served(postgres_url: str) -> None:
    pool = _pool(postgres_url, limit=2)

    async def main() -> list:
        rows = await asyncio.gather(
            *(pool.fetch_one("SELECT pg_backend_pid() AS pid, pg_sleep(0.1)", {}) for _ in range(6))
        )
        await pool.close()
        return rows

    rows = asyncio.run(main())
    assert len(rows) == 6
    assert len({row.pid for row in rows}) == 2


def test_waiting_longer_than_the_limit_is_a_timeout(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readpool, "WAIT_SECONDS", 0.2)
    pool = _pool(postgres_url, limit=1)

    async def main() -> None:
        busy = asyncio.create_task(pool.fetch_one("SELECT pg_sleep(1)", {}))
        await asyncio.sleep(0.1)
        with pytest.raises(ReadPoolTimeout):
            await pool.fetch_one(PID, {})
        await busy
        assert (await pool.fetch_one(PID, {})).pid > 0  # free again once the first is done
        await pool.close()

    asyncio.run(main())


def test_a_dead_connection_fails_once_and_the_next_read_opens_a_fresh_one(
    postgres_url: str,
) -> None:
    pool = _pool(postgres_url)

    async def main() -> None:
        # Three connections open and idle, then all of them end, as in a PostgreSQL restart.
        first = await asyncio.gather(
            *(pool.fetch_one("SELECT pg_backend_pid() AS pid, pg_sleep(0.1)", {}) for _ in range(3))
        )
        assert len({row.pid for row in first}) == 3
        assert _terminate_readers(postgres_url) >= 3
        with pytest.raises(psycopg.OperationalError):
            await pool.fetch_one(PID, {})
        # The failure took the other idle connections (as old) with it: no second failure.
        again = await pool.fetch_one(PID, {})
        assert again.pid not in {row.pid for row in first}
        await pool.close()

    asyncio.run(main())


def test_through_the_app_a_dead_connection_is_a_503_and_the_next_read_answers(
    postgres_url: str, tmp_path, shared_key_file
) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(
        database_url=postgres_url,
        base_url=BASE_URL,
        data_dir=tmp_path / "var",
        signing_key_file=shared_key_file,
    )
    with TestClient(create_app(settings), base_url=BASE_URL) as client:
        client.headers.update({**service_headers(settings), "Accept": "application/fhir+json"})
        made = client.post("/fhir/Patient", json={"resourceType": "Patient", "active": True})
        assert made.status_code == 201
        path = f"/fhir/Patient/{made.json()['id']}"
        assert client.get(path).status_code == 200
        # A read with a query string takes the full application, which answers the failure.
        assert _terminate_readers(postgres_url) >= 1
        failed = client.get(path, params={"_format": "json"})
        assert failed.status_code == 503, failed.text
        assert failed.json()["resourceType"] == "OperationOutcome"
        assert failed.headers["retry-after"]
        assert client.get(path, params={"_format": "json"}).json()["active"] is True
        # A vread takes the pool too.
        version = f"{path}/_history/1"
        assert _terminate_readers(postgres_url) >= 1
        assert client.get(version, params={"_format": "json"}).status_code == 503
        assert client.get(version, params={"_format": "json"}).json()["active"] is True
        # The plain read's own lane (read and vread) hands a failure to the full application,
        # which reads again on a fresh connection: the caller never sees the dead one.
        for plain in (path, version):
            assert _terminate_readers(postgres_url) >= 1
            answered = client.get(plain)
            assert answered.status_code == 200 and answered.json()["active"] is True
