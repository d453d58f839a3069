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
page size. `start` and `end` (dates, either may be left out) keep the resources whose care date
(CARE_DATES: the type's date search parameters, as indexed) overlaps the range, by the search
engine's `eb` and `sa`: a resource is out when all its care dates end before `start` or start
after `end`. Resources with no care date, of a type without one (Patient, Coverage, Group...) or
without a value of it, stay in: nothing says they lie outside (R4 leaves this to the server).
GET and POST (with the parameters in a Parameters body) both work.

`Patient/$everything` at the type level is the records of every patient the caller may see (a
patient's own only), paged the same way: the resources in some patient's compartment.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import ColumnElement, and_, exists, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import FromClause

from vitasync_fhir.auth.access import AUDITED_PATIENTS, Access, AccessDep
from vitasync_fhir.config import Settings
from vitasync_fhir.db import SessionDep
from vitasync_fhir.fhir.models import is_resource_type
from vitasync_fhir.fhir.outcomes import FhirError, Issue, bad_request
from vitasync_fhir.fhir.responses import bundle, bundle_entry, fhir_response, require_json_body
from vitasync_fhir.fhir.search import dates, paging, query
from vitasync_fhir.fhir.search.params import DateValue, Include, parse_query
from vitasync_fhir.fhir.search.query import Restrict
from vitasync_fhir.fhir.search.registry import compartment_types
from vitasync_fhir.fhir.search.service import outcome_entries
from vitasync_fhir.fhir.search.tables import resource_compartments, search_date
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
PARAMETERS = ("start", "end", "_since", "_type", "_count", "_cursor", "_format", "_pretty")
SIGNATURE = "$everything"
_ALL_REFERENCES = Include(None, None, None, False, False)
# The care dates of `start` and `end`: per type of the Patient compartment, its date search
# parameters that say when care happened (the occurrence, else the order or the record's clinical
# date), not when the record was written or changed. Types left out have none: Patient itself,
# Coverage, Group, RelatedPerson (a birthdate is no care date)...
CARE_DATES: dict[str, tuple[str, ...]] = {
    "Account": ("period",),
    "AdverseEvent": ("date",),
    "AllergyIntolerance": ("date", "onset", "last-date"),
    "Appointment": ("date",),
    "AuditEvent": ("date",),
    "Basic": ("created",),
    "CarePlan": ("date",),
    "CareTeam": ("date",),
    "ChargeItem": ("occurrence",),
    "Claim": ("created",),
    "ClaimResponse": ("created",),
    "ClinicalImpression": ("date",),
    "Communication": ("sent", "received"),
    "CommunicationRequest": ("occurrence", "authored"),
    "Composition": ("date", "period"),
    "Condition": ("onset-date", "recorded-date"),
    "Consent": ("date",),
    "CoverageEligibilityRequest": ("created",),
    "CoverageEligibilityResponse": ("created",),
    "DetectedIssue": ("identified",),
    "DeviceRequest": ("event-date", "authored-on"),
    "DiagnosticReport": ("date",),
    "DocumentManifest": ("created",),
    "DocumentReference": ("date", "period"),
    "Encounter": ("date",),
    "EpisodeOfCare": ("date",),
    "ExplanationOfBenefit": ("created",),
    "FamilyMemberHistory": ("date",),
    "Flag": ("date",),
    "Goal": ("start-date", "target-date"),
    "ImagingStudy": ("started",),
    "Immunization": ("date",),
    "ImmunizationEvaluation": ("date",),
    "ImmunizationRecommendation": ("date",),
    "Invoice": ("date",),
    "List": ("date",),
    "MeasureReport": ("date", "period"),
    "Media": ("created",),
    "MedicationAdministration": ("effective-time",),
    "MedicationDispense": ("whenhandedover", "whenprepared"),
    "MedicationRequest": ("authoredon",),
    "MedicationStatement": ("effective",),
    "NutritionOrder": ("datetime",),
    "Observation": ("date",),
    "Procedure": ("date",),
    "Provenance": ("when", "recorded"),
    "QuestionnaireResponse": ("authored",),
    "RequestGroup": ("authored",),
    "ResearchSubject": ("date",),
    "RiskAssessment": ("date",),
    "Schedule": ("date",),
    "ServiceRequest": ("occurrence", "authored"),
    "Specimen": ("collected",),
    "SupplyRequest": ("date",),
    "Task": ("period", "authored-on"),
    "VisionPrescription": ("datewritten",),
}


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


def care_range(pairs: list[tuple[str, str]]) -> tuple[DateValue, ...]:
    """What puts a care date out of `start` and `end`: ending before one, starting after the
    other (the search prefixes `eb` and `sa` against the dates as ranges at their precision)."""
    beyond = []
    for name, prefix in (("start", "eb"), ("end", "sa")):
        raw = _one(pairs, name)
        if raw is None:
            continue
        found = dates.parse_range(raw)
        if found is None:
            raise bad_request(f"Parameter {name}: {raw!r} is not a date", expression=name)
        beyond.append(DateValue(prefix, *found))
    return tuple(beyond)


def _in_care(
    table: FromClause, types: tuple[str, ...], beyond: tuple[DateValue, ...]
) -> ColumnElement[bool] | None:
    """`table`'s resource has no care date, or one that is not beyond the range."""
    pairs = [(t, code) for t in types for code in CARE_DATES.get(t, ())]
    if not pairs:
        return None

    def care_dates(d: FromClause, *where: ColumnElement[bool]) -> ColumnElement[bool]:
        return exists().where(
            d.c.resource_type == table.c.resource_type,
            d.c.resource_id == table.c.id,
            tuple_(d.c.resource_type, d.c.param).in_(pairs),
            *where,
        )

    d = search_date.alias()
    out = or_(*[query.date_clause(v, d.c.low, d.c.high) for v in beyond])
    return or_(~care_dates(search_date.alias()), care_dates(d, ~out))


def _matching(
    restrict: Restrict | None, beyond: tuple[DateValue, ...], *, anyone: bool
) -> Restrict | None:
    """The caller's restriction of the matches, narrowed to the care dates and (for the records
    of `anyone`) to resources in some patient's compartment."""
    if not beyond and not anyone:
        return restrict

    def clause(table, types):  # type: ignore[no-untyped-def]
        parts = [restrict(table, types) if restrict else None]
        if beyond:
            parts.append(_in_care(table, types, beyond))
        if anyone:
            rc = resource_compartments.alias()
            held = select(rc.c.resource_type, rc.c.resource_id).where(
                rc.c.compartment_type == "Patient"
            )
            parts.append(tuple_(table.c.resource_type, table.c.id).in_(held))
        kept = [p for p in parts if p is not None]
        return and_(*kept) if kept else None

    return clause


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
    patient_id: str | None,
    pairs: list[tuple[str, str]],
    *,
    shown: list[tuple[str, str]] | None = None,
) -> str:
    """One page of the record of Patient `patient_id` (of every patient the caller may see when
    None), as searchset Bundle JSON text; `shown` receives the (type, id) of its resources."""
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
    beyond = care_range(pairs)
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
            restrict=_matching(restrict, beyond, anyone=patient_id is None),
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
        if shown is not None:
            shown.extend(key for key in found if key[0] in matched)
            shown.extend((row.resource_type, row.id) for row in extra.rows)
        if extra.cut:
            issues = outcome_entries([_cut_issue(settings)])
    path = f"Patient/{patient_id}" if patient_id else "Patient"
    base = f"{settings.fhir_base}/{path}/$everything"
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


@router.get("/Patient/$everything")
async def patients_everything(request: Request, session: SessionDep, access: AccessDep) -> Response:
    """The records of every patient the caller may see (a patient: their own), paged."""
    return await _all_records(request, session, access, await _asked(request))


@router.post("/Patient/$everything")
async def patients_everything_post(
    request: Request, session: SessionDep, access: AccessDep
) -> Response:
    """The same, with the parameters in a Parameters body (or none): operations are POSTed."""
    return await _all_records(request, session, access, await _asked(request))


@router.get("/Patient/{patient_id}/$everything")
async def patient_everything(
    patient_id: str, request: Request, session: SessionDep, access: AccessDep
) -> Response:
    """The patient's record: their compartment and the resources it refers to, paged."""
    return await _everything(request, session, access, patient_id, await _asked(request))


@router.post("/Patient/{patient_id}/$everything")
async def patient_everything_post(
    patient_id: str, request: Request, session: SessionDep, access: AccessDep
) -> Response:
    """The same, with the parameters in a Parameters body (or none): operations are POSTed."""
    return await _everything(request, session, access, patient_id, await _asked(request))


async def _asked(request: Request) -> list[tuple[str, str]]:
    """The parameters of the query string, and of a POSTed Parameters body if any."""
    pairs = list(request.query_params.multi_items())
    if request.method == "POST":
        body = await request.body()
        if body.strip():
            require_json_body(request)
            pairs += _parameters(parse_json(body))
    return pairs


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


async def _all_records(
    request: Request, session: AsyncSession, access: Access, pairs: list[tuple[str, str]]
) -> Response:
    await access.require("Patient", "$everything")
    shown: list[tuple[str, str]] = []
    settings = request.app.state.settings
    body = await everything_page(session, settings, access, None, pairs, shown=shown)
    patients = []
    if shown and access.audits("Patient"):
        patients = await query.compartment_patients(session, shown, limit=AUDITED_PATIENTS)
    await access.audited(
        session,
        "operation",
        "Patient",
        query="$everything?" + urlencode(pairs),
        more=[("Patient", patient) for patient in patients],
    )
    return fhir_response(request, body)
