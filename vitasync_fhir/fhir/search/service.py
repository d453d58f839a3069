"""Search rules: from the parameters of a request to the searchset Bundle, and the conditional
matches that create, update, delete and transactions rely on.

Totals: `_total=accurate` counts every match; `_total=estimate` asks PostgreSQL's planner (an exact
count on SQLite, and for a caller the access layer narrows the search for, since the planner's
statistics count every patient's records); by default (`none`) a Bundle has a total only when the
first page holds every match, since counting a large result costs as much as reading it. `_count=0`
and `_summary=count` answer the exact total alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from sqlalchemy.ext.asyncio import AsyncSession

from vitasync_fhir.auth.access import AUDITED_PATIENTS, Access
from vitasync_fhir.config import Settings
from vitasync_fhir.fhir.models import resource_types
from vitasync_fhir.fhir.outcomes import FhirError, Issue, outcome
from vitasync_fhir.fhir.responses import bundle, bundle_entry, dumps
from vitasync_fhir.fhir.search import paging, query
from vitasync_fhir.fhir.search.index import fhir_base
from vitasync_fhir.fhir.search.params import Include, Query, parse_query, shapes_result
from vitasync_fhir.fhir.search.query import Restrict, compartment_patients
from vitasync_fhir.fhir.search.summary import trim


@dataclass(frozen=True, slots=True)
class Search:
    """What a search request asks, once HTTP is peeled off."""

    types: tuple[str, ...]
    pairs: list[tuple[str, str]]
    path: str  # where the search lives below the FHIR base: "Patient", "", "Patient/1/Observation"
    lenient: bool = False
    system: bool = False
    compartment: str | None = None  # a Patient id: search inside that Patient's compartment


def check_type(resource_type: str) -> None:
    if resource_type not in resource_types():
        raise FhirError(404, "not-supported", f"Resource type {resource_type!r} is not supported")


def system_types(pairs: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    """The types a search across types covers: those of `_type`, else every type."""
    named = [
        t.strip() for name, raw in pairs if name == "_type" for t in raw.split(",") if t.strip()
    ]
    if not named:
        return tuple(sorted(resource_types()))
    unknown = [t for t in named if t not in resource_types()]
    if unknown:
        raise FhirError(
            400,
            "invalid",
            f"Parameter _type: {', '.join(unknown)} is not a resource type",
            expression="_type",
        )
    return tuple(dict.fromkeys(named))


def _signature(q: Query) -> str:
    return ",".join(("-" if k.descending else "") + k.param.code for k in q.sort) or "_id"


def _link(settings: Settings, path: str, pairs: Sequence[tuple[str, str]]) -> str:
    base = settings.fhir_base + ("/" + path if path else "")
    return base + ("?" + urlencode(list(pairs)) if pairs else "")


async def search_for(
    access: Access, session: AsyncSession, settings: Settings, request: Search, *, query: str | None
) -> str:
    """A search as a caller makes it, at the top level or in a Bundle entry: the role may search
    the type, AuditEvents wait for the trail, results are limited to what the caller may see,
    and the search is audited with its query text."""
    if len(request.types) == 1:
        await access.require(request.types[0], "search")
    await access.settle_audit(request.types)
    shown: list[tuple[str, str]] = []
    body = await search(session, settings, request, restrict=access.restriction(), shown=shown)
    action = "search-system" if request.system else "search-type"
    only = request.types[0] if len(request.types) == 1 else None
    # Whose data the page showed (matches and includes): the patients of their compartments,
    # so that the trail answers "who saw this patient's record" for searches too.
    patients = []
    if shown and access.audits(only):
        patients = await compartment_patients(session, shown, limit=AUDITED_PATIENTS)
    more = [("Patient", patient) for patient in patients]
    await access.audited(session, action, only, query=query or None, more=more)
    return body


async def search(
    session: AsyncSession,
    settings: Settings,
    request: Search,
    *,
    restrict: Restrict | None = None,
    shown: list[tuple[str, str]] | None = None,
) -> str:
    """The searchset Bundle of one page of a search, as JSON text; the (type, id) of each
    resource in it are added to `shown` when given."""
    q = parse_query(
        request.types,
        request.pairs,
        base=settings.fhir_base,
        max_count=settings.max_page_size,
        lenient=request.lenient,
        system=request.system,
    )
    count = settings.default_page_size if q.count is None else q.count
    issues = outcome_entries(q.ignored)
    self_link = ("self", _link(settings, request.path, q.used))
    if count == 0 or q.summary == "count":
        total = await query.count_matches(
            session, q.types, q.criteria, restrict=restrict, compartment=request.compartment
        )
        return bundle(bundle_type="searchset", entries=issues, total=total, links=[self_link])

    signature = _signature(q)
    position, reverse = None, False
    if q.cursor is not None:
        position, reverse = paging.decode(q.cursor, signature, query.sort_kinds(q.sort, q.types))
    page = await query.fetch_page(
        session,
        q.types,
        q.criteria,
        q.sort,
        count=count,
        position=position,
        reverse=reverse,
        restrict=restrict,
        compartment=request.compartment,
    )
    links = [self_link, *_page_links(settings, request.path, q, page, position, reverse)]
    total = await _total(
        session,
        q,
        request.compartment,
        restrict,
        complete=position is None and not page.more,
        shown=len(page.rows),
    )
    entries = [_entry(settings, row, q, "match") for row in page.rows]
    if shown is not None:
        shown.extend((row.resource_type, row.id) for row in page.rows)
    if q.includes and page.rows:
        found = [(row.resource_type, row.id) for row in page.rows]
        extra = await query.gather_included(
            session, found, q.includes, restrict=restrict, limit=settings.max_page_size
        )
        entries.extend(_entry(settings, row, q, "include") for row in extra.rows)
        if shown is not None:
            shown.extend((row.resource_type, row.id) for row in extra.rows)
        cut = [_cut_issue(include, why, settings) for include, why in extra.cut.items()]
        issues = outcome_entries([*q.ignored, *cut])
    return bundle(bundle_type="searchset", entries=[*entries, *issues], total=total, links=links)


def _page_links(
    settings: Settings, path: str, q: Query, page: query.Page, position: object, reverse: bool
) -> list[tuple[str, str]]:
    """first, previous and next: the query again with a cursor at the page's first or last row."""
    used = [(n, v) for n, v in q.used if n != "_cursor"]
    signature = _signature(q)
    links = [("first", _link(settings, path, used))] if position is not None else []
    if not page.rows:
        return links
    if (page.more and reverse) or (not reverse and position is not None):
        cursor = paging.encode(signature, _keys(page.rows[0]), previous=True)
        links.append(("previous", _link(settings, path, [*used, ("_cursor", cursor)])))
    if (page.more and not reverse) or (reverse and position is not None):
        cursor = paging.encode(signature, _keys(page.rows[-1]), previous=False)
        links.append(("next", _link(settings, path, [*used, ("_cursor", cursor)])))
    return links


