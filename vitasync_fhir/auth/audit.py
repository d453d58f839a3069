"""AuditEvent for every access to patient data: who, what, when, from where, and the outcome.

Writes store their event in the write's own transaction (`record`). Reads, searches, operations
and denials hand theirs to the audit trail (`auth/trail.py`), which stores them in batches apart
from the request, on a synchronous connection of its own (`store_many`): a denial survives the
rollback of the request it denies, and a read costs no write. Without a trail (commands, some
tests) they are stored in a unit of work of their own (`record_apart`).
"""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from vitasync_fhir.auth.policy import Caller
from vitasync_fhir.db import Database, mark_written

DICOM = "http://dicom.nema.org/resources/ontology/DCM"
AUDIT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
OPERATIONS = "urn:vitasync:operation"  # our own: the name of the operation run

# interaction -> AuditEvent.action (C create, R read, U update, D delete, E execute)
ACTIONS = {
    "create": "C",
    "read": "R",
    "vread": "R",
    "search": "E",
    "search-type": "E",
    "search-system": "E",
    "history": "R",
    "history-instance": "R",
    "history-type": "R",
    "history-system": "R",
    "update": "U",
    "patch": "U",
    "delete": "D",
    "login": "E",
    "logout": "E",
}
# outcome -> AuditEvent.outcome: 0 success, 4 minor failure (denied, not found), 8 serious failure
OUTCOMES = {"success": "0", "denied": "4", "failure": "8"}


def audit_event(
    caller: Caller | None,
    *,
    action: str,
    resource_type: str | None,
    resource_id: str | None,
    outcome: str,
    source_ip: str | None,
    query: str | None = None,
    patient_id: str | None = None,
    description: str | None = None,
    recorded: datetime | None = None,
) -> dict:
    """An R4 AuditEvent for one interaction; `outcome` is success, denied or failure."""
    moment = (recorded or datetime.now(UTC)).astimezone(UTC)
    event: dict = {
        "resourceType": "AuditEvent",
        "type": _event_type(action),
        "subtype": _subtypes(action),
        "action": ACTIONS.get(action, "E"),
        "recorded": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "outcome": OUTCOMES[outcome],
        "agent": [_agent(caller, source_ip)],
        "source": {
            "observer": {"display": "VitaSync FHIR"},
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4",
                    "display": "Application Server",
                }
            ],
        },
    }
    if description or outcome != "success":
        event["outcomeDesc"] = description or f"{action} {outcome}"
    entities = []
    if resource_type or query:
        entity: dict = {}
        if resource_type:
            entity["type"] = {"system": "http://hl7.org/fhir/resource-types", "code": resource_type}
        if resource_type and resource_id:
            entity["what"] = target(resource_type, resource_id)
        if query:
            entity["query"] = base64.b64encode(_printable(query).encode()).decode()
        entities.append(entity)
    patient = patient_id or (resource_id if resource_type == "Patient" else None)
    if patient and not (resource_type == "Patient" and resource_id == patient):
        entities.append(
            {
                "what": target("Patient", patient),
                "type": {
                    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                    "code": "1",
                },
                "role": {
                    "system": "http://terminology.hl7.org/CodeSystem/object-role",
                    "code": "1",
                },
            }
        )
    if entities:
        event["entity"] = entities
    return event


_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _printable(text: str) -> str:
    """What a caller sent, without the control characters no FHIR string holds (PostgreSQL
    refuses NUL): an event must be storable whatever the request held."""
    return _UNPRINTABLE.sub("\N{REPLACEMENT CHARACTER}", text)


def target(resource_type: str, resource_id: str) -> dict:
    """entity.what for a resource: a reference when the id is one a resource can have, else the
    id as asked for, as text (a refused request for `/api/vitals/<200 characters>` is recorded
    too, and must not break the index of references, whose ids are at most 64 characters)."""
    if _ID.fullmatch(resource_id):
        return {"reference": f"{resource_type}/{resource_id}"}
    return {"display": f"{resource_type}/{_printable(resource_id)[:200]}"}


def _event_type(action: str) -> dict:
    if action in ("login", "logout"):
        return {"system": DICOM, "code": "110114", "display": "User Authentication"}
    return {"system": AUDIT_TYPE, "code": "rest", "display": "Restful Operation"}


def _subtypes(action: str) -> list[dict]:
    """The interaction; an operation's own name ($print, $export...) follows as a second code."""
    named = [{"system": OPERATIONS, "code": action}] if action.startswith("$") else []
    return [_subtype(action), *named]


def _subtype(action: str) -> dict:
    if action in ("login", "logout"):
        code = "110122" if action == "login" else "110123"
        return {"system": DICOM, "code": code, "display": action.capitalize()}
    code = {
        "search-type": "search-type",
        "search-system": "search-system",
        "search": "search-type",
        "history": "history-instance",
    }.get(action, action)
    if code.startswith("$"):  # an operation: restful-interaction has only "operation" for these
        return {"system": RESTFUL, "code": "operation"}
    return {"system": RESTFUL, "code": code}


def _agent(caller: Caller | None, source_ip: str | None) -> dict:
    agent: dict = {
        "type": {
            "coding": [
                {"system": PARTICIPATION, "code": "IRCP", "display": "information recipient"}
            ]
        },
        "requestor": True,
    }
    if caller is None:
        agent["who"] = {"display": "anonymous"}
    elif caller.fhir_user:
        agent["who"] = {"reference": caller.fhir_user}
    else:
        agent["who"] = {
            "identifier": {"system": "urn:vitasync:client", "value": caller.client_id or "unknown"}
        }
    if caller is not None:
        agent["altId"] = caller.user_id or caller.client_id or "unknown"
        agent["role"] = [{"text": caller.role}]
        if caller.client_id:
            agent["name"] = caller.client_id
        policies = [caller.jti] if caller.jti else []
        if policies:
            agent["policy"] = [f"urn:uuid:{p}" for p in policies]
    if source_ip:
        agent["network"] = {"address": source_ip, "type": "2"}
    return agent


async def record(session: AsyncSession, event: dict) -> str:
    """Store `event` in the current transaction; the new AuditEvent's id."""
    return (await record_many(session, [event]))[0]


async def record_many(session: AsyncSession, events: list[dict]) -> list[str]:
    """Store `events` in the current transaction; the new AuditEvents' ids."""
    from vitasync_fhir.fhir.service import Resources  # the FHIR service imports search on load

    # The server builds these events itself (tests validate what audit_event builds), so the
    # write skips validation: auditing a read must not cost as much as the read.
    resources = Resources(session)
    writes = [Resources.plan_create("AuditEvent", event) for event in events]
    await resources.store.write(writes)
    mark_written(session)
    return [write.version.id for write in writes]


def store_many(connection: Connection, events: list[dict]) -> list[str]:
    """Store `events` on a synchronous connection, in its transaction (the audit trail's); an
    event that carries an id keeps it."""
    from vitasync_fhir.fhir.service import Resources
    from vitasync_fhir.fhir.store import write_new

    writes = [
        Resources.plan_create("AuditEvent", event, resource_id=event.get("id")) for event in events
    ]
    write_new(connection, writes)
    return [write.version.id for write in writes]


async def record_apart(database: Database, event: dict) -> str:
    """Store `event` in a transaction of its own: kept even when the request rolls back."""

    async def work(session: AsyncSession) -> str:
        return await record(session, event)

    return str(await database.run(work))
