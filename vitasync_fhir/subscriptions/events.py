"""From a committed write to the notifications it owes (the write observer of fhir/rules.py).

Runs inside the write's transaction, after the new versions and their index rows are stored, so
matching sees exactly the version written, and the notification rows commit or roll back with the
change itself: a committed change is never left unnotified (Redis down, worker dead), a rolled-back
one is never announced. Each match is checked with the search engine under the SUBSCRIBER's access
(their role and scopes as they are now), so no one hears of what they may not read.

Each notification takes the next number of its subscription's sequence (`last_seq`, incremented
under the subscription row's lock), so the order of the sequence is the order of the commits, and
the deliverer sends them in that order. After the commit the subscription is handed to the queue.

A subscription whose owner's access is gone (account deactivated, password reset since they last
wrote it) is not matched: it is owed an OWNER_GONE mark instead, on which the deliverer sets it
to `error`, saying why. One past its `end` is not matched either; the deliverer turns it off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from vitasync_fhir.auth.access import Access
from vitasync_fhir.auth.deps import caller_for_claims
from vitasync_fhir.auth.policy import Caller
from vitasync_fhir.config import Settings
from vitasync_fhir.db import after_commit, mark_written
from vitasync_fhir.fhir.search.service import match_ids
from vitasync_fhir.fhir.store import Write
from vitasync_fhir.notify.outbox import now_utc
from vitasync_fhir.subscriptions import ownership, registration
from vitasync_fhir.subscriptions.tables import (
    ACTIVE,
    DROPPED,
    EVENT,
    HANDSHAKE,
    LIVE,
    OWNER_GONE,
    PENDING,
    REQUESTED,
    subscription_deliveries,
    subscriptions,
)

if TYPE_CHECKING:
    from vitasync_fhir.fhir.service import Resources

log = logging.getLogger(__name__)

# Written by the server only and never worth a notification (and auditing them would recurse).
UNWATCHED = frozenset({"AuditEvent"})


async def record_matches(resources: Resources, writes: Sequence[Write]) -> None:
    owed: set[str] = set()
    for write in writes:
        if write.version.resource_type == "Subscription":
            owed |= await _register(resources, write)
    owed |= await _match(resources, writes)
    if owed:
        _hand_over_after_commit(resources.session, sorted(owed))


# -- the subscriptions table, kept in step with the Subscription resources ----------------------


def owner_claims(caller: Caller | None) -> dict | None:
    """What identifies the subscriber later: the claims of a token they could be issued again."""
    if caller is None:
        return None
    return {
        "sub": caller.user_id or caller.client_id,
        "client_id": caller.client_id,
        "scope": " ".join(str(s) for s in caller.scopes),
        "patient": caller.patient_id,
        "iat_ms": int(time.time() * 1000),
    }


async def _register(resources: Resources, write: Write) -> set[str]:
    """Mirror one Subscription write; the ids now owed a delivery run (a handshake)."""
    session, sid = resources.session, write.version.id
    row = (await session.execute(select(subscriptions).where(subscriptions.c.id == sid))).first()
    resource = write.resource
    if resource is None:  # deleted: nothing more is sent; the id may be used anew
        if row is not None:
            await _drop_pending(session, sid, "the subscription was deleted")
            await session.execute(delete(subscriptions).where(subscriptions.c.id == sid))
        return set()
    channel = resource.get("channel") or {}
    resource_type, _ = registration.split_criteria(str(resource.get("criteria", "")))
    status = resource.get("status")
    values = {
        "resource_type": resource_type,
        "criteria": resource.get("criteria", ""),
        "status": status,
        "endpoint": channel.get("endpoint", ""),
        "payload": channel.get("payload"),
        "headers": [h for h in channel.get("header") or [] if isinstance(h, str)],
        "ends_at": end_of(resource),
    }
    caller = resources.access.caller
    if row is None:
        await session.execute(
            insert(subscriptions).values(
                id=sid,
                owner=owner_claims(caller),
                owner_key=ownership.key_of(caller),
                last_seq=0,
                created_at=now_utc(),
                **values,
            )
        )
    else:
        if caller is not None and ownership.key_of(caller) == row.owner_key:
            # The owner as they are now: after a password reset, their new sign-in; and a mark
            # that their access was gone, not yet acted on, is out of date.
            values["owner"] = owner_claims(caller)
            await _drop_pending(session, sid, "the owner updated the subscription", OWNER_GONE)
        await session.execute(
            update(subscriptions).where(subscriptions.c.id == sid).values(**values)
        )
        if status not in LIVE:
            # Off, or in error: what it was owed before is not sent.
            await _drop_pending(session, sid, f"the subscription became {status}")
    mark_written(session)
    if status in LIVE and ended(values["ends_at"]):
        return {sid}  # nothing is sent: the deliverer turns it off
    if status == REQUESTED and (row is None or row.status != REQUESTED):
        handshake = await _owe(session, sid, kind=HANDSHAKE)
        await _behind(session, sid, handshake)
        return {sid}
    return set()


def end_of(resource: dict) -> datetime | None:
    """Subscription.end (an instant) in UTC; None when there is none."""
    end = resource.get("end")
    if not isinstance(end, str):
        return None
    try:
        moment = datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None  # validation lets no such instant through; nothing to end then
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def ended(ends_at: datetime | None) -> bool:
    if ends_at is None:
        return False
    moment = ends_at if ends_at.tzinfo else ends_at.replace(tzinfo=UTC)
    return moment <= now_utc()


async def _behind(session: AsyncSession, sid: str, handshake: int) -> None:
    """Notifications still owed (an edit asks for a new handshake) move behind the handshake.

    Nothing may reach the endpoint before it has shaken hands, and the sequence keeps growing in
    the order things are sent, so they are renumbered after it, in their order, and start their
    attempts afresh: the subscriber has just set things right.
    """
    d = subscription_deliveries
    owed = (d.c.subscription_id == sid) & (d.c.status == PENDING) & (d.c.seq < handshake)
    first, last = (
        await session.execute(select(func.min(d.c.seq), func.max(d.c.seq)).where(owed))
    ).one()
    if first is None:
        return
    shift = handshake - first + 1  # every new number is above every number in use: no clash
    await session.execute(
        update(d).where(owed).values(seq=d.c.seq + shift, attempts=0, next_attempt_at=now_utc())
    )
    await session.execute(
        update(subscriptions).where(subscriptions.c.id == sid).values(last_seq=last + shift)
    )


async def _drop_pending(
    session: AsyncSession, sid: str, reason: str, kind: str | None = None
) -> None:
    d = subscription_deliveries
    owed = (d.c.subscription_id == sid) & (d.c.status == PENDING)
    if kind is not None:
        owed &= d.c.kind == kind
    await session.execute(update(d).where(owed).values(status=DROPPED, last_error=reason))


async def _owe(session: AsyncSession, sid: str, *, kind: str, write: Write | None = None) -> int:
    """A delivery row with the subscription's next sequence number (taken under its row lock)."""
    seq = (
        await session.execute(
            update(subscriptions)
            .where(subscriptions.c.id == sid)
            .values(last_seq=subscriptions.c.last_seq + 1)
            .returning(subscriptions.c.last_seq)
        )
    ).scalar_one()
    moment = now_utc()
    v = write.version if write else None
    await session.execute(
        insert(subscription_deliveries).values(
            subscription_id=sid,
            seq=seq,
            kind=kind,
            resource_type=v.resource_type if v else None,
            resource_id=v.id if v else None,
            version_id=v.version_id if v else None,
            status=PENDING,
            attempts=0,
            next_attempt_at=moment,
            created_at=moment,
        )
    )
    mark_written(session)
    return seq


