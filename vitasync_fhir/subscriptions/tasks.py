"""Delivering notifications: one subscription at a time, in sequence order, with retries.

`deliver` (a Huey task taking a subscription id) claims the subscription for a lease (one deliverer
per subscription, whatever the number of workers), then POSTs its pending notifications in `seq`
order. A later notification is never sent before an earlier one succeeded or was given up:
a failure schedules a retry of the same notification (backoff doubling from
`subscription_backoff_seconds`) and stops; after `subscription_max_attempts` failures the
notification is dead and the Subscription becomes `error` (its `error` element says why), which
drops whatever it was still owed. A 2xx answer is success; anything else, or no answer within
`subscription_timeout_seconds`, a failure.

The request path only hands subscription ids to the queue; the rows are the record. The relay (a
periodic task every minute) hands over subscriptions whose notifications are overdue: queued while
Redis was down, or left behind by a worker that died (its claim's lease runs out).

The notifications (R4 rest-hook):
- handshake: an empty POST when the subscription is requested; a 2xx makes it `active`.
- payload absent: an empty POST (the subscriber then reads what changed).
- payload `application/fhir+json`: a Bundle of type `history` with one entry, the version that
  matched (fullUrl, resource, request, response with its ETag), as `application/fhir+json`.
Each carries the subscription's `channel.header` lines and `X-Subscription-Sequence`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import httpx
import orjson
from huey import crontab
from huey.api import TaskWrapper
from sqlalchemy import and_, or_, select, update

from vitasync_fhir.config import Settings
from vitasync_fhir.fhir.service import instant
from vitasync_fhir.fhir.tables import resource_history
from vitasync_fhir.notify.outbox import now_utc
from vitasync_fhir.notify.queue import Queue, queue_for
from vitasync_fhir.subscriptions.tables import (
    ACTIVE,
    DEAD,
    ERROR,
    HANDSHAKE,
    PENDING,
    REQUESTED,
    SENT,
    subscription_deliveries,
    subscriptions,
)

log = logging.getLogger(__name__)

_tasks: dict[Queue, TaskWrapper] = {}
LIVE = (REQUESTED, ACTIVE)
d = subscription_deliveries
s = subscriptions


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
    """Hand over the subscriptions with notifications overdue; how many."""
    cutoff = now_utc() - timedelta(seconds=queue.settings.notify_relay_grace_seconds)
    with queue.engine.connect() as conn:
        ids = list(
            conn.execute(
                select(d.c.subscription_id)
                .join(s, s.c.id == d.c.subscription_id)
                .where(d.c.status == PENDING, d.c.next_attempt_at <= cutoff, s.c.status.in_(LIVE))
                .distinct()
            ).scalars()
        )
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
            outcome = _run(queue, subscription_id)
        finally:
            _release(queue, subscription_id, token)
        # A notification committed while this run ended may have been handed to the queue while
        # the claim was still held: look once more after letting go.
        if outcome != "drained" or not _due(queue, subscription_id):
            return outcome


def _claim(queue: Queue, subscription_id: str, token: str) -> bool:
    moment = now_utc()
    lease = timedelta(seconds=queue.settings.subscription_timeout_seconds * 3 + 60)
    with queue.engine.begin() as conn:
        return bool(
            conn.execute(
                update(s)
                .where(
                    s.c.id == subscription_id,
                    or_(s.c.claim.is_(None), s.c.claimed_until < moment),
                )
                .values(claim=token, claimed_until=moment + lease)
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


def _run(queue: Queue, subscription_id: str) -> str:
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
        if head is None:
            return "drained"
        wait = (_aware(head.next_attempt_at) - now_utc()).total_seconds()
        if wait > 0:
            _tasks[queue].schedule(args=(subscription_id,), delay=wait)
            return "waiting"
        try:
            error = _post(queue, sub, head)
        except Exception as unexpected:  # a bug must not wedge the sequence: count it a failure
            log.exception("subscription %s: notification %s", subscription_id, head.seq)
            error = f"{unexpected.__class__.__name__}: {unexpected}"
        if error is None:
            _settle(queue, head.id, status=SENT, attempts=head.attempts + 1, sent_at=now_utc())
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
    try:
        _tasks[queue].schedule(args=(sub.id,), delay=delay)
    except Exception as schedule_error:
        log.warning("subscription %s retry not queued (%s); the relay will", sub.id, schedule_error)
    return "waiting"


def _settle(queue: Queue, delivery_id: int, **values: object) -> None:
    with queue.engine.begin() as conn:
        conn.execute(update(d).where(d.c.id == delivery_id, d.c.status == PENDING).values(**values))


# -- the HTTP side -------------------------------------------------------------------------------


def _post(queue: Queue, sub, head) -> str | None:  # type: ignore[no-untyped-def]
    """POST one notification; None on a 2xx, else what went wrong."""
    headers = _headers(sub.headers)
    headers["X-Subscription-Sequence"] = str(head.seq)
    body = None
    if head.kind != HANDSHAKE and sub.payload:
        body = _bundle(queue, head)
        if body is None:
            return None  # the version is gone (history is immutable, so: never); nothing to say
        headers["Content-Type"] = "application/fhir+json"
    try:
        with httpx.Client(
            timeout=queue.settings.subscription_timeout_seconds, follow_redirects=False
        ) as http:
            answer = http.post(sub.endpoint, content=body or b"", headers=headers)
    except httpx.HTTPError as error:
        return f"{error.__class__.__name__}: {error}"
    if 200 <= answer.status_code < 300:
        return None
    return f"HTTP {answer.status_code}"


def _headers(lines: list[str]) -> dict[str, str]:
    headers = {}
    for line in lines or []:
        name, _, value = line.partition(":")
        if name.strip() and "\n" not in line and "\r" not in line:
            headers[name.strip()] = value.strip()
    return headers


def _bundle(queue: Queue, head) -> bytes | None:  # type: ignore[no-untyped-def]
    h = resource_history
    with queue.engine.connect() as conn:
        version = conn.execute(
            select(h).where(
                and_(
                    h.c.resource_type == head.resource_type,
                    h.c.id == head.resource_id,
                    h.c.version_id == head.version_id,
                )
            )
        ).first()
    if version is None or version.content is None:
        return None
    base = queue.settings.fhir_base
    created = head.version_id == 1
    entry = {
        "fullUrl": f"{base}/{head.resource_type}/{head.resource_id}",
        "resource": orjson.Fragment(version.content),
        "request": {
            "method": "POST" if created else "PUT",
            "url": head.resource_type if created else f"{head.resource_type}/{head.resource_id}",
        },
        "response": {
            "status": "201" if created else "200",
            "etag": f'W/"{head.version_id}"',
            "lastModified": instant(_aware(version.last_updated)),
        },
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "history",
        "timestamp": instant(now_utc()),
        "entry": [entry],
    }
    return orjson.dumps(bundle)


def _aware(moment: datetime) -> datetime:
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


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
