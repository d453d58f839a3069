"""Patient/$everything (R4 Patient-everything): the patient's record as a paged searchset Bundle.

Each page holds resources of the patient's compartment (the Patient itself included), as matches,
keyset-paged in the order of a system search, and as includes the resources outside every patient
compartment that those matches refer to (Practitioner, Organization, Medication, Location...).
A referenced resource may so appear on several pages; the union of all pages is the record.
Everything goes through the caller's `Access`: a patient reaches only their own record, a role
only the types it may search, and the request is audited.

AuditEvents (in the compartment too) are the audit trail, not the record: they come only when
`_type` names them. `_since` keeps resources whose lastUpdated is at or after the instant;
`_type` limits the types shown (of matches and includes alike; naming a type outside the
compartments, such as Medication, walks the whole record for what refers to it); `_count` is the
page size. `start` and `end` (care dates) are not supported and answer 400. GET and POST (with the
parameters in a Parameters body) both work.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import and_
from sqlalchemy.ext.asyncio import AsyncSession

from vitasync_fhir.auth.access import Access, AccessDep
from vitasync_fhir.config import Settings
from vitasync_fhir.db import SessionDep
from vitasync_fhir.fhir.models import is_resource_type
from vitasync_fhir.fhir.outcomes import FhirError, Issue, bad_request
from vitasync_fhir.fhir.responses import bundle, bundle_entry, fhir_response, require_json_body
from vitasync_fhir.fhir.search import paging, query
from vitasync_fhir.fhir.search.params import Include, parse_query
from vitasync_fhir.fhir.search.query import Restrict
from vitasync_fhir.fhir.search.registry import compartment_types
from vitasync_fhir.fhir.search.service import outcome_entries
from vitasync_fhir.fhir.service import Resources, check_id, instant, parse_json
from vitasync_fhir.fhir.store import Store

router = APIRouter()
OPERATIONS: list[dict] = []  # an instance operation of Patient: listed on the type
TYPE_OPERATIONS = {
    "Patient": [
        {
            "name": "everything",
            "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
        }
    ]
}
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
    referenced = frozenset(t for t in named if t not in compartment_types())
    # Outside types come only as what the record refers to: naming one walks the whole record
    # (and shows of it only the named types), not just the named types' part of it.
    scanned = tuple(dict.fromkeys((*matched, *record_types()))) if referenced else matched
    since = _one(pairs, "_since")
    criteria_pairs = [("_lastUpdated", "ge" + instant(parse_since(since)))] if since else []
    q = parse_query(
        scanned or ("Patient",), criteria_pairs, base=settings.fhir_base, max_count=1, system=True
    )
    count = _count(_one(pairs, "_count"), settings)
    kinds = query.sort_kinds([], scanned or ("Patient",))
    cursor = _one(pairs, "_cursor")
    position = paging.decode(cursor, SIGNATURE, kinds)[0] if cursor else None
    restrict = access.restriction()
    rows = []
    more = False
    if scanned:
        page = await query.fetch_page(
            session,
            scanned,
            q.criteria,
            [],
            count=count,
            position=position,
            reverse=False,
            restrict=restrict,
            compartment=patient_id,
        )
        rows, more = page.rows, page.more
    entries = [_entry(settings, row, "match") for row in rows if row.resource_type in matched]
    issues = []
    if rows:
        found = [(row.resource_type, row.id) for row in rows]
        wanted = referenced if typed is not None else None
        extra = await query.gather_included(
            session,
            found,
            [_ALL_REFERENCES],
            restrict=_outside(restrict, wanted),
            limit=settings.max_page_size,
        )
        entries += [_entry(settings, row, "include") for row in extra.rows]
        if extra.cut:
            issues = outcome_entries([_cut_issue(settings)])
    base = f"{settings.fhir_base}/Patient/{patient_id}/$everything"
    kept = [(n, v) for n, v in pairs if n not in ("_cursor", "_format", "_pretty")]
    links = [("self", _url(base, pairs))]
    if more:
        after = paging.encode(SIGNATURE, list(rows[-1][3:]), previous=False)
        links.append(("next", _url(base, [*kept, ("_cursor", after)])))
    shown = sum(1 for row in rows if row.resource_type in matched)
    total = shown if position is None and not more else None
    return bundle(bundle_type="searchset", entries=[*entries, *issues], total=total, links=links)


def _outside(restrict: Restrict | None, wanted: frozenset[str] | None) -> Restrict:
    """The caller's restriction, narrowed to resources outside every patient compartment (and to
    the `wanted` types): only those come as includes, and only they count against the limit."""
    inside = compartment_types()

    def clause(table, types):  # type: ignore[no-untyped-def]
        narrowed = table.c.resource_type.not_in(inside)
        if wanted is not None:
            narrowed = and_(narrowed, table.c.resource_type.in_(wanted))
        base = restrict(table, types) if restrict else None
        return narrowed if base is None else and_(narrowed, base)

    return clause


def _cut_issue(settings: Settings) -> Issue:
    return Issue(
        "incomplete",
        f"A page includes at most {settings.max_page_size} resources the record refers to; "
        "the rest are left out (ask for a smaller _count)",
        severity="warning",
    )


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
    pairs = list(request.query_params.multi_items())
    return await _everything(request, session, access, patient_id, pairs)


@router.post("/Patient/{patient_id}/$everything")
async def patient_everything_post(
    patient_id: str, request: Request, session: SessionDep, access: AccessDep
) -> Response:
    """The same, with the parameters in a Parameters body (or none): operations are POSTed."""
    body = await request.body()
    pairs = list(request.query_params.multi_items())
    if body.strip():
        require_json_body(request)
        pairs += _parameters(parse_json(body))
    return await _everything(request, session, access, patient_id, pairs)


def _parameters(body: object) -> list[tuple[str, str]]:
    """(name, value) pairs of a Parameters resource's primitive parameters."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise bad_request("The body of $everything must be a Parameters resource")
    pairs = []
    for parameter in body.get("parameter") or []:
        name = parameter.get("name") if isinstance(parameter, dict) else None
        values = [v for k, v in parameter.items() if k.startswith("value")] if name else []
        if not isinstance(name, str) or len(values) != 1 or isinstance(values[0], dict | list):
            raise bad_request("Each parameter of $everything has a name and one simple value")
        value = values[0]
        pairs.append((name, str(value).lower() if isinstance(value, bool) else str(value)))
    return pairs


async def _everything(
    request: Request,
    session: AsyncSession,
    access: Access,
    patient_id: str,
    pairs: list[tuple[str, str]],
) -> Response:
    check_id(patient_id)
    await access.require("Patient", "$everything", resource_id=patient_id)
    found = await Store(session).current("Patient", patient_id)
    if found is None:
        raise FhirError(404, "not-found", f"Patient/{patient_id} is not known")
    if found.deleted:
        await Resources(session, access).require_visible_deletion(found, "$everything")
        raise FhirError(410, "deleted", f"Patient/{patient_id} was deleted")
    await access.require_visible("Patient", patient_id, found.content, "$everything")
    body = await everything_page(session, request.app.state.settings, access, patient_id, pairs)
    await access.audited(
        session, "operation", "Patient", patient_id, query="$everything?" + urlencode(pairs)
    )
    return fhir_response(request, body)
