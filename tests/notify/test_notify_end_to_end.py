"""From a committed unit of work to the SMTP server's inbox, through a real queue (SQLite or Redis)
and a real consumer, on both databases."""

from __future__ import annotations

import time

from notify_helpers import SmtpServer, commit_emails, email, notify_settings, rows, wait_until

from vitasync_fhir.config import Settings
from vitasync_fhir.notify import mailer
from vitasync_fhir.notify.worker import hosted, serving


def test_each_email_arrives_once_with_its_content(
    settings: Settings, smtp: SmtpServer, queue_url: str | None
) -> None:
    # With a frontend configured, appointment e-mails link to its pages (tests/auth checks the
    # default, where they say how to change one instead).
    config = smtp.settings(settings, redis_url=queue_url, email_link_url="https://app.example.org")
    sent = [
        email("registration", to="nora@example.org", name="Nora Field"),
        email("appointment-created", to="jane@example.org", appointment_id="apt-1"),
        email(
            "appointment-rescheduled",
            to="jane@example.org",
            appointment_id="apt-2",
            start="2030-03-06T14:00:00+00:00",
            previous_start="2030-03-04T09:30:00+00:00",
            availability_note="Dr Lovelace now works on Wednesdays.",
        ),
        email("appointment-cancelled", to="sam@example.org", refund="Your EUR 40 is refunded."),
        email("appointment-reminder", to="jane@example.org", appointment_id="apt-3"),
    ]
    with hosted(config):
        commit_emails(config, sent[:2])
        commit_emails(config, [email(to="ghost@example.org")], roll_back=True)
        commit_emails(config, sent[2:])
        wait_until(lambda: len(smtp.inbox.received) >= 5, what="five e-mails")
        time.sleep(1.5)  # time for a duplicate or the rolled-back one to show up, if they could
    by_id = smtp.inbox.by_message_id()
    stored = rows(config)
    assert len(smtp.inbox.received) == 5 and len(by_id) == 5
    assert all(r.status == "sent" for r in stored)
    assert {r.recipient for r in stored} == {
        "nora@example.org",
        "jane@example.org",
        "sam@example.org",
    }
    arrivals = {r.kind: by_id[r.message_id][0] for r in stored}
    for arrival in arrivals.values():
        assert arrival.tls and arrival.authenticated
        assert arrival.mail_from == "no-reply@clinic.test"
        assert arrival.message["From"] == "VitaSync Clinic <no-reply@clinic.test>"
        assert "Riverside Clinic" in arrival.text and "Riverside Clinic" in arrival.html

    welcome = arrivals["registration"]
    assert welcome.rcpt_tos == ["nora@example.org"] and welcome.message["To"] == "nora@example.org"
    assert welcome.message["Subject"] == (
        "Welcome to Riverside Clinic: please confirm your e-mail address"
    )
    link = sent[0]["context"]["verify_url"]
    assert link in welcome.text and link in welcome.html and "Nora Field" in welcome.text

    created = arrivals["appointment-created"]
    assert created.rcpt_tos == ["jane@example.org"]
    assert created.message["Subject"] == "Appointment confirmed: 4 Mar 2030 at 09:30"
    for body in (created.text, created.html):
        assert "Monday 4 March 2030" in body and "Dr Ada Lovelace" in body and "+1 555 0199" in body
        assert "health information" in body

    moved = arrivals["appointment-rescheduled"]
    assert moved.message["Subject"] == "Appointment moved to 6 Mar 2030 at 14:00"
    for body in (moved.text, moved.html):
        assert "Wednesday 6 March 2030" in body and "now works on Wednesdays" in body
        assert "https://app.example.org/appointments/apt-2" in body

    cancelled = arrivals["appointment-cancelled"]
    assert cancelled.rcpt_tos == ["sam@example.org"]
    assert cancelled.message["Subject"] == "Appointment cancelled: 4 Mar 2030 at 09:30"
    assert (
        "Your EUR 40 is refunded." in cancelled.text
        and "Your EUR 40 is refunded." in cancelled.html
    )

    reminder = arrivals["appointment-reminder"]
    assert reminder.message["Subject"] == "Reminder: your appointment 4 Mar 2030 at 09:30"


def test_without_smtp_the_embedded_default_writes_eml_files(settings: Settings) -> None:
    config = notify_settings(settings)  # no SMTP host, no Redis: what `make serve` runs
    assert config.embedded_worker and not config.redis_url and not config.smtp_host
    with serving(config):
        commit_emails(config, [email("registration", to="nora@example.org")])
        [row] = rows(config)
        path = mailer.eml_path(config, row.message_id)
        wait_until(path.exists, what=f"{path}")
        wait_until(lambda: rows(config)[0].status == "sent", what="the row to be sent")
    assert path.parent == config.data_dir / "outbox"
    text = path.read_text()
    assert "To: nora@example.org" in text and f"Message-ID: {row.message_id}" in text


def test_with_redis_serve_does_not_consume(settings: Settings, redis_url: str) -> None:
    config = notify_settings(settings, redis_url=redis_url)
    with serving(config) as _:
        commit_emails(config, [email()])
        time.sleep(1.0)
    assert rows(config)[0].status == "pending"  # waits for `vitasync-fhir worker`
