"""Faults: Redis stopped while appointments are booked, the SMTP server down then up, the worker
killed in the middle of a send, and e-mails that fail until they are dead. Every e-mail that should
arrive arrives exactly once."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from datetime import datetime

from notify_helpers import (
    ROOT,
    Gate,
    RedisServer,
    SmtpServer,
    commit_emails,
    email,
    rows,
    settings_env,
    wait_until,
)

from vitasync_fhir.config import Settings
from vitasync_fhir.notify.queue import queue_for
from vitasync_fhir.notify.worker import hosted


def exactly_once(smtp: SmtpServer, config: Settings, expected: int) -> None:
    """All `expected` rows sent, each one arrived once, and nothing else arrived."""
    time.sleep(1.5)  # room for a duplicate to show up, if one could
    stored = rows(config)
    counts = Counter(arrival.message_id for arrival in smtp.inbox.received)
    assert len(stored) == expected
    assert counts == Counter({row.message_id: 1 for row in stored}), counts
    assert [row.status for row in stored] == ["sent"] * expected


def names(tasks: list) -> set[str]:
    return {task.name for task in tasks}


def command(config: Settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vitasync_fhir.notify.commands", *args],
        env={**settings_env(config), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_redis_stopped_while_booking(
    settings: Settings, smtp: SmtpServer, own_redis: RedisServer
) -> None:
    config = smtp.settings(settings, redis_url=own_redis.url)
    queue = queue_for(config)
    with hosted(config):
        commit_emails(config, [email(appointment_id="before")])
        wait_until(lambda: len(smtp.inbox.received) == 1, what="the first e-mail")
        own_redis.stop()
        for n in range(3):  # bookings go on: their commits succeed, the hand-over fails
            commit_emails(config, [email(appointment_id=f"during-{n}")])
        assert [r.status for r in rows(config)] == ["sent", "pending", "pending", "pending"]
        time.sleep(config.notify_relay_grace_seconds)
        own_redis.start()
        queue.relay()  # what the consumer's scheduler queues every minute
        wait_until(lambda: len(smtp.inbox.received) == 4, what="the relayed e-mails")
        exactly_once(smtp, config, 4)
    every_minute = [datetime(2030, 1, 1, 12, m) for m in range(60)]
    assert all("notify.relay" in names(queue.huey.read_periodic(m)) for m in every_minute)


def test_smtp_down_then_up(settings: Settings, smtp: SmtpServer, queue_url: str | None) -> None:
    config = smtp.settings(settings, redis_url=queue_url)
    smtp.stop()
    with hosted(config):
        commit_emails(config, [email(), email("registration"), email("appointment-cancelled")])
        wait_until(
            lambda: all(r.attempts >= 2 and r.status == "pending" for r in rows(config)),
            what="the first retries",
        )
        assert all("Connection refused" in r.last_error for r in rows(config))
        smtp.start()
        wait_until(lambda: len(smtp.inbox.received) == 3, timeout=30, what="delivery")
        exactly_once(smtp, config, 3)


def test_smtp_refusing_until_dead_then_outbox_retry(settings: Settings, smtp: SmtpServer) -> None:
    config = smtp.settings(settings, notify_max_attempts=3)
    smtp.inbox.rcpt_reply = "451 4.3.0 Mailbox busy"
    with hosted(config):
        commit_emails(config, [email(to="jane@example.org"), email(to="sam@example.org")])
        wait_until(lambda: [r.status for r in rows(config)] == ["dead", "dead"], what="dead")
        assert [r.attempts for r in rows(config)] == [3, 3]
        listed = command(config, "outbox-list")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.count(" dead ") == 2 and "451 4.3.0 Mailbox busy" in listed.stdout
        smtp.inbox.rcpt_reply = None
        first = rows(config)[0].id
        retried = command(config, "outbox-retry", str(first))
        assert retried.returncode == 0 and f"queued again: {first}" in retried.stdout
        wait_until(lambda: len(smtp.inbox.received) == 1, what="the retried e-mail")
        retried = command(config, "outbox-retry")
        assert retried.returncode == 0, retried.stderr
        wait_until(lambda: len(smtp.inbox.received) == 2, what="the other one")
        exactly_once(smtp, config, 2)
    assert command(config, "outbox-list").stdout.startswith("no e-mails")


def test_worker_killed_before_the_end_of_data(
    settings: Settings, smtp: SmtpServer, queue_url: str | None, worker_process
) -> None:
    config = smtp.settings(settings, redis_url=queue_url, notify_lease_seconds=3)
    smtp.inbox.gate = gate = Gate("rcpt")
    first = worker_process(config)
    commit_emails(config, [email()])
    assert gate.reached.wait(30), first.output()
    first.kill()  # SIGKILL in the middle of the SMTP conversation
    smtp.inbox.gate = None
    gate.release.set()
    [row] = rows(config)
    assert row.status == "sending" and row.final_dot_at is None
    time.sleep(config.notify_lease_seconds)  # the lease of the dead attempt runs out
    second = worker_process(config)  # its start-up relay finds the row
    wait_until(lambda: len(smtp.inbox.received) == 1, timeout=30, what=second.output())
    exactly_once(smtp, config, 1)
    assert rows(config)[0].attempts == 2


def test_worker_killed_after_the_end_of_data(
    settings: Settings, smtp: SmtpServer, redis_url: str, worker_process
) -> None:
    config = smtp.settings(settings, redis_url=redis_url, notify_lease_seconds=3)
    smtp.inbox.gate = gate = Gate("data")  # the server has the message; its answer is held
    first = worker_process(config)
    commit_emails(config, [email(), email()])
    assert gate.reached.wait(30), first.output()
    first.kill()
    smtp.inbox.gate = None
    gate.release.set()
    assert sorted(r.status for r in rows(config)) == ["pending", "sending"]
    time.sleep(config.notify_lease_seconds)
    second = worker_process(config)
    wait_until(lambda: len(smtp.inbox.received) == 2, timeout=30, what=second.output())
    time.sleep(1.5)
    counts = Counter(arrival.message_id for arrival in smtp.inbox.received)
    assert sorted(counts.values()) == [1, 1]  # the interrupted one was not sent again
    statuses = {r.message_id: r.status for r in rows(config)}
    assert sorted(statuses.values()) == ["sent", "uncertain"]
    listed = command(config, "outbox-list")
    assert " uncertain " in listed.stdout and "check the inbox" in listed.stdout


def test_smtp_timing_out_before_the_end_of_data_is_retried(
    settings: Settings, smtp: SmtpServer
) -> None:
    config = smtp.settings(settings, smtp_timeout=1.0)
    smtp.inbox.gate = gate = Gate("rcpt")  # the server stops answering in the middle
    with hosted(config):
        commit_emails(config, [email()])
        assert gate.reached.wait(20)
        wait_until(lambda: "timed out" in (rows(config)[0].last_error or ""), what="a timeout")
        smtp.inbox.gate = None
        gate.release.set()
        wait_until(lambda: len(smtp.inbox.received) == 1, what="the retried e-mail")
        exactly_once(smtp, config, 1)
    assert rows(config)[0].attempts >= 2


def test_smtp_timing_out_after_the_end_of_data_is_uncertain(
    settings: Settings, smtp: SmtpServer
) -> None:
    config = smtp.settings(settings, smtp_timeout=1.0)
    smtp.inbox.gate = gate = Gate("data")  # stored, but the answer never comes in time
    with hosted(config):
        commit_emails(config, [email()])
        wait_until(lambda: rows(config)[0].status == "uncertain", what="the uncertain state")
        gate.release.set()
        time.sleep(1.5)
    assert len(smtp.inbox.received) == 1  # there, once, and not sent again on our own
    [row] = rows(config)
    assert row.attempts == 1 and "no answer after the end of DATA" in row.last_error
