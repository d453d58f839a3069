"""Patient/$everything (R4 Patient-everything): the patient's record as a paged searchset Bundle.

Each page holds resources of the patient's compartment (the Patient itself included), as matches,
keyset-paged in the order of a system search, and as includes the resources outside every patient
compartment that those matches refer to (Practitioner, Organization, Medication, Location...).
A referenced resource may so appear on several pages; the union of all pages is the record.
Everything goes through the caller's `Access`: a patient reaches only their own record, a role
only the types it may search, and the request is audited.

AuditEvents (in the compartment too) are the audit trail, not the record: they come only when
`_type` names them. `_since` keeps resources whose lastUpdated is at or after the instant;
`_type` limits the types (of matches and includes alike); `_count` is the page size. `start` and
`end` (care dates) are not supported and answer 400.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession

from vitasync_fhir.auth.access import Access, AccessDep
from vitasync_fhir.config import Settings
from vitasync_fhir.db import SessionDep
from vitasync_fhir.fhir.models import is_resource_type
from vitasync_fhir.fhir.outcomes import FhirError, bad_request
from vitasync_fhir.fhir.responses import bundle, bundle_entry, fhir_response
from vitasync_fhir.fhir.search import paging, query
from vitasync_fhir.fhir.search.params import Include, parse_query
from vitasync_fhir.fhir.search.registry import compartment_types
from vitasync_fhir.fhir.service import Resources, check_id, instant
from vitasync_fhir.fhir.store import Store

router = APIRouter()
OPERATIONS = [
    {
        "name": "everything",
        "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
    }
]
PARAMETERS = ("_since", "_type", "_count", "_cursor", "_format", "_pretty")
SIGNATURE = "$everything"
_ALL_REFERENCES = Include(None, None, None, False, False)


def record_types() -> tuple[str, ...]:
    """The compartment types of a patient's record; the audit trail only when asked by _type."""
    return tuple(t for t in compartment_types() if t != "AuditEvent")


def _one(pairs: list[tuple[str, str]], name: str) -> str | None:
    values = [v for n, v in pairs if n == name]
    if len(values) > 1:
        raise bad_request(f"Parameter {name} may be given once", expression=name)
    return values[0] if values else None


def parse_since(raw: str, name: str = "_since") -> datetime:
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        moment.astimezone(UTC)  # year 1 at +14:00 or 9999 at -14:00 is no UTC instant
    except (ValueError, OverflowError):
        raise bad_request(f"Parameter {name}: {raw!r} is not an instant", expression=name) from None
    return moment


def parse_types(raw: str | None, allowed: tuple[str, ...], name: str = "_type") -> tuple[str, ...]:
    if raw is None:
        return allowed
    named = tuple(dict.fromkeys(t.strip() for t in raw.split(",") if t.strip()))
    unknown = [t for t in named if not is_resource_type(t)]
    if unknown or not named:
        raise bad_request(f"Parameter {name}: {raw!r} names no resource types", expression=name)
    return named


def _count(raw: str | None, settings: Settings) -> int:
    if raw is None:
        return settings.default_page_size
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        text = f"Parameter _count: {raw!r} is not a positive integer"
        raise bad_request(text, expression="_count")
    return min(int(raw), settings.max_page_size)


async def everything_page(
    session: AsyncSession,
    settings: Settings,
    access: Access,
    patient_id: str,
    pairs: list[tuple[str, str]],
) -> str:
    """One page of the record of Patient `patient_id`, as searchset Bundle JSON text."""
    for name, _ in pairs:
        if name not in PARAMETERS:
            raise bad_request(f"$everything does not support parameter {name}", expression=name)
    typed = _one(pairs, "_type")
    named = parse_types(typed, record_types())
    matched = tuple(t for t in named if t in compartment_types())
    referenced = {t for t in named if t not in compartment_types()}
    since = _one(pairs, "_since")
    criteria_pairs = [("_lastUpdated", "ge" + instant(parse_since(since)))] if since else []
    q = parse_query(
        matched or ("Patient",), criteria_pairs, base=settings.fhir_base, max_count=1, system=True
    )
    count = _count(_one(pairs, "_count"), settings)
    kinds = query.sort_kinds([], matched or ("Patient",))
    cursor = _one(pairs, "_cursor")
    position = paging.decode(cursor, SIGNATURE, kinds)[0] if cursor else None
    restrict = access.restriction()
    rows = []
    more = False
    if matched:
        page = await query.fetch_page(
            session,
            matched,
            q.criteria,
            [],
            count=count,
            position=position,
            reverse=False,
            restrict=restrict,
            compartment=patient_id,
        )
        rows, more = page.rows, page.more
    entries = [_entry(settings, row, "match") for row in rows]
    if rows:
        found = [(row.resource_type, row.id) for row in rows]
        extra = await query.included(
            session, found, [_ALL_REFERENCES], restrict=restrict, limit=settings.max_page_size
        )
        outside = set(compartment_types())
        entries += [
            _entry(settings, row, "include")
            for row in extra
            if row.resource_type not in outside
            and (typed is None or row.resource_type in referenced)
        ]
    base = f"{settings.fhir_base}/Patient/{patient_id}/$everything"
    kept = [(n, v) for n, v in pairs if n not in ("_cursor", "_format", "_pretty")]
    links = [("self", _url(base, pairs))]
    if more:
        after = paging.encode(SIGNATURE, list(rows[-1][3:]), previous=False)
        links.append(("next", _url(base, [*kept, ("_cursor", after)])))
    total = len(rows) if position is None and not more else None
    return bundle(bundle_type="searchset", entries=entries, total=total, links=links)


def _url(base: str, pairs: list[tuple[str, str]]) -> str:
    return base + ("?" + urlencode(pairs) if pairs else "")


def _entry(settings: Settings, row, mode: str) -> str:  # type: ignore[no-untyped-def]
    return bundle_entry(
        full_url=f"{settings.fhir_base}/{row.resource_type}/{row.id}",
        resource=row.content,
        search_mode=mode,
    )


@router.get("/Patient/{patient_id}/$everything")
async def patient_everything(
    patient_id: str, request: Request, session: SessionDep, access: AccessDep
) -> Response:
    """The patient's record: their compartment and the resources it refers to, paged."""
    check_id(patient_id)
    await access.require("Patient", "$everything", resource_id=patient_id)
    found = await Store(session).current("Patient", patient_id)
    if found is None:
        raise FhirError(404, "not-found", f"Patient/{patient_id} is not known")
    if found.deleted:
        await Resources(session, access).require_visible_deletion(found, "$everything")
        raise FhirError(410, "deleted", f"Patient/{patient_id} was deleted")
    await access.require_visible("Patient", patient_id, found.content, "$everything")
    pairs = list(request.query_params.multi_items())
    body = await everything_page(session, request.app.state.settings, access, patient_id, pairs)
    await access.audited(
        session, "operation", "Patient", patient_id, query="$everything?" + request.url.query
    )
    return fhir_response(request, body)