# -- matching ------------------------------------------------------------------------------------


async def _match(resources: Resources, writes: Sequence[Write]) -> set[str]:
    written = [
        w for w in writes if w.resource is not None and w.version.resource_type not in UNWATCHED
    ]
    types = {w.version.resource_type for w in written}
    if not types:
        return set()
    session = resources.session
    rows = (
        await session.execute(
            select(subscriptions)
            .where(subscriptions.c.resource_type.in_(types), subscriptions.c.status == ACTIVE)
            .order_by(subscriptions.c.id)
        )
    ).all()
    owed: set[str] = set()
    for row in rows:
        if ended(row.ends_at):
            owed.add(row.id)  # the deliverer turns it off
            continue
        access = await _subscriber(session, row.owner)
        if access is None:
            if not await _marked_gone(session, row.id):
                await _owe(session, row.id, kind=OWNER_GONE)
            owed.add(row.id)
            continue
        _, query = registration.split_criteria(row.criteria)
        for write in written:
            if write.version.resource_type != row.resource_type:
                continue
            if await _matches(session, access, row.resource_type, query, write.version.id):
                await _owe(session, row.id, kind=EVENT, write=write)
                owed.add(row.id)
    return owed


async def _marked_gone(session: AsyncSession, sid: str) -> bool:
    d = subscription_deliveries
    found = await session.execute(
        select(d.c.id)
        .where(d.c.subscription_id == sid, d.c.status == PENDING, d.c.kind == OWNER_GONE)
        .limit(1)
    )
    return found.first() is not None


async def _subscriber(session: AsyncSession, owner: dict | None) -> Access | None:
    """The subscriber's access as their account or client is now; None when it is gone."""
    if owner is None:
        return Access.system()
    claims = {**owner, "jti": "subscription", "exp": 0}
    caller = await caller_for_claims(session, claims)  # type: ignore[arg-type]
    return Access(caller) if caller is not None else None


async def _matches(
    session: AsyncSession, access: Access, resource_type: str, query: str, resource_id: str
) -> bool:
    from vitasync_fhir.auth import policy

    if access.caller is not None and not policy.allowed(access.caller, resource_type, "read"):
        return False
    ids = await match_ids(
        session,
        resource_type,
        registration.with_id(query, resource_id),
        limit=1,
        restrict=access.restriction(),
    )
    return bool(ids)


# -- hand-over -----------------------------------------------------------------------------------


def _hand_over_after_commit(session: AsyncSession, subscription_ids: list[str]) -> None:
    settings = session.info.get("settings")
    if not isinstance(settings, Settings):
        return  # the relay will find the rows

    def now() -> None:
        from vitasync_fhir.subscriptions.tasks import hand_over

        hand_over(settings, subscription_ids)

    async def later() -> None:
        try:
            await asyncio.to_thread(now)
        except Exception as error:  # committed already: the relay will deliver
            log.warning("subscriptions %s not queued now (%s)", subscription_ids, error)

    after_commit(session, later)
