"""The kick-off parameters of a Bulk Data $export, checked before any job exists.

Levels: `system` ([base]/$export), `patient` (Patient/$export: every patient's compartment) and
`group` (Group/[id]/$export: the compartments of the Group's active Patient members); the two
patient levels leave out AuditEvents unless `_type` names them. Supported:
`_outputFormat` (application/fhir+ndjson, application/ndjson, ndjson), `_type`, `_since` and
`_typeFilter` (`Type?search`, run through the search engine; several filters on one type are
OR'ed; a filter the search cannot run is refused here, never left to fail in the job). Anything
else is a 400, unless the client sent `Prefer: handling=lenient`: then it is ignored and reported
in the manifest's error[] file (an ignored filter exports its type unfiltered by it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from vitasync_fhir.auth import policy
from vitasync_fhir.auth.policy import Caller
from vitasync_fhir.fhir.models import resource_types
from vitasync_fhir.fhir.operations.everything import parse_since, record_types
from vitasync_fhir.fhir.outcomes import FhirError, Issue, bad_request
from vitasync_fhir.fhir.search.params import Query, parse_query, shapes_result
from vitasync_fhir.fhir.search.registry import compartment_types
from vitasync_fhir.fhir.service import instant

FORMATS = ("application/fhir+ndjson", "application/ndjson", "ndjson")
IGNORED = ("_format", "_pretty")
# A comma starts a new filter only before "Type?" (a filter's own query may hold commas).
_FILTER_SPLIT = re.compile(r",(?=[A-Z][A-Za-z]+\?)")


@dataclass
class ExportRequest:
    level: str
    types: list[str]
    since: str | None = None
    type_filters: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)  # group level: Patient ids

    def as_json(self) -> dict:
        return {
            "types": self.types,
            "since": self.since,
            "type_filters": self.type_filters,
            "warnings": self.warnings,
            "members": self.members,
        }


def _problem(
    lenient: bool, warnings: list[str], text: str, name: str, *, code: str = "invalid"
) -> None:
    if not lenient:
        raise FhirError(400, code, text, expression=name)
    warnings.append(text)


def parse_kickoff(
    pairs: list[tuple[str, str]], *, level: str, caller: Caller, lenient: bool, base: str
) -> ExportRequest:
    """The export asked for, or a 400 / 403 that says what is wrong with it."""
    warnings: list[str] = []
    named: list[str] = []
    filters: list[str] = []
    since = None
    for name, raw in pairs:
        if name == "_outputFormat":
            if raw not in FORMATS:
                raise bad_request(
                    f"_outputFormat {raw!r} is not supported; use {', '.join(FORMATS)}",
                    expression="_outputFormat",
                )
        elif name == "_type":
            named += [t.strip() for t in raw.split(",") if t.strip()]
        elif name == "_since":
            since = instant(parse_since(raw))
        elif name == "_typeFilter":
            filters += [f for f in _FILTER_SPLIT.split(raw) if f]
        elif name not in IGNORED:
            _problem(lenient, warnings, f"$export does not support parameter {name}", name)
    types = _types(named, level, caller, lenient, warnings)
    request = ExportRequest(level=level, types=types, since=since, warnings=warnings)
    for text in filters:
        _add_filter(request, text, lenient=lenient, base=base)
    return request


def _types(
    named: list[str], level: str, caller: Caller, lenient: bool, warnings: list[str]
) -> list[str]:
    everything = sorted(resource_types()) if level == "system" else list(compartment_types())
    if not named:
        default = everything if level == "system" else record_types()
        return [t for t in default if policy.allowed(caller, t, "$export")]
    chosen: list[str] = []
    for name in dict.fromkeys(named):
        if name not in resource_types():
            raise bad_request(f"_type: {name!r} is not a resource type", expression="_type")
        if name not in everything:
            text = f"_type: {name} resources are in no Patient compartment"
            _problem(lenient, warnings, text, "_type")
            continue
        if not policy.allowed(caller, name, "$export"):
            raise FhirError(403, "forbidden", f"Your role may not export {name} resources")
        chosen.append(name)
    return chosen


def filter_query(resource_type: str, query: str, *, base: str) -> Query:
    """The search of one `_typeFilter`, read as the search reads it; the kick-off checks every
    filter with this and the job runs what it returns, so a filter accepted is a filter that runs.
    400 for a parameter that does not select resources, and for a filter without criteria (it
    would select every resource of its type, and OR'ed with others make them void)."""
    pairs = parse_qsl(query, keep_blank_values=True)
    extra = [n for n, _ in pairs if shapes_result(n)]
    if extra:
        raise bad_request(f"{extra[0]} does not select resources", expression=extra[0])
    q = parse_query((resource_type,), pairs, base=base, max_count=1)
    if not q.criteria:
        raise bad_request("the filter has no search criteria")
    return q


def _add_filter(request: ExportRequest, text: str, *, lenient: bool, base: str) -> None:
    resource_type, mark, query = text.partition("?")
    if not mark or resource_type not in resource_types():
        raise bad_request(f"_typeFilter {text!r} is not Type?search", expression="_typeFilter")
    if resource_type not in request.types:
        text = f"_typeFilter {text!r}: {resource_type} resources are not exported"
        _problem(lenient, request.warnings, text, "_typeFilter")
        return
    try:
        filter_query(resource_type, query, base=base)
    except FhirError as error:
        issue: Issue = error.issues[0]
        text = f"_typeFilter {text!r}: {issue.diagnostics}"
        _problem(lenient, request.warnings, text, "_typeFilter", code=issue.code)
        return
    request.type_filters.setdefault(resource_type, []).append(query)
