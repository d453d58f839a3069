"""Delivering notifications: one subscription at a time, in sequence order, with retries.

`deliver` (a Huey task taking a subscription id) claims the subscription for a lease (one deliverer
per subscription, whatever the number of workers), then POSTs its pending notifications in `seq`
order (sending.py). Before each POST it renews its lease, and stops if another deliverer has
claimed the subscription meanwhile; each POST is over within `subscription_timeout_seconds`, and
the lease outlasts that by `subscription_lease_seconds`, so two deliverers never send at once. A
later notification is never sent before an earlier one succeeded or was given up: a failure
schedules a retry of the same notification (backoff doubling from `subscription_backoff_seconds`)
and stops; after `subscription_max_attempts` failures the notification is dead and the
Subscription becomes `error` (its `error` element says why), which drops whatever it was still
owed. A 2xx answer is success; anything else, or no answer within the deadline, a failure.

A subscription past its `end` is turned `off` and sends nothing more; one whose owner's access is
gone (events.py marks it) becomes `error`, and its owner resumes it by updating it.

The request path only hands subscription ids to the queue; the rows are the record. The relay (a
periodic task every minute) hands over subscriptions whose notifications are overdue (queued while
Redis was down, or left behind by a worker that died: its claim's lease runs out) and live ones
whose `end` has come.
"""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import timedelta
from uuid import uuid4

import orjson
from huey import crontab
from huey.api import TaskWrapper
from sqlalchemy import func, or_, select, union, update

from vitasync_fhir.config import Settings
from vitasync_fhir.notify.outbox import now_utc
from vitasync_fhir.notify.queue import Queue, queue_for
from vitasync_fhir.subscriptions import disclosure, sending
from vitasync_fhir.subscriptions.events import ended
from vitasync_fhir.subscriptions.tables import (
    ACTIVE,
    DEAD,
    ERROR,
    EVENT,
    HANDSHAKE,
    LIVE,
    OFF,
    OWNER_GONE,
    PENDING,
    REQUESTED,
    SENT,
    subscription_deliveries,
    subscriptions,
)

log = logging.getLogger(__name__)

_tasks: dict[Queue, TaskWrapper] = {}
d = subscription_deliveries
s = subscriptions

OWNER_GONE_ERROR = (
    "the subscriber's access is gone (their account was deactivated, or their password reset"
    " since they last wrote this subscription): its owner may update it to resume"
)


def install(queue: Queue) -> None:
    """Register the subscription tasks on this configuration's Huey instance."""
    huey = queue.huey

    @huey.task(name="subscriptions.deliver")
    def deliver(subscription_id: str) -> None:
        deliver_all(queue, subscription_id)

    @huey.periodic_task(crontab(minute="*"), name="subscriptions.relay")
    def relay() -> None:
        relay_due(queue)

    _tasks[queue] = deliver


def hand_over(settings: Settings, subscription_ids: list[str]) -> None:
    """Queue a delivery run per subscription; raises if the queue is unreachable."""
    queue = queue_for(settings)
    for subscription_id in subscription_ids:
        _tasks[queue](subscription_id)


def relay_due(queue: Queue) -> int:
    """Hand over the subscriptions with notifications overdue, or past their end; how many."""
    moment = now_utc()
    cutoff = moment - timedelta(seconds=queue.settings.notify_relay_grace_seconds)
    overdue = (
        select(d.c.subscription_id)
        .join(s, s.c.id == d.c.subscription_id)
        .where(d.c.status == PENDING, d.c.next_attempt_at <= cutoff, s.c.status.in_(LIVE))
    )
    over = select(s.c.id).where(s.c.status.in_(LIVE), s.c.ends_at <= moment)
    with queue.engine.connect() as conn:
        ids = list(conn.execute(union(overdue, over)).scalars())
    for subscription_id in ids:
        _tasks[queue](subscription_id)
    return len(ids)


def deliver_all(queue: Queue, subscription_id: str) -> str:
    """Deliver what the subscription is owed, in order, until done or a failure waits."""
    while True:
        token = uuid4().hex
        if not _claim(queue, subscription_id, token):
            return "busy"  # another deliverer holds it and will see what is pending
        try:
            outcome = _run(queue, subscription_id, token)
        finally:
            _release(queue, subscription_id, token)
        if outcome == "waiting":  # only now: a retry run while we held the claim found it busy
            _schedule_retry(queue, subscription_id)
        # A notification committed while this run ended may have been handed to the queue while
        # the claim was still held: look once more after letting go.
        if outcome != "drained" or not _due(queue, subscription_id):
            return outcome


def _lease(settings: Settings) -> timedelta:
    """Long enough for one POST (the deadline) and the bookkeeping around it."""
    return timedelta(
        seconds=settings.subscription_timeout_seconds + settings.subscription_lease_seconds
    )


def _claim(queue: Queue, subscription_id: str, token: str) -> bool:
    moment = now_utc()
    with queue.engine.begin() as conn:
        return bool(
            conn.execute(
                update(s)
                .where(
                    s.c.id == subscription_id,
                    or_(s.c.claim.is_(None), s.c.claimed_until < moment),
                )
                .values(claim=token, claimed_until=moment + _lease(queue.settings))
            ).rowcount
        )


def _renew(queue: Queue, subscription_id: str, token: str) -> bool:
    """Extend the lease before a POST; False when another deliverer has claimed it meanwhile.

    A lease that ran out but was not taken is still ours: only a claim changes the token.
    """
    with queue.engine.begin() as conn:
        return bool(
            conn.execute(
                update(s)
                .where(s.c.id == subscription_id, s.c.claim == token)
                .values(claimed_until=now_utc() + _lease(queue.settings))
            ).rowcount
        )


