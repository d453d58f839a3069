"""Many rows in one statement, past SQLAlchemy's per-row handling, in the session's transaction.

SQLAlchemy renders an insert of n rows as one statement with n sets of parameters, whose text
psycopg then parses afresh every time (it caches only short statements): a batch of 40
AuditEvents cost 10 ms of CPU before PostgreSQL saw it. On PostgreSQL rows go by COPY, or, when
the insert must skip conflicts and say what it inserted, as one array per column through a
statement whose text never changes. SQLite takes an executemany at the driver, or SQLAlchemy's
where a column needs its types (a datetime becomes the text SQLite stores); SQLAlchemy's for
every table made index writes on SQLite a third dearer. The `_sync` forms do the same on a
synchronous connection, for the audit trail's thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import DateTime, Table, insert
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession


async def _driver(session: AsyncSession) -> Any:
    """The psycopg connection under the session, in the session's transaction."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    return raw.driver_connection


def _postgresql(session: AsyncSession) -> bool:
    return session.bind is not None and session.bind.dialect.name == "postgresql"


async def copy_rows(session: AsyncSession, table: Table, rows: Sequence[tuple]) -> None:
    """Insert tuples given in the table's column order."""
    await copy_columns(session, table, [c.name for c in table.columns], rows)


async def copy_columns(
    session: AsyncSession, table: Table, columns: Sequence[str], rows: Sequence[tuple]
) -> None:
    """Insert tuples of `columns`; the other columns take their defaults."""
    if not rows:
        return
    if _postgresql(session):
        driver = await _driver(session)
        async with driver.cursor() as cursor:
            async with cursor.copy(_copy_statement(table, columns)) as copy:
                for row in rows:
                    await copy.write_row(row)
        return
    if _typed(table, columns):
        await session.execute(insert(table), [dict(zip(columns, row, strict=True)) for row in rows])
        return
    connection = await session.connection()
    await connection.exec_driver_sql(_insert_statement(table, columns), list(rows))


def copy_rows_sync(connection: Connection, table: Table, rows: Sequence[tuple]) -> None:
    """`copy_rows` on a synchronous connection, in its transaction: a thread of its own (the
    audit trail's) writes this way, at a fifth of the CPU per statement of an async session."""
    copy_columns_sync(connection, table, [c.name for c in table.columns], rows)


def copy_columns_sync(
    connection: Connection, table: Table, columns: Sequence[str], rows: Sequence[tuple]
) -> None:
    if not rows:
        return
    if connection.dialect.name == "postgresql":
        with connection.connection.driver_connection.cursor() as cursor:
            with cursor.copy(_copy_statement(table, columns)) as copy:
                for row in rows:
                    copy.write_row(row)
        return
    if _typed(table, columns):
        connection.execute(insert(table), [dict(zip(columns, row, strict=True)) for row in rows])
        return
    connection.exec_driver_sql(_insert_statement(table, columns), list(rows))


def _copy_statement(table: Table, columns: Sequence[str]) -> str:
    return f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"


def _typed(table: Table, columns: Sequence[str]) -> bool:
    """SQLite: a column whose values SQLAlchemy must convert (a datetime to its stored text)."""
    return any(isinstance(table.c[name].type, DateTime) for name in columns)


def _insert_statement(table: Table, columns: Sequence[str]) -> str:
    marks = ", ".join("?" for _ in columns)
    return f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({marks})"


async def insert_new_pg(
    session: AsyncSession, statement: str, columns: Sequence[list]
) -> list[tuple]:
    """Run an `INSERT ... SELECT * FROM unnest(%s, ...) ON CONFLICT DO NOTHING RETURNING ...`
    with one list per column (PostgreSQL only); the rows it returned."""
    driver = await _driver(session)
    async with driver.cursor() as cursor:
        await cursor.execute(statement, columns)
        return [tuple(row) for row in await cursor.fetchall()]
