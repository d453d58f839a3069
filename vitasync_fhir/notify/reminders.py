"""Appointment reminders: one e-mail per booked appointment, `reminder_lead_hours` before it.

A periodic task (every `reminder_interval_minutes`) queues a reminder for every booked Appointment
that starts within the next `reminder_lead_hours`. It remembers nothing between runs: the outbox's
dedup key `appointment-reminder:{id}:{start}` makes the second and later runs add nothing, so a
reminder is sent once, and the scan catches up after downtime by itself (an appointment whose
reminder time passed while nothing ran is reminded at the next run, as long as it has not started).
A rescheduled appointment has a new start, hence a new key: its new time gets its own reminder.

For now the scan reads every current Appointment row of the `resources` table and filters in
Python; once the search index has Appointment `date`, it should select by start instead.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vitasync_fhir.config import Settings
from vitasync_fhir.db import Database, unit_of_work
from vitasync_fhir.fhir.tables import resources
from vitasync_fhir.notify.appointments import enqueue_appointment_email

log = logging.getLogger(__name__)


def _start(appointment: dict) -> datetime | None:
    value = appointment.get("start")
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def due_appointments(session: AsyncSession, *, now: datetime, lead: timedelta) -> list[dict]:
    """Booked appointments starting after `now` and no later than `now + lead`."""
    query = select(resources.c.content).where(
        resources.c.resource_type == "Appointment", resources.c.deleted.is_(False)
    )
    due = []
    # Streamed, and only the due ones kept: the enqueues run once the scan is finished.
    result = await session.stream(query.execution_options(yield_per=500))
    async for (content,) in result:
        if not content:
            continue
        appointment = orjson.loads(content)
        start = _start(appointment)
        if appointment.get("status") == "booked" and start and now < start <= now + lead:
            due.append(appointment)
    return due


async def schedule(session: AsyncSession, settings: Settings, *, now: datetime) -> int:
    """Queue the reminders that are due, in the caller's transaction; returns how many were due."""
    due = await due_appointments(
        session, now=now, lead=timedelta(hours=settings.reminder_lead_hours)
    )
    for appointment in due:
        await enqueue_appointment_email(
            session, kind="appointment-reminder", appointment=appointment
        )
    return len(due)


async def queue_reminders(settings: Settings, *, now: datetime | None = None) -> int:
    """One run of the periodic task, in its own database session and transaction."""
    database = Database(settings)
    try:
        async with database.sessions(info={"settings": settings}) as session:
            async with unit_of_work(session):
                count = await schedule(session, settings, now=now or datetime.now(UTC))
    finally:
        await database.dispose()
    log.info("reminder scan: %d appointments within %s h", count, settings.reminder_lead_hours)
    return count
