"""The /api actions beyond CRUD: filling prescriptions, performing procedures, booking.

Each changes FHIR resources through the same `Resources` (and so the same access checks and
audit), and each races safely: a second fill or a double booking answers 409.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import orjson

from vitasync_fhir.api.service import ApiResources, invalid, simple
from vitasync_fhir.fhir.outcomes import FhirError
from vitasync_fhir.fhir.search import dates
from vitasync_fhir.fhir.search.service import find
from vitasync_fhir.fhir.service import instant
from vitasync_fhir.fhir.validation import choice_siblings
from vitasync_fhir.mapping.convert import FieldError, InvalidInput, _datetime
from vitasync_fhir.notify.appointments import enqueue_appointment_email, participant

ACTIVE_APPOINTMENT = ("proposed", "pending", "booked", "arrived", "checked-in", "waitlist")
CLOSED_PRESCRIPTION = ("cancelled", "stopped", "entered-in-error", "completed")


def _now() -> str:
    return instant(datetime.now(UTC))


def _performer(api: ApiResources) -> dict | None:
    who = api.access.caller.fhir_user if api.access.caller else None
    return {"reference": who} if who and who.startswith("Practitioner/") else None


async def fill_prescription(api: ApiResources, resource_id: str, body: dict) -> dict:
    """Record a MedicationDispense (one fill); 409 when no fill remains or it is not active."""
    await api.access.require("MedicationDispense", "create")
    await api.access.require(api.fhir_type, "update", resource_id=resource_id)
    current = await api.current(resource_id)
    request = orjson.loads(current.content or "{}")
    status = request.get("status")
    if status in CLOSED_PRESCRIPTION or status != "active":
        word = "already filled" if status == "completed" else f"{status}, not active"
        raise FhirError(409, "conflict", f"This prescription is {word}")
    given = body.get("quantity")
    if given is not None and (not _is_number(given) or given <= 0):
        raise invalid(InvalidInput([FieldError("quantity", "must be a number above 0")]))
    quantity = (
        given
        if given is not None
        else request.get("dispenseRequest", {}).get("quantity", {}).get("value")
    )
    dispense: dict = {
        "resourceType": "MedicationDispense",
        "status": "completed",
        "authorizingPrescription": [{"reference": f"MedicationRequest/{resource_id}"}],
        "subject": request.get("subject"),
        **_medication(request),
        "whenHandedOver": _now(),
    }
    if _is_number(quantity):
        dispense["quantity"] = {"value": quantity}
    if body.get("notes"):
        dispense["note"] = [{"text": str(body["notes"])}]
    performer = _performer(api)
    if performer:
        dispense["performer"] = [{"actor": performer}]
    # The dispensing rule (pharmacy/dispensing.py) counts the fills under a lock on the
    # prescription, refuses one too many, and completes the prescription on its last fill.
    saved = await api.resources.create("MedicationDispense", dispense)
    result = await api.get(resource_id)
    result["dispense_id"] = saved.version.id
    result["filled_at"] = dispense["whenHandedOver"]
    return result


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _medication(request: dict) -> dict:
    """The prescription's medication[x] for its dispense: the concept, or the reference (with
    the contained Medication it points at)."""
    reference = request.get("medicationReference")
    if not isinstance(reference, dict):
        return {
            "medicationCodeableConcept": request.get("medicationCodeableConcept")
            or {"text": "unknown"}
        }
    found: dict = {"medicationReference": reference}
    local = str(reference.get("reference") or "")
    if local.startswith("#"):
        contained = [c for c in request.get("contained") or [] if c.get("id") == local[1:]]
        if contained:
            found["contained"] = contained
    return found


async def perform_procedure(api: ApiResources, resource_id: str, body: dict) -> dict:
    await api.access.require(api.fhir_type, "update", resource_id=resource_id)
    current = await api.current(resource_id)
    procedure = orjson.loads(current.content or "{}")
    if procedure.get("status") in ("completed", "entered-in-error", "not-done", "stopped"):
        raise FhirError(409, "conflict", f"This procedure is already {procedure['status']}")
    procedure["status"] = "completed"
    when = body.get("performed_at") or _now()
    if isinstance(procedure.get("performedPeriod"), dict):
        # Started as a Period (in progress since its start): performing it ends the Period.
        procedure["performedPeriod"].setdefault("end", when)
    else:
        for other in choice_siblings("Procedure", "performedDateTime"):
            procedure.pop(other, None)
        procedure["performedDateTime"] = when
    performer = _performer(api)
    performers = procedure.setdefault("performer", [])
    if performer and all(p.get("actor") != performer for p in performers):
        performers.append({"actor": performer})  # the others who took part stay
    if not performers:
        del procedure["performer"]
    await api.save(
        resource_id, procedure, current, conflict="This procedure was performed just now"
    )
    return await api.get(resource_id)


# The longest appointment that holds a doctor's diary. The search index knows when an appointment
# starts, not when it ends: a booking looks back this far for one still running at its start.
LONGEST = timedelta(days=7)
_LONGEST_MICROS = LONGEST // timedelta(microseconds=1)  # dates.from_micros stays within year 1
_PAGE = 500


def _window(appointment: dict) -> tuple[datetime, datetime]:
    start, end = _moment(appointment.get("start")), _moment(appointment.get("end"))
    if start is None or end is None:
        field = "start" if start is None else "end"
        raise invalid(InvalidInput([FieldError(field, "is not a date and time")]))
    if end <= start:
        raise invalid(InvalidInput([FieldError("end", "must be after start")]))
    if end - start > LONGEST:
        days = LONGEST.days
        raise invalid(InvalidInput([FieldError("end", f"must be at most {days} days after start")]))
    return start, end


def _moment(value: object) -> datetime | None:
    """An instant as FHIR writes it (a leap second or an odd zone fails, it does not raise)."""
    found = dates.parse_range(value) if isinstance(value, str) else None
    return dates.from_micros(found[0]) if found else None


async def check_free(api: ApiResources, appointment: dict, *, ignore: str | None = None) -> None:
    """409 when the doctor already has an active appointment overlapping this one."""
    doctor = participant(appointment, "Practitioner")
    if doctor is None:
        return
    start, end = _window(appointment)
    # Bookings of one doctor one at a time, until this one commits: the lock on the doctor's
    # Practitioner (a row lock on PostgreSQL, SQLite's one write lock), held before the diary
    # is read, so that the next booking reads this one.
    await api.resources.store.lock("Practitioner", doctor)
    pairs = [
        ("practitioner", f"Practitioner/{doctor}"),
        ("status", ",".join(ACTIVE_APPOINTMENT)),
        ("date", f"lt{end.isoformat()}"),
        ("date", f"gt{dates.from_micros(dates.micros(start) - _LONGEST_MICROS).isoformat()}"),
    ]
    async for content in _every(api, pairs):
        other = orjson.loads(content)
        if other.get("id") == ignore:
            continue
        other_start, other_end = _moment(other.get("start")), _moment(other.get("end"))
        if other_start is None or other_end is None:
            continue
        if other_start < end and other_end > start:
            raise FhirError(
                409, "conflict", f"The doctor is booked from {other['start']} to {other['end']}"
            )


async def _every(api: ApiResources, pairs: list[tuple[str, str]]) -> AsyncIterator[str]:
    """Every match, page after page: a busy diary has more than one page in its window."""
    offset = 0
    while True:
        contents, total = await find(
            api.session, api.settings, "Appointment", pairs, offset=offset, limit=_PAGE
        )
        for content in contents:
            yield content
        offset += len(contents)
        if not contents or offset >= total:
            return


async def book(api: ApiResources, body: object) -> dict:
    from vitasync_fhir.mapping.convert import to_fhir

    try:
        resource = to_fhir(api.mapping, api.filled(body))
    except InvalidInput as errors:
        raise invalid(errors) from None
    # Who may book this, before the doctor's diary is looked at: a conflict names the times of
    # another patient's appointment, which only a caller allowed to book may learn.
    await api.access.require("Appointment", "create")
    await api.access.require_writable("Appointment", resource, "create")
    await api.check_references(resource)
    active = resource.get("status") in ACTIVE_APPOINTMENT
    if active:
        await check_free(api, resource)
    saved = await api.resources.create("Appointment", resource)
    stored = orjson.loads(saved.version.content or "{}")
    if stored.get("status") == "booked":  # the e-mail confirms a booking
        await enqueue_appointment_email(api.session, kind="appointment-created", appointment=stored)
    return simple(api.mapping, saved.version)


async def reschedule(api: ApiResources, resource_id: str, body: dict) -> dict:
    await api.access.require(api.fhir_type, "update", resource_id=resource_id)
    current = await api.current(resource_id)
    previous = orjson.loads(current.content or "{}")
    if previous.get("status") not in ACTIVE_APPOINTMENT:
        raise FhirError(
            409, "conflict", f"A {previous.get('status')} appointment cannot be rescheduled"
        )
    errors = []
    for name in ("start", "end"):
        try:
            _datetime(body.get(name))
        except ValueError as error:
            errors.append(FieldError(name, str(error)))
    if errors:
        raise invalid(InvalidInput(errors))
    changed = {**previous, "start": body["start"], "end": body["end"]}
    await check_free(api, changed, ignore=resource_id)
    saved = await api.save(
        resource_id, changed, current, conflict="The appointment changed just now"
    )
    stored = orjson.loads(saved.version.content or "{}")
    note = body.get("availability_note")
    await enqueue_appointment_email(
        api.session,
        kind="appointment-rescheduled",
        appointment=stored,
        previous=previous,
        availability_note=str(note) if note else None,
    )
    return simple(api.mapping, saved.version)


async def cancel(api: ApiResources, resource_id: str, body: dict) -> dict:
    await api.access.require(api.fhir_type, "update", resource_id=resource_id)
    current = await api.current(resource_id)
    appointment = orjson.loads(current.content or "{}")
    if appointment.get("status") == "cancelled":
        raise FhirError(409, "conflict", "This appointment is already cancelled")
    if appointment.get("status") not in ACTIVE_APPOINTMENT:
        raise FhirError(
            409, "conflict", f"A {appointment.get('status')} appointment cannot be cancelled"
        )
    appointment["status"] = "cancelled"
    reason = body.get("reason")
    if reason:
        appointment["cancelationReason"] = {"text": str(reason)}
    saved = await api.save(
        resource_id, appointment, current, conflict="The appointment changed just now"
    )
    stored = orjson.loads(saved.version.content or "{}")
    refund = body.get("refund")
    await enqueue_appointment_email(
        api.session,
        kind="appointment-cancelled",
        appointment=stored,
        refund=str(refund) if refund else None,
    )
    return simple(api.mapping, saved.version)


LINKED = {"vitals": "Observation", "procedures": "Procedure", "prescriptions": "MedicationRequest"}


async def linked(api: ApiResources, record_id: str, record: dict) -> dict[str, list[str]]:
    """The ids of what the visit produced: vitals, procedures, vaccines and prescriptions."""
    restrict = api.access.restriction()
    found: dict[str, list[str]] = {}
    for name, fhir_type in LINKED.items():
        if not api.access.is_system and not _may_search(api, fhir_type):
            continue
        contents, _ = await find(
            api.session,
            api.settings,
            fhir_type,
            [("encounter", f"Encounter/{record_id}")],
            offset=0,
            limit=500,
            restrict=restrict,
        )
        found[name] = [orjson.loads(c)["id"] for c in contents]
    if record.get("patient_id") and (api.access.is_system or _may_search(api, "Immunization")):
        # Immunization has no encounter search parameter in R4: filter the patient's own.
        contents, _ = await find(
            api.session,
            api.settings,
            "Immunization",
            [("patient", f"Patient/{record['patient_id']}")],
            offset=0,
            limit=1000,
            restrict=restrict,
        )
        target = f"Encounter/{record_id}"
        found["vaccines"] = [
            r["id"]
            for r in map(orjson.loads, contents)
            if r.get("encounter", {}).get("reference") == target
        ]
    return found


def _may_search(api: ApiResources, fhir_type: str) -> bool:
    from vitasync_fhir.auth import policy

    return api.access.caller is not None and policy.allowed(api.access.caller, fhir_type, "search")
