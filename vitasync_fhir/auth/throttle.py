"""Slowing, then locking, repeated failed sign-ins for one e-mail address or one network address.

Keys are counted whether or not the account exists, so the answers never tell. After
`login_slow_after` failures within the window each further attempt must wait twice as long as the
previous one (1 s, 2 s, 4 s ... at most a minute); after `login_lock_after` the key is locked for
`login_lock_seconds`. These writes happen in a unit of work of their own: a failed sign-in answers
an error, and the request's own transaction rolls back.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from vitasync_fhir.auth.tables import login_attempts
from vitasync_fhir.config import Settings
from vitasync_fhir.db import mark_written

MAX_SLOWDOWN_SECONDS = 60


def keys_for(email: str, address: str | None) -> list[str]:
    keys = ["email:" + hashlib.sha256(email.strip().lower().encode()).hexdigest()]
    if address:
        keys.append("ip:" + address[:120])
    return keys


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def wait_seconds(
    session: AsyncSession, keys: list[str], *, now: datetime | None = None
) -> int:
    """How long the caller must wait before trying these keys again (0: go ahead)."""
    moment = now or datetime.now(UTC)
    rows = await session.execute(
        select(login_attempts.c.locked_until).where(login_attempts.c.key.in_(keys))
    )
    waits = [
        (_aware(row.locked_until) - moment).total_seconds()
        for row in rows
        if row.locked_until is not None
    ]
    longest = max(waits, default=0)
    return math.ceil(longest) if longest > 0 else 0


async def record_failure(session: AsyncSession, settings: Settings, keys: list[str]) -> None:
    moment = datetime.now(UTC)
    window = timedelta(seconds=settings.login_window_seconds)
    for key in keys:
        row = (
            await session.execute(select(login_attempts).where(login_attempts.c.key == key))
        ).first()
        if row is None:
            inserted = await _insert_new(session, settings, key, moment)
            if inserted:
                continue
            row = (
                await session.execute(select(login_attempts).where(login_attempts.c.key == key))
            ).one()
        stale = moment - _aware(row.last_failure_at) > window
        failures = 1 if stale else row.failures + 1
        await session.execute(
            update(login_attempts)
            .where(login_attempts.c.key == key)
            .values(
                failures=failures,
                first_failure_at=moment if stale else row.first_failure_at,
                last_failure_at=moment,
                locked_until=_locked_until(settings, failures, moment),
            )
        )
    mark_written(session)


async def record_success(session: AsyncSession, keys: list[str]) -> None:
    await session.execute(delete(login_attempts).where(login_attempts.c.key.in_(keys)))
    mark_written(session)


def _locked_until(settings: Settings, failures: int, moment: datetime) -> datetime | None:
    if failures >= settings.login_lock_after:
        return moment + timedelta(seconds=settings.login_lock_seconds)
    if failures >= settings.login_slow_after:
        delay = min(2 ** (failures - settings.login_slow_after), MAX_SLOWDOWN_SECONDS)
        return moment + timedelta(seconds=delay)
    return None


async def _insert_new(
    session: AsyncSession, settings: Settings, key: str, moment: datetime
) -> bool:
    dialect = session.bind.dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = (
        insert(login_attempts)
        .values(
            key=key,
            failures=1,
            first_failure_at=moment,
            last_failure_at=moment,
            locked_until=_locked_until(settings, 1, moment),
        )
        .on_conflict_do_nothing(index_elements=["key"])
        .returning(login_attempts.c.key)
    )
    result = await session.execute(statement)
    return result.first() is not None
