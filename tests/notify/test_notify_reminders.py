"""Appointment reminders and appointment e-mails from FHIR Appointments stored through the API."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from uuid import uuid4

from factories import create, patient
from fastapi.testclient import TestClient
from notify_helpers import SmtpServer, notify_settings, rows, wait_until
from sqlalchemy import insert

from vitasync_fhir.auth.tables import users
from vitasync_fhir.config import Settings
from vitasync_fhir.db import Database, unit_of_work
from vitasync_fhir.notify.appointments import enqueue_appointment_email
from vitasync_fhir.notify.queue import queue_for
from vitasync_fhir.notify.reminders import queue_reminders
from vitasync_fhir.notify.worker import hosted


def practitioner() -> dict:
    return {
        "resourceType": "Practitioner",
        "name": [{"prefix": ["Dr"], "given": ["Ada"], "family": "Lovelace"}],
        "telecom": [{"system": "phone", "value": "+1 555 0199"}],
    }


def appointment(
    *, patient_id: str, doctor_id: str, start: datetime, status: str = "booked"
) -> dict:
    return {
        "resourceType": "Appointment",
        "status": status,
        "description": "Follow-up of chest pain",  # clinical: must not reach an e-mail
        "reasonCode": [{"text": "Chest pain"}],
        "start": start.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "end": (start + timedelta(minutes=30)).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "participant": [
            {"actor": {"reference": f"Patient/{patient_id}"}, "status": "accepted"},
            {"actor": {"reference": f"Practitioner/{doctor_id}"}, "status": "accepted"},
        ],
    }


def people(client: TestClient, *, email: str = "jane@example.org") -> tuple[str, str]:
    jane = create(client, patient(telecom=[{"system": "email", "value": email}]))
    doctor = create(client, practitioner())
    return jane["id"], doctor["id"]


def test_one_reminder_across_runs_and_none_too_early(
    settings: Settings, client: TestClient, smtp: SmtpServer
) -> None:
    config = smtp.settings(settings)
    jane, doctor = people(client)
    now = datetime.now(UTC).replace(microsecond=0)
    soon = create(
        client, appointment(patient_id=jane, doctor_id=doctor, start=now + timedelta(hours=20))
    )
    create(client, appointment(patient_id=jane, doctor_id=doctor, start=now + timedelta(days=3)))
    create(
        client,
        appointment(
            patient_id=jane, doctor_id=doctor, start=now + timedelta(hours=5), status="cancelled"
        ),
    )
    create(client, appointment(patient_id=jane, doctor_id=doctor, start=now - timedelta(hours=1)))

    assert asyncio.run(queue_reminders(config, now=now)) == 1
    assert asyncio.run(queue_reminders(config, now=now + timedelta(minutes=10))) == 1
    [row] = rows(config)
    assert row.kind == "appointment-reminder" and row.recipient == "jane@example.org"
    assert row.dedup_key == f"appointment-reminder:{soon['id']}:{soon['start']}"
    assert "Chest pain" not in str(row.payload) and "chest pain" not in str(row.payload)
    assert row.payload["doctor_name"] == "Dr Ada Lovelace"

    with hosted(config):
        wait_until(lambda: rows(config)[0].status == "sent", what="the reminder")
    [arrival] = smtp.inbox.received
    assert arrival.rcpt_tos == ["jane@example.org"]
    assert arrival.message["Subject"].startswith("Reminder: your appointment")
    assert "Dr Ada Lovelace" in arrival.text and "+1 555 0199" in arrival.html
    assert "chest" not in arrival.text.lower() and "chest" not in arrival.html.lower()


def test_reminders_catch_up_after_downtime(settings: Settings, client: TestClient) -> None:
    config = notify_settings(settings)
    jane, doctor = people(client)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=30)
    create(client, appointment(patient_id=jane, doctor_id=doctor, start=start))
    assert asyncio.run(queue_reminders(config, now=start - timedelta(hours=30))) == 0
    # nothing ran from 24 h before until 2 h before the appointment: the next run still reminds
    assert asyncio.run(queue_reminders(config, now=start - timedelta(hours=2))) == 1
    assert len(rows(config)) == 1
    assert asyncio.run(queue_reminders(config, now=start + timedelta(minutes=1))) == 0


def test_the_periodic_task_runs_the_scan(settings: Settings, client: TestClient) -> None:
    config = notify_settings(settings)
    jane, doctor = people(client)
    start = datetime.now(UTC) + timedelta(hours=20)
    create(client, appointment(patient_id=jane, doctor_id=doctor, start=start))
    queue = queue_for(config)
    queue.reminders.call_local()  # what the consumer runs every reminder_interval_minutes
    queue.reminders.call_local()
    assert [r.kind for r in rows(config)] == ["appointment-reminder"]


def test_the_account_email_comes_before_the_patient_telecom(
    settings: Settings, client: TestClient
) -> None:
    config = notify_settings(settings)
    jane, doctor = people(client, email="old@example.org")
    with queue_for(config).engine.begin() as conn:
        conn.execute(
            insert(users).values(
                id=uuid4().hex,
                email="jane.account@example.org",
                password_hash="x",
                role="patient",
                verified=True,
                active=True,
                fhir_type="Patient",
                fhir_id=jane,
                created_at=datetime.now(UTC),
            )
        )
    booked = create(
        client,
        appointment(patient_id=jane, doctor_id=doctor, start=datetime.now(UTC) + timedelta(days=9)),
    )

    async def book() -> bool:
        database = Database(config)
        try:
            async with database.sessions(info={"settings": config}) as session:
                async with unit_of_work(session):
                    return await enqueue_appointment_email(
                        session, kind="appointment-created", appointment=booked
                    )
        finally:
            await database.dispose()

    assert asyncio.run(book()) is True
    [row] = rows(config)
    assert row.recipient == "jane.account@example.org"
    assert row.dedup_key == f"appointment-created:{booked['id']}"
    assert set(row.payload) == {
        "appointment_id",
        "start",
        "end",
        "name",
        "doctor_name",
        "doctor_phone",
        "doctor_email",
    }