def _keys(row: Sequence) -> list:
    return list(row[3:])


async def _total(
    session: AsyncSession,
    q: Query,
    compartment: str | None,
    restrict: Restrict | None,
    *,
    complete: bool,
    shown: int,
) -> int | None:
    if q.total in ("accurate", "estimate"):
        return await query.count_matches(
            session,
            q.types,
            q.criteria,
            restrict=restrict,
            compartment=compartment,
            estimate=q.total == "estimate",
        )
    if q.total is None and complete:
        return shown  # the first page holds every match: the total is known for free
    return None


def _entry(settings: Settings, row: Sequence, q: Query, mode: str) -> str:
    resource_type, resource_id, content = row[0], row[1], row[2]
    body = trim(content, resource_type, summary=q.summary, elements=q.elements)
    return bundle_entry(
        full_url=f"{settings.fhir_base}/{resource_type}/{resource_id}",
        resource=body,
        search_mode=mode,
    )


def outcome_entries(issues: Sequence[Issue]) -> list[str]:
    """One OperationOutcome entry (search.mode outcome) with every issue of the search, if any:
    parameters ignored in lenient handling, includes cut."""
    if not issues:
        return []
    return [bundle_entry(resource=dumps(outcome(issues)), search_mode="outcome")]


def _cut_issue(include: Include, why: str, settings: Settings) -> Issue:
    if why == "rounds":
        reason = f"iterating stops after {query.INCLUDE_ROUNDS} rounds"
    else:
        reason = f"a page includes at most {settings.max_page_size} resources"
    return Issue(
        "incomplete",
        f"{include.name}={include.value}: {reason}; the resources beyond are left out",
        severity="warning",
        expression=include.name,
    )


async def match_ids(
    session: AsyncSession,
    resource_type: str,
    query_string: str,
    *,
    limit: int = 2,
    restrict: Restrict | None = None,
) -> list[str]:
    """Ids of the current resources matching a search (conditional create/update/delete and
    conditional references). Strict: any unknown or malformed parameter is a 400."""
    check_type(resource_type)
    pairs = parse_qsl(query_string.lstrip("?"), keep_blank_values=True)
    extras = [name for name, _ in pairs if shapes_result(name)]
    if extras:
        raise FhirError(
            400,
            "invalid",
            f"Parameter {extras[0]} cannot select resources for a conditional interaction",
            expression=extras[0],
        )
    q = parse_query((resource_type,), pairs, base=fhir_base(session), max_count=limit)
    if not q.criteria:
        raise FhirError(400, "invalid", f"The condition {query_string!r} has no search criteria")
    return await query.match_ids(session, resource_type, q.criteria, limit=limit, restrict=restrict)


async def find(
    session: AsyncSession,
    settings: Settings,
    resource_type: str,
    pairs: list[tuple[str, str]],
    *,
    offset: int,
    limit: int,
    restrict: Restrict | None = None,
) -> tuple[list[str], int]:
    """The stored JSON of matches `offset` to `offset + limit`, and how many match in all.

    For callers inside the server (the /api lists) that page by number; FHIR clients page with
    the cursors of `search`.
    """
    q = parse_query((resource_type,), pairs, base=settings.fhir_base, max_count=offset + limit)
    page = await query.fetch_page(
        session,
        q.types,
        q.criteria,
        q.sort,
        count=offset + limit,
        position=None,
        reverse=False,
        restrict=restrict,
    )
    total = await query.count_matches(session, q.types, q.criteria, restrict=restrict)
    return [row.content for row in page.rows[offset:]], total
