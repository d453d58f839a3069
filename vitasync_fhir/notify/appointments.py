"""Appointment e-mails from a FHIR Appointment: who gets them, and the little they may say.

The /api routes call `enqueue_appointment_email` in the transaction that books, moves or cancels
an appointment. The recipient is the patient participant's account e-mail (the `users` row linked
to that Patient), else the Patient's own `telecom` e-mail; the doctor is the first Practitioner
participant, shown by name, phone and e-mail. Only times, names and contacts go into the e-mail:
never the reason, service type, description or comments of the appointment.
"""

from __future__ import annotations

import logging

import orjson
from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from vitasync_fhir.auth.tables import users
from vitasync_fhir.fhir.tables import resources
from vitasync_fhir.mapping import paths
from vitasync_fhir.notify.outbox import address_of, enqueue

log = logging.getLogger(__name__)

APPOINTMENT_KINDS = (
    "appointment-created",
    "appointment-rescheduled",
    "appointment-cancelled",
    "appointment-reminder",
)


def participant(appointment: dict, resource_type: str) -> str | None:
    """The id of the first participant of this type (`Patient/123` -> `123`)."""
    for entry in appointment.get("participant") or []:
        found = paths.reference_id(
            entry.get("actor") if isinstance(entry, dict) else None, resource_type
        )
        if found:
            return found
    return None


def display_name(resource: dict | None) -> str:
    if not resource:
        return ""
    names = resource.get("name") or []
    usual = next((n for n in names if n.get("use") in ("usual", "official")), None)
    name = usual or (names[0] if names else {})
    if name.get("text"):
        return str(name["text"])
    parts = [*name.get("prefix", []), *name.get("given", []), name.get("family", "")]
    return " ".join(p for p in parts if p).strip()


def telecom(resource: dict | None, system: str) -> str:
    for point in (resource or {}).get("telecom") or []:
        if point.get("system") == system and point.get("value"):
            return str(point["value"])
    return ""


def dedup_key(kind: str, appointment: dict) -> str:
    ident = appointment["id"]
    if kind == "appointment-created" or kind == "appointment-cancelled":
        return f"{kind}:{ident}"
    if kind == "appointment-rescheduled":
        version = (appointment.get("meta") or {}).get("versionId")
        return f"{kind}:{ident}:{version or appointment.get('start')}"
    return f"{kind}:{ident}:{appointment.get('start')}"


async def _resources(session: AsyncSession, keys: list[tuple[str, str]]) -> dict:
    if not keys:
        return {}
    rows = await session.execute(
        select(resources.c.resource_type, resources.c.id, resources.c.content).where(
            tuple_(resources.c.resource_type, resources.c.id).in_(keys),
            resources.c.deleted.is_(False),
        )
    )
    return {(r.resource_type, r.id): orjson.loads(r.content) for r in rows if r.content}


async def _account_email(session: AsyncSession, patient_id: str) -> str:
    row = await session.execute(
        select(users.c.email).where(
            users.c.fhir_type == "Patient", users.c.fhir_id == patient_id, users.c.active.is_(True)
        )
    )
    return row.scalar() or ""


async def enqueue_appointment_email(
    session: AsyncSession,
    *,
    kind: str,
    appointment: dict,
    previous: dict | None = None,
    refund: str | None = None,
    availability_note: str | None = None,
    cancel_url: str | None = None,
) -> bool:
    """Queue this appointment e-mail in the caller's transaction; False if the patient has no
    e-mail address. `previous` is the Appointment before a reschedule (its start is shown)."""
    if kind not in APPOINTMENT_KINDS:
        raise ValueError(f"not an appointment e-mail: {kind!r}")
    patient_id = participant(appointment, "Patient")
    doctor_id = participant(appointment, "Practitioner")
    if patient_id is None or not appointment.get("start"):
        log.info("Appointment/%s has no patient or no start: no %s", appointment.get("id"), kind)
        return False
    keys = [("Patient", patient_id)] + ([("Practitioner", doctor_id)] if doctor_id else [])
    found = await _resources(session, keys)
    patient = found.get(("Patient", patient_id))
    doctor = found.get(("Practitioner", doctor_id)) if doctor_id else None
    to = address_of(await _account_email(session, patient_id) or telecom(patient, "email") or "")
    if not to:  # none, or a telecom value no server would take
        log.info("Patient/%s has no usable e-mail address: no %s", patient_id, kind)
        return False
    context: dict = {
        "appointment_id": appointment["id"],
        "start": appointment.get("start"),
        "end": appointment.get("end"),
        "name": display_name(patient),
        "doctor_name": display_name(doctor),
        "doctor_phone": telecom(doctor, "phone"),
        "doctor_email": telecom(doctor, "email"),
    }
    if previous is not None:
        context["previous_start"] = previous.get("start")
    optional = {"refund": refund, "availability_note": availability_note, "cancel_url": cancel_url}
    context.update({k: v for k, v in optional.items() if v})
    await enqueue(
        session, kind=kind, to=to, context=context, dedup_key=dedup_key(kind, appointment)
    )
    return True
