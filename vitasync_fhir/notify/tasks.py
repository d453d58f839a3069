"""The background tasks: send one outbox row, relay the outbox, queue appointment reminders.

Tasks take an outbox id, open their own connection, and are idempotent: running `send` twice for
one row sends at most one e-mail.

How one e-mail is sent, and why it is not sent twice:

1. Claim. `UPDATE ... SET status='sending', claim=<new token>, attempts+1, next_attempt_at=now+lease
   WHERE id=:id AND status='pending'`, committed. Only one task can win this; the others return.
2. Render, connect, MAIL, RCPT, DATA and the message text, without the final ".".
3. Fence. `UPDATE ... SET final_dot_at=now WHERE id=:id AND claim=<token> AND status='sending'`,
   committed. If no row matches, the lease expired and the relay gave the row to a newer attempt:
   this one drops the connection (the server discards an unterminated DATA) and stops.
4. Send ".", read the reply. 250: `status='sent'` (by claim token). A 4xx/5xx reply: retry later
   or dead. No reply: `status='uncertain'`.

A send that dies (worker killed, machine lost) leaves the row 'sending'. When its lease expires the
relay looks at `final_dot_at`: unset means the server never saw the end of the message and cannot
deliver it, so the row goes back to pending and is sent again; set means the server may hold it, so
the row becomes 'uncertain' and is never sent again on its own: `outbox-list` shows it and
`outbox-retry --uncertain` sends it once an admin has checked.

The window that remains, honestly: between the commit of `final_dot_at` and the "." leaving the
socket (microseconds of our own code, no network wait) a crash leaves a row marked 'uncertain'
that the server never received; that e-mail is held back until an admin retries it, not lost
silently and not doubled. The reverse window, the server accepting the message while the answer is
lost (RFC 1047), ends in 'uncertain' as well, so it is never doubled by us. Only a manual
`outbox-retry --uncertain` can produce a second copy, and that copy carries the same Message-ID,
which many mail stores use to fold duplicates. In the .eml mode there is no window: a rewrite
replaces the file of the same Message-ID.

Failures before the final "." (refused connection, timeout, TLS or login failure, 4xx) are retried
with exponential backoff (`notify_backoff_seconds` doubling up to `notify_backoff_max_seconds`);
after `notify_max_attempts` the row is 'dead'. A 5xx for the recipients or the message is
permanent and makes it dead at once. The retry is scheduled on the queue and recorded in
`next_attempt_at`, so the relay performs it if the queue loses it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import timedelta
from uuid import uuid4

from huey import crontab
from sqlalchemy import select, update

from vitasync_fhir.notify import mailer, messages
from vitasync_fhir.notify.outbox import now_utc, relay_pending
from vitasync_fhir.notify.queue import Queue
from vitasync_fhir.notify.tables import DEAD, PENDING, SENDING, SENT, UNCERTAIN, outbox

log = logging.getLogger(__name__)


def install(queue: Queue) -> None:
    """Register this configuration's tasks on its Huey instance."""
    huey = queue.huey
    minutes = queue.settings.reminder_interval_minutes

    @huey.task(name="notify.send")
    def send(outbox_id: int) -> None:
        send_one(queue, outbox_id)

    @huey.periodic_task(crontab(minute="*"), name="notify.relay")
    def relay() -> None:
        relay_pending(queue)

    @huey.periodic_task(crontab(minute=f"*/{minutes}"), name="notify.reminders")
    def reminders() -> None:
        from vitasync_fhir.notify.reminders import queue_reminders

        asyncio.run(queue_reminders(queue.settings))

    queue.send, queue.relay, queue.reminders = send, relay, reminders


def backoff(queue: Queue, attempts: int) -> float:
    settings = queue.settings
    delay = settings.notify_backoff_seconds * 2 ** max(attempts - 1, 0)
    delay = min(delay, settings.notify_backoff_max_seconds)
    return delay * random.uniform(0.9, 1.1)