def _release(queue: Queue, subscription_id: str, token: str) -> None:
    with queue.engine.begin() as conn:
        conn.execute(
            update(s)
            .where(s.c.id == subscription_id, s.c.claim == token)
            .values(claim=None, claimed_until=None)
        )


def _due(queue: Queue, subscription_id: str) -> bool:
    with queue.engine.connect() as conn:
        return (
            conn.execute(
                select(d.c.id)
                .where(
                    d.c.subscription_id == subscription_id,
                    d.c.status == PENDING,
                    d.c.next_attempt_at <= now_utc(),
                )
                .limit(1)
            ).first()
            is not None
        )


def _run(queue: Queue, subscription_id: str, token: str) -> str:
    settings = queue.settings
    while True:
        with queue.engine.connect() as conn:
            sub = conn.execute(select(s).where(s.c.id == subscription_id)).first()
            head = conn.execute(
                select(d)
                .where(d.c.subscription_id == subscription_id, d.c.status == PENDING)
                .order_by(d.c.seq)
                .limit(1)
            ).first()
        if sub is None or sub.status not in LIVE:
            return "stopped"
        if ended(sub.ends_at):
            _set_status(settings, subscription_id, OFF, expect=sub.status)
            return "stopped"
        if head is None:
            return "drained"
        wait = (sending.aware(head.next_attempt_at) - now_utc()).total_seconds()
        if wait > 0:
            return "waiting"
        if head.kind == OWNER_GONE:  # in its turn: what was matched before it was still theirs
            _set_status(settings, subscription_id, ERROR, expect=sub.status, error=OWNER_GONE_ERROR)
            return "stopped"
        if not _renew(queue, subscription_id, token):
            return "busy"  # our lease ran out and another deliverer took over: it sends this
        try:
            error = sending.notify(queue, sub, head)
        except Exception:  # a bug must not wedge the sequence: count it a failure
            log.exception("subscription %s: notification %s", subscription_id, head.seq)
            error = "the notification could not be sent (a server error)"
        if error is None:
            _settle(queue, head.id, status=SENT, attempts=head.attempts + 1, sent_at=now_utc())
            if head.kind == EVENT and sub.payload:  # the resource itself went out
                disclosure.record(queue, sub, head)
            if head.kind == HANDSHAKE:
                _set_status(queue.settings, subscription_id, ACTIVE, expect=REQUESTED)
            continue
        return _failed(queue, sub, head, error)


def _failed(queue: Queue, sub, head, error: str) -> str:  # type: ignore[no-untyped-def]
    settings = queue.settings
    attempts = head.attempts + 1
    if attempts >= settings.subscription_max_attempts:
        log.error("subscription %s: notification %s given up: %s", sub.id, head.seq, error)
        _settle(queue, head.id, status=DEAD, attempts=attempts, last_error=error)
        message = f"{attempts} attempts to notify {sub.endpoint} failed; the last: {error}"
        _set_status(settings, sub.id, ERROR, error=message)
        return "stopped"
    delay = min(
        settings.subscription_backoff_seconds * 2 ** (attempts - 1),
        settings.subscription_backoff_max_seconds,
    ) * random.uniform(0.9, 1.1)
    log.warning(
        "subscription %s: attempt %d failed (%s); again in %.1f s", sub.id, attempts, error, delay
    )
    _settle(
        queue,
        head.id,
        status=PENDING,
        attempts=attempts,
        last_error=error,
        next_attempt_at=now_utc() + timedelta(seconds=delay),
    )
    return "waiting"


def _schedule_retry(queue: Queue, subscription_id: str) -> None:
    """Queue the next run for when the first notification owed is due (after the claim is let
    go: scheduled before, a short backoff could run it while the claim was still held, and that
    run, finding it busy, would leave the retry to the relay a minute later)."""
    with queue.engine.connect() as conn:
        due = conn.execute(
            select(func.min(d.c.next_attempt_at)).where(
                d.c.subscription_id == subscription_id, d.c.status == PENDING
            )
        ).scalar()
    if due is None:
        return
    delay = max(0.0, (sending.aware(due) - now_utc()).total_seconds())
    try:
        _tasks[queue].schedule(args=(subscription_id,), delay=delay)
    except Exception as error:
        log.warning("subscription %s retry not queued (%s); the relay will", subscription_id, error)


def _settle(queue: Queue, delivery_id: int, **values: object) -> None:
    with queue.engine.begin() as conn:
        conn.execute(update(d).where(d.c.id == delivery_id, d.c.status == PENDING).values(**values))


# -- the Subscription resource's status ------------------------------------------------------------


def _set_status(
    settings: Settings, subscription_id: str, status: str, *, expect: str | None = None,
    error: str | None = None,
) -> None:  # fmt: skip
    try:
        asyncio.run(_write_status(settings, subscription_id, status, expect=expect, error=error))
    except Exception:
        log.exception("subscription %s: cannot record status %s", subscription_id, status)


async def _write_status(
    settings: Settings, subscription_id: str, status: str, *, expect: str | None,
    error: str | None,
) -> None:  # fmt: skip
    from vitasync_fhir.db import Database, unit_of_work
    from vitasync_fhir.fhir.service import Resources

    database = Database(settings)
    try:
        async with database.sessions() as session, unit_of_work(session):
            resources = Resources(session)  # the server itself
            current = await resources.read("Subscription", subscription_id)
            subscription = orjson.loads(current.content or "{}")
            if expect is not None and subscription.get("status") != expect:
                return  # the subscriber changed it meanwhile (switched it off): theirs wins
            subscription["status"] = status
            if error is None:
                subscription.pop("error", None)
            else:
                subscription["error"] = error[:1000]
            await resources.update(
                "Subscription", subscription_id, subscription, if_match=current.etag
            )
    finally:
        await database.dispose()
