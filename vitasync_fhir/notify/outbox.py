"""The outbox: the intent to send an e-mail, written in the transaction of the change causing it.

`enqueue` adds a row in the caller's transaction and asks the unit of work to hand it to the queue
after the commit; a rolled-back change leaves no row and sends nothing. The hand-over is only the
fast path: if it fails (Redis down, the process dies right after the commit), the row stays pending
and `relay_pending` hands it over later. The relay runs as a periodic task every minute and when
`serve` and `worker` start; it hands over only rows overdue by `notify_relay_grace_seconds`, so it
does not race the fast path. It also ends expired leases of interrupted sends (see tasks.py).

Several relays may run at once (one per worker process): on PostgreSQL each claims its rows with
`SELECT ... FOR UPDATE SKIP LOCKED`, on SQLite the single writer serializes them. Handing a row over
twice is harmless anyway: the send task claims the row before it sends, and the second task finds
it no longer pending.

Public API (other packages call these):

    await enqueue(session, kind="appointment-created", to="jane@example.org",
                  context={...ids and display values...}, dedup_key="appointment-created:123")
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from email.headerregistry import Address

from sqlalchemy import and_, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from vitasync_fhir import config
from vitasync_fhir.config import Settings
from vitasync_fhir.db import after_commit, mark_written
from vitasync_fhir.notify import messages
from vitasync_fhir.notify.queue import Queue, queue_for
from vitasync_fhir.notify.tables import DEAD, PENDING, SENDING, UNCERTAIN, outbox

log = logging.getLogger(__name__)

RELAY_BATCH = 500


def now_utc() -> datetime:
    return datetime.now(UTC)


def _settings_of(session: AsyncSession, settings: Settings | None) -> Settings | None:
    if settings is not None:
        return settings
    found = session.info.get("settings")
    return found if isinstance(found, Settings) else None


def address_of(text: str) -> str | None:
    """`text` as one plain e-mail address an SMTP server takes, or None when it is not one."""
    try:
        address = Address(addr_spec=text.strip())  # raises on anything but one plain address
    except Exception:  # noqa: BLE001 - the stdlib parser raises defects, ValueError, IndexError
        return None
    spec = address.addr_spec
    if not spec.isascii() or "@" not in spec or not address.domain:
        return None
    return spec


def _check_recipient(to: str) -> str:
    address = address_of(to)
    if address is None:
        raise ValueError(f"{to!r} is not an e-mail address")
    return address


async def enqueue(
    session: AsyncSession,
    *,
    kind: str,
    to: str,
    context: dict,
    dedup_key: str,
    settings: Settings | None = None,
) -> None:
    """Record an e-mail to send once the caller's transaction commits; once per `dedup_key`.

    `context` holds ids and display values (names, ISO times, links), never clinical details.
    A second enqueue with the same `dedup_key` (in this or any later transaction) does nothing.
    The queue is found from `settings`, else from `session.info["settings"]`; without either the
    row waits for the relay.
    """
    messages.check_context(kind, context)
    recipient = _check_recipient(to)
    if not dedup_key or len(dedup_key) > 255:
        raise ValueError("dedup_key must be 1 to 255 characters")
    settings = _settings_of(session, settings)
    moment = now_utc()
    row = {
        "kind": kind,
        "recipient": recipient,
        "payload": messages.jsonable(context),
        "dedup_key": dedup_key,
        "message_id": messages.new_message_id(settings or config.settings),
        "status": PENDING,
        "attempts": 0,
        "next_attempt_at": moment,
        "created_at": moment,
    }
    dialect = session.bind.dialect.name if session.bind else "sqlite"
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = (
        insert(outbox)
        .values(row)
        .on_conflict_do_nothing(index_elements=["dedup_key"])
        .returning(outbox.c.id)
    )
    outbox_id = (await session.execute(statement)).scalar()
    mark_written(session)
    if outbox_id is None or settings is None:
        return

    def hand_over_now() -> None:
        queue_for(settings).hand_over([outbox_id])

    async def hand_over() -> None:
        try:
            await asyncio.to_thread(hand_over_now)
        except Exception as error:  # the relay will find the row; the commit already happened
            log.warning("outbox %s not queued now (%s); the relay will send it", outbox_id, error)

    after_commit(session, hand_over)


def relay_pending(queue: Queue, *, now: datetime | None = None) -> int:
    """Hand over every row the queue lost or an interrupted send left behind; returns how many."""
    moment = now or now_utc()
    engine = queue.engine
    with engine.begin() as conn:
        ids = _end_expired_leases(conn, queue.settings, moment)
    with engine.begin() as conn:
        ids += _claim_overdue(conn, queue.settings, moment)
    if ids:
        queue.hand_over(ids)
        log.info("relayed %d e-mails to the queue", len(ids))
    return len(ids)


def _end_expired_leases(conn: Connection, settings: Settings, moment: datetime) -> list[int]:
    expired = and_(outbox.c.status == SENDING, outbox.c.next_attempt_at <= moment)
    # The final "." may have reached the server: never send again on our own. The claim stays,
    # so an attempt that is slow rather than dead can still record the answer it gets.
    conn.execute(
        update(outbox)
        .where(expired, outbox.c.final_dot_at.is_not(None))
        .values(
            status=UNCERTAIN,
            last_error="interrupted after the end of DATA: the server may hold it; "
            "check the inbox before `outbox-retry --uncertain`",
        )
    )
    # Interrupted before the final ".": the server discarded it; try again (or give up).
    conn.execute(
        update(outbox)
        .where(
            expired,
            outbox.c.final_dot_at.is_(None),
            outbox.c.attempts >= settings.notify_max_attempts,
        )
        .values(status=DEAD, claim=None, last_error="interrupted on its last attempt")
    )
    restarted = conn.execute(
        update(outbox)
        .where(expired, outbox.c.final_dot_at.is_(None))
        .values(
            status=PENDING,
            claim=None,
            next_attempt_at=moment,
            last_error=func.coalesce(outbox.c.last_error, "interrupted before the end of DATA"),
        )
        .returning(outbox.c.id)
    )
    return [row.id for row in restarted]


def _claim_overdue(conn: Connection, settings: Settings, moment: datetime) -> list[int]:
    cutoff = moment - timedelta(seconds=settings.notify_relay_grace_seconds)
    query = (
        select(outbox.c.id)
        .where(outbox.c.status == PENDING, outbox.c.next_attempt_at <= cutoff)
        .order_by(outbox.c.next_attempt_at)
        .limit(RELAY_BATCH)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    ids = list(conn.execute(query).scalars())
    if ids:
        # Due again only after another grace period, unless a worker sends it first.
        conn.execute(update(outbox).where(outbox.c.id.in_(ids)).values(next_attempt_at=moment))
    return ids


def requeue(queue: Queue, *, outbox_id: int | None = None, uncertain: bool = False) -> list[int]:
    """Make dead (and if asked uncertain) e-mails pending again with fresh attempts; queue them."""
    statuses = [DEAD, UNCERTAIN] if uncertain else [DEAD]
    condition = outbox.c.status.in_(statuses)
    if outbox_id is not None:
        condition = and_(condition, outbox.c.id == outbox_id)
    with queue.engine.begin() as conn:
        ids = [
            row.id
            for row in conn.execute(
                update(outbox)
                .where(condition)
                .values(
                    status=PENDING,
                    attempts=0,
                    claim=None,
                    final_dot_at=None,
                    next_attempt_at=now_utc(),
                )
                .returning(outbox.c.id)
            )
        ]
    try:
        queue.hand_over(ids)
    except Exception as error:
        log.warning("requeued e-mails not queued now (%s); the relay will send them", error)
    return ids
