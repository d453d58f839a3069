"""Engines and sessions; the one place that commits or rolls back a request's work."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import MetaData, create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from vitasync_fhir.config import Settings
from vitasync_fhir.readpool import ReadPool

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

AfterCommit = Callable[[], Awaitable[None] | None]


def sync_url(url: str) -> URL:
    """The URL for the synchronous driver (alembic, CLI, background tasks)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername == "sqlite+aiosqlite":
        parsed = parsed.set(drivername="sqlite")
    return parsed


def async_url(url: str) -> URL:
    parsed = sync_url(url)
    if parsed.drivername == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    return parsed


def is_sqlite(url: str | URL) -> bool:
    return make_url(str(url) if isinstance(url, URL) else url).get_backend_name() == "sqlite"


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _session_options(settings: Settings) -> str:
    """PostgreSQL settings of every connection (libpq `options`).

    Custom plans always: a search's selectivity depends on its values, and a generic plan chosen
    after five runs of one statement can be a hundred times slower. No JIT: compiling a large
    search's plan took longer (150 ms) than running it.
    """
    return (
        f"-c statement_timeout={settings.db_statement_timeout_ms}"
        " -c plan_cache_mode=force_custom_plan -c jit=off"
    )


def read_pool_limit(settings: Settings) -> int:
    """Connections of the read pool: half of db_pool_size (a primary-key read holds one for well
    under a millisecond)."""
    return max(1, settings.db_pool_size // 2)


def _engine_options(settings: Settings) -> dict:
    if is_sqlite(settings.database_url):
        return {}
    return {
        "pool_size": settings.db_pool_size,
        # As many again under load, less the read pool's share: a worker never holds more than
        # twice db_pool_size connections in all (PostgreSQL refuses clients past max_connections).
        "max_overflow": settings.db_pool_size - read_pool_limit(settings),
        # No pre-ping: it costs a round trip per request. A connection that died with the
        # server fails its request with a 503 and the pool drops every connection of that age.
        "pool_timeout": 10,
        "connect_args": {"options": _session_options(settings), "connect_timeout": 5},
    }


def make_sync_engine(settings: Settings) -> Engine:
    engine = create_engine(sync_url(settings.database_url), **_engine_options(settings))
    if is_sqlite(settings.database_url):
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class _ReadSession(AsyncSession):
    """A read session that, when it never began a transaction (the read pool answered every
    query), has nothing to close: it skips SQLAlchemy's close, a task and ~80 us of CPU."""

    async def __aexit__(self, type_, value, traceback) -> None:  # type: ignore[no-untyped-def]
        if self.sync_session.in_transaction():
            await super().__aexit__(type_, value, traceback)


class Database:
    """The engines of one configured database, owned by the app or a command."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = settings.database_url
        self.sqlite = is_sqlite(self.url)
        self.engine: AsyncEngine = create_async_engine(
            async_url(self.url), **_engine_options(settings)
        )
        if self.sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        # Sessions carry the settings so after-commit work (e-mail hand-off) knows its queue.
        self.sessions = async_sessionmaker(
            self.engine, expire_on_commit=False, info={"settings": settings}
        )
        # Reads run without BEGIN and ROLLBACK: under READ COMMITTED every statement has its own
        # snapshot anyway, so a read-only transaction only added two round trips. On PostgreSQL
        # their primary-key reads take the lighter psycopg pool (readpool.py).
        self.read_pool = (
            None
            if self.sqlite
            else ReadPool(
                settings, options=_session_options(settings), limit=read_pool_limit(settings)
            )
        )
        self.read_sessions = async_sessionmaker(
            self.engine.execution_options(isolation_level="AUTOCOMMIT"),
            class_=_ReadSession,
            expire_on_commit=False,
            info={"settings": settings, "read_only": True, "read_pool": self.read_pool},
        )

    async def dispose(self) -> None:
        if self.read_pool is not None:
            await self.read_pool.close()
        await self.engine.dispose()

    async def run(self, work: Callable[[AsyncSession], Awaitable[object]]) -> object:
        """Run `work` in its own unit of work: commit on success, roll back on error."""
        async with self.sessions() as session:
            async with unit_of_work(session):
                return await work(session)


def mark_written(session: AsyncSession) -> None:
    """Tell the unit of work that this session changed data and must commit."""
    if session.info.get("read_only"):  # autocommit: a write here would not be atomic
        raise RuntimeError("a write through a read-only session")
    session.info["written"] = True


def after_commit(session: AsyncSession, callback: AfterCommit) -> None:
    """Run `callback` once the session's transaction has committed; never if it rolls back."""
    session.info.setdefault("after_commit", []).append(callback)


def after_end(session: AsyncSession, callback: AfterCommit) -> None:
    """Run `callback` once the session's transaction has ended, committed or rolled back."""
    session.info.setdefault("after_end", []).append(callback)


class unit_of_work:  # noqa: N801 - used as a context manager, reads like a statement
    """Commit on success, roll back on any error, then run the after-commit callbacks."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def __aenter__(self) -> AsyncSession:
        return self.session

    async def __aexit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        session = self.session
        callbacks: list[AfterCommit] = session.info.pop("after_commit", [])
        ending: list[AfterCommit] = session.info.pop("after_end", [])
        written = session.info.pop("written", False)
        try:
            if exc_type is None and written:
                await session.commit()
            else:
                if session.in_transaction():  # else nothing began: nothing to roll back
                    await session.rollback()
                callbacks = [] if exc_type is not None else callbacks
            for callback in callbacks:
                result = callback()
                if result is not None:
                    await result
        finally:
            for callback in ending:
                result = callback()
                if result is not None:
                    await result


async def _request_session(request: Request) -> AsyncIterator[AsyncSession]:
    database: Database = request.app.state.db
    async with database.sessions() as session:
        async with unit_of_work(session):
            yield session


async def _read_session(request: Request) -> AsyncIterator[AsyncSession]:
    database: Database = request.app.state.db
    async with database.read_sessions() as session:
        async with unit_of_work(session):
            yield session


SessionDep = Annotated[AsyncSession, Depends(_request_session, scope="function")]
ReadSessionDep = Annotated[AsyncSession, Depends(_read_session, scope="function")]
"""A session for routes that only read: no transaction, and any write raises."""