def send_one(queue: Queue, outbox_id: int) -> str:
    """Send the e-mail of one outbox row if it is pending; returns what became of it."""
    token = uuid4().hex
    row = _claim(queue, outbox_id, token)
    if row is None:
        return "skipped"
    settings = queue.settings
    try:
        message = messages.build(
            settings,
            kind=row.kind,
            recipient=row.recipient,
            message_id=row.message_id,
            context=row.payload,
        )
    except Exception as error:
        log.exception("outbox %s cannot be rendered", outbox_id)
        _settle(queue, outbox_id, token, status=DEAD, error=f"render: {error!r}")
        return DEAD
    subject = str(message["Subject"])[:300]
    try:
        mailer.deliver(settings, message, before_final_dot=lambda: _fence(queue, outbox_id, token))
    except mailer.Fenced:
        log.warning(
            "outbox %s: a newer attempt owns it; this one stopped before the end", outbox_id
        )
        return "fenced"
    except mailer.Uncertain as error:
        log.error("outbox %s may or may not have been delivered: %s", outbox_id, error)
        _settle(queue, outbox_id, token, status=UNCERTAIN, error=str(error), subject=subject)
        return UNCERTAIN
    except mailer.PermanentFailure as error:
        log.error("outbox %s refused for good: %s", outbox_id, error)
        _settle(queue, outbox_id, token, status=DEAD, error=str(error), subject=subject)
        return DEAD
    except Exception as error:
        return _retry_later(queue, row, token, error, subject)
    _settle(queue, outbox_id, token, status=SENT, subject=subject, payload=_redacted(row.payload))
    return SENT


def _claim(queue: Queue, outbox_id: int, token: str):  # type: ignore[no-untyped-def]
    moment = now_utc()
    lease = timedelta(seconds=queue.settings.notify_lease_seconds)
    with queue.engine.begin() as conn:
        claimed = conn.execute(
            update(outbox)
            .where(outbox.c.id == outbox_id, outbox.c.status == PENDING)
            .values(
                status=SENDING,
                claim=token,
                attempts=outbox.c.attempts + 1,
                next_attempt_at=moment + lease,
                final_dot_at=None,
            )
        ).rowcount
        if not claimed:
            return None
        return conn.execute(select(outbox).where(outbox.c.id == outbox_id)).one()


def _fence(queue: Queue, outbox_id: int, token: str) -> bool:
    with queue.engine.begin() as conn:
        return bool(
            conn.execute(
                update(outbox)
                .where(
                    outbox.c.id == outbox_id,
                    outbox.c.claim == token,
                    outbox.c.status == SENDING,
                )
                .values(final_dot_at=now_utc())
            ).rowcount
        )


def _settle(queue: Queue, outbox_id: int, token: str, *, status: str, **values: object) -> bool:
    """Record the outcome of this attempt, if it still owns the row; retried briefly on errors."""
    changes: dict[str, object] = {"status": status, "claim": None}
    if "error" in values:
        changes["last_error"] = values.pop("error")
    if status == SENT:
        changes["sent_at"] = now_utc()
        changes["last_error"] = None
    changes.update(values)
    statement = (
        update(outbox).where(outbox.c.id == outbox_id, outbox.c.claim == token).values(changes)
    )
    for attempt in range(3):
        try:
            with queue.engine.begin() as conn:
                return bool(conn.execute(statement).rowcount)
        except Exception:
            if attempt == 2:
                # The lease will expire and the relay will decide from final_dot_at.
                log.exception("outbox %s: cannot record %s", outbox_id, status)
                return False
            time.sleep(0.5 * (attempt + 1))
    return False


def _retry_later(queue, row, token: str, error: BaseException, subject: str) -> str:  # type: ignore[no-untyped-def]
    text = (
        f"{error.__class__.__name__}: {error}"
        if not isinstance(error, mailer.DeliveryError)
        else str(error)
    )
    if row.attempts >= queue.settings.notify_max_attempts:
        log.error("outbox %s dead after %d attempts: %s", row.id, row.attempts, text)
        _settle(queue, row.id, token, status=DEAD, error=text, subject=subject)
        return DEAD
    delay = backoff(queue, row.attempts)
    log.warning(
        "outbox %s attempt %d failed (%s); next in %.0f s", row.id, row.attempts, text, delay
    )
    owned = _settle(
        queue,
        row.id,
        token,
        status=PENDING,
        error=text,
        subject=subject,
        final_dot_at=None,
        next_attempt_at=now_utc() + timedelta(seconds=delay),
    )
    if owned:
        try:
            queue.send.schedule(args=(row.id,), delay=delay)
        except Exception as schedule_error:
            log.warning("outbox %s retry not queued (%s); the relay will", row.id, schedule_error)
    return PENDING


def _redacted(payload: dict) -> dict:
    return {k: ("[sent]" if k in messages.SECRET_KEYS else v) for k, v in payload.items()}
