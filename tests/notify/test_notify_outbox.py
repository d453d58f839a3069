"""The outbox and the send task on both databases, step by step (no consumer running): rows are
written with the caller's transaction, sent once, retried, fenced, and relayed."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from notify_helpers import SmtpServer, aware, commit_emails, email, notify_settings, rows
from sqlalchemy import update

from vitasync_fhir.config import Settings
from vitasync_fhir.notify import outbox as outbox_module
from vitasync_fhir.notify import tasks
from vitasync_fhir.notify.outbox import now_utc, relay_pending, requeue
from vitasync_fhir.notify.queue import queue_for
from vitasync_fhir.notify.tables import outbox


def test_enqueue_writes_a_pending_row_and_queues_it_after_commit(settings: Settings) -> None:
    config = notify_settings(settings)
    commit_emails(config, [email("registration", to="Jane@Example.org", name="Jane")])
    [row] = rows(config)
    assert (row.kind, row.recipient, row.status, row.attempts) == (
        "registration",
        "Jane@Example.org",
        "pending",
        0,
    )
    assert row.payload["name"] == "Jane" and row.payload["verify_url"].startswith("https://")
    assert re.fullmatch(r"<[0-9a-f]{32}@clinic\.test>", row.message_id)
    assert queue_for(config).huey.pending_count() == 1


def test_a_rolled_back_change_leaves_no_row_and_queues_nothing(settings: Settings) -> None:
    config = notify_settings(settings)
    commit_emails(config, [email(), email("appointment-cancelled")], roll_back=True)
    assert rows(config) == []
    assert queue_for(config).huey.pending_count() == 0


def test_the_dedup_key_makes_a_second_enqueue_do_nothing(settings: Settings) -> None:
    config = notify_settings(settings)
    first = email(dedup_key="appointment-created:42")
    commit_emails(config, [first, email(dedup_key="appointment-created:42")])
    commit_emails(config, [email(dedup_key="appointment-created:42")])
    assert [r.dedup_key for r in rows(config)] == ["appointment-created:42"]
    assert queue_for(config).huey.pending_count() == 1


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"kind": "newsletter"}, "unknown e-mail kind"),
        ({"to": "not an address"}, None),
        ({"to": "a@example.org, b@example.org"}, None),
        ({"context": {"start": "2030-01-01T10:00:00Z"}}, "needs appointment_id"),
        ({"dedup_key": ""}, "dedup_key"),
    ],
)
def test_enqueue_refuses_bad_calls(settings: Settings, change: dict, problem: str | None) -> None:
    config = notify_settings(settings)
    with pytest.raises(ValueError, match=problem):
        commit_emails(config, [{**email(), **change}])
    assert rows(config) == []


def test_send_once_then_skip(settings: Settings, smtp: SmtpServer) -> None:
    config = smtp.settings(settings)
    commit_emails(config, [email("registration", name="Jane")])
    [row] = rows(config)
    queue = queue_for(config)
    assert tasks.send_one(queue, row.id) == "sent"
    assert tasks.send_one(queue, row.id) == "skipped"
    [arrival] = smtp.inbox.received
    assert arrival.message_id == row.message_id
    [row] = rows(config)
    assert row.status == "sent" and row.attempts == 1 and row.sent_at is not None
    assert row.subject == "Welcome to Riverside Clinic: please confirm your e-mail address"
    assert row.payload["verify_url"] == "[sent]"  # the live link does not stay in the table
    assert row.claim is None and row.final_dot_at is not None


def test_transient_failures_back_off_then_go_dead(settings: Settings, smtp: SmtpServer) -> None:
    config = smtp.settings(settings, notify_max_attempts=3)
    commit_emails(config, [email()])
    [row] = rows(config)
    queue = queue_for(config)
    smtp.inbox.rcpt_reply = "451 4.3.0 Try again later"
    before = now_utc()
    assert tasks.send_one(queue, row.id) == "pending"
    [row] = rows(config)
    assert row.attempts == 1 and "451" in row.last_error
    assert aware(row.next_attempt_at) > before + timedelta(seconds=0.25)
    assert tasks.send_one(queue, row.id) == "pending"
    assert tasks.send_one(queue, row.id) == "dead"
    [row] = rows(config)
    assert (row.status, row.attempts) == ("dead", 3)
    smtp.inbox.rcpt_reply = None
    assert requeue(queue) == [row.id]
    [row] = rows(config)
    assert (row.status, row.attempts) == ("pending", 0)
    assert tasks.send_one(queue, row.id) == "sent"
    assert len(smtp.inbox.received) == 1


def test_a_permanent_refusal_is_dead_at_once(settings: Settings, smtp: SmtpServer) -> None:
    config = smtp.settings(settings)
    commit_emails(config, [email(to="nobody@example.org")])
    [row] = rows(config)
    smtp.inbox.rcpt_reply = "550 5.1.1 No such user"
    assert tasks.send_one(queue_for(config), row.id) == "dead"
    [row] = rows(config)
    assert row.attempts == 1 and "550" in row.last_error


def test_a_render_error_is_dead_at_once(settings: Settings, smtp: SmtpServer, tmp_path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "appointment-created.txt").write_text("{{ no_such_value }}")
    config = smtp.settings(settings, email_templates_dir=templates)
    commit_emails(config, [email()])
    [row] = rows(config)
    assert tasks.send_one(queue_for(config), row.id) == "dead"
    assert "no_such_value" in rows(config)[0].last_error
    assert smtp.inbox.received == []


def _expire_lease(config: Settings, outbox_id: int) -> None:
    with queue_for(config).engine.begin() as conn:
        conn.execute(
            update(outbox)
            .where(outbox.c.id == outbox_id)
            .values(next_attempt_at=now_utc() - timedelta(seconds=1))
        )


def test_an_interrupted_send_before_the_final_dot_is_sent_again(
    settings: Settings, smtp: SmtpServer
) -> None:
    config = smtp.settings(settings)
    commit_emails(config, [email()])
    [row] = rows(config)
    queue = queue_for(config)
    assert tasks._claim(queue, row.id, "dead-worker") is not None  # then the worker "died"
    assert tasks.send_one(queue, row.id) == "skipped"  # leased: nobody else sends it
    assert relay_pending(queue) == 0  # the lease has not run out
    _expire_lease(config, row.id)
    assert relay_pending(queue) == 1
    [row] = rows(config)
    assert row.status == "pending" and row.claim is None
    assert tasks._fence(queue, row.id, "dead-worker") is False  # a zombie could not finish
    assert tasks.send_one(queue, row.id) == "sent"
    assert len(smtp.inbox.received) == 1
    assert rows(config)[0].attempts == 2


def test_an_interrupted_send_after_the_final_dot_becomes_uncertain(
    settings: Settings, smtp: SmtpServer
) -> None:
    config = smtp.settings(settings)
    commit_emails(config, [email()])
    [row] = rows(config)
    queue = queue_for(config)
    tasks._claim(queue, row.id, "dead-worker")
    assert tasks._fence(queue, row.id, "dead-worker") is True  # then the worker "died"
    _expire_lease(config, row.id)
    assert relay_pending(queue) == 0
    [row] = rows(config)
    assert row.status == "uncertain" and "may hold it" in row.last_error
    assert tasks.send_one(queue, row.id) == "skipped"
    assert requeue(queue) == []  # dead ones only, unless asked
    assert requeue(queue, outbox_id=row.id, uncertain=True) == [row.id]
    assert tasks.send_one(queue, row.id) == "sent"
    assert len(smtp.inbox.received) == 1


def test_a_zombie_that_gets_its_answer_still_records_sent(
    settings: Settings, smtp: SmtpServer
) -> None:
    config = smtp.settings(settings)
    commit_emails(config, [email()])
    [row] = rows(config)
    queue = queue_for(config)
    tasks._claim(queue, row.id, "slow-worker")
    tasks._fence(queue, row.id, "slow-worker")
    _expire_lease(config, row.id)
    relay_pending(queue)  # uncertain now...
    assert tasks._settle(queue, row.id, "slow-worker", status="sent") is True  # ...but it knows
    assert rows(config)[0].status == "sent"


def test_the_relay_hands_over_only_overdue_rows(settings: Settings) -> None:
    config = notify_settings(settings, notify_relay_grace_seconds=60)
    commit_emails(notify_settings(settings), [email()])  # another queue: this one never got it
    queue = queue_for(config)
    assert relay_pending(queue) == 0  # not overdue yet: the fast path may still be on it
    assert relay_pending(queue, now=now_utc() + timedelta(seconds=61)) == 1
    assert queue.huey.pending_count() == 1
    assert relay_pending(queue, now=now_utc() + timedelta(seconds=62)) == 0  # due again later


def test_a_missed_retry_is_relayed(settings: Settings, smtp: SmtpServer) -> None:
    config = smtp.settings(settings)
    commit_emails(config, [email()])
    [row] = rows(config)
    queue = queue_for(config)
    queue.huey.flush()
    smtp.inbox.rcpt_reply = "451 4.3.0 Try again later"
    tasks.send_one(queue, row.id)
    queue.huey.flush()  # the queue loses the scheduled retry
    smtp.inbox.rcpt_reply = None
    later = now_utc() + timedelta(seconds=config.notify_backoff_max_seconds + 5)
    assert relay_pending(queue, now=later) == 1
    assert tasks.send_one(queue, row.id) == "sent"


def test_concurrent_relays_claim_disjoint_rows_on_postgresql(
    settings: Settings, database_url: str
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("SKIP LOCKED is PostgreSQL's; SQLite has one writer")
    config = notify_settings(settings)
    commit_emails(notify_settings(settings), [email() for _ in range(6)])
    engine = queue_for(config).engine
    later = now_utc() + timedelta(seconds=config.notify_relay_grace_seconds + 1)
    with engine.begin() as first:
        mine = outbox_module._claim_overdue(first, config, later)
        with engine.begin() as second:  # runs while the first still holds its row locks
            theirs = outbox_module._claim_overdue(second, config, later)
    assert len(mine) == 6 and theirs == []
    with engine.begin() as conn:
        conn.execute(update(outbox).values(next_attempt_at=now_utc() - timedelta(hours=1)))
    with engine.begin() as first:
        first.execute(outbox.select().where(outbox.c.id.in_(mine[:2])).with_for_update()).all()
        with engine.begin() as second:
            theirs = outbox_module._claim_overdue(second, config, later)
    assert sorted(theirs) == sorted(mine[2:])
