"""The search parameters of every stored type, read from the official definitions in `data/`.

Nothing here is a list per type written by hand: a type's parameters are the definitions whose
base is that type, Resource or (for domain resources) DomainResource. `_id` and `_lastUpdated` are
answered from the `resources` table itself; the definitions without an expression (`_text`,
`_content`, `_query`) are not offered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from vitasync_fhir.fhir.models import resource_types

DATA = Path(__file__).resolve().parent / "data"
COLUMN_PARAMS = frozenset({"_id", "_lastUpdated"})
# Resources that are not DomainResources, so DomainResource parameters do not apply.
_NOT_DOMAIN = frozenset({"Binary", "Bundle", "Parameters"})
# Definitions whose expression selects a whole resource, not a value: Bundle's `composition`
# and `message` (Bundle.entry[0].resource) exist only for chaining into the entry, which the
# engine does not do. Not offered (a search with them is a 400), rather than never matching.
_NOT_OFFERED = frozenset(
    {
        "http://hl7.org/fhir/SearchParameter/Bundle-composition",
        "http://hl7.org/fhir/SearchParameter/Bundle-message",
    }
)


@dataclass(frozen=True, slots=True)
class SearchParam:
    code: str
    type: str
    url: str
    expression: str
    targets: tuple[str, ...] = ()
    components: tuple[tuple[str, str], ...] = ()  # (definition url, expression)


@cache
def _definitions() -> list[dict]:
    return json.loads((DATA / "search-parameters.json").read_text())


@cache
def elements() -> dict[str, list[str]]:
    return json.loads((DATA / "elements.json").read_text())["types"]


@cache
def _summaries() -> dict[str, dict[str, list[str]]]:
    data = json.loads((DATA / "elements.json").read_text())
    return {"summary": data["summary"], "mandatory": data["mandatory"]}


def summary_elements(resource_type: str) -> tuple[str, ...]:
    return tuple(_summaries()["summary"].get(resource_type, ()))


def mandatory_elements(resource_type: str) -> tuple[str, ...]:
    return tuple(_summaries()["mandatory"].get(resource_type, ()))


def _param(definition: dict) -> SearchParam:
    return SearchParam(
        code=definition["code"],
        type=definition["type"],
        url=definition["url"],
        expression=definition.get("expression", ""),
        targets=tuple(definition.get("target", ())),
        components=tuple(
            (c["definition"], c["expression"]) for c in definition.get("component", ())
        ),
    )


@cache
def by_url() -> dict[str, SearchParam]:
    return {d["url"]: _param(d) for d in _definitions()}


@cache
def params_for(resource_type: str) -> dict[str, SearchParam]:
    """code -> parameter, for one resource type (empty for unknown types)."""
    if resource_type not in resource_types():
        return {}
    bases = {resource_type, "Resource"}
    if resource_type not in _NOT_DOMAIN:
        bases.add("DomainResource")
    out: dict[str, SearchParam] = {}
    for definition in _definitions():
        if not definition.get("expression") or not bases.intersection(definition["base"]):
            continue
        if definition["url"] in _NOT_OFFERED:
            continue
        # A type's own definition wins over a common one with the same code.
        if definition["code"] in out and resource_type not in definition["base"]:
            continue
        out[definition["code"]] = _param(definition)
    return out


def includes(resource_type: str) -> list[str]:
    """`searchInclude` of the CapabilityStatement: `Type:param` for each reference parameter."""
    found = [
        f"{resource_type}:{p.code}"
        for p in params_for(resource_type).values()
        if p.type == "reference"
    ]
    return ["*", *sorted(found)] if found else []


@cache
def _reverse_includes() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    everything = len(resource_types())
    for source in sorted(resource_types()):
        for p in params_for(source).values():
            # A reference to any type (derived-from, composed-of...: 80 of them) is served too,
            # but listing it on all 128 types would make the statement 660 kB instead of 390.
            if p.type == "reference" and len(p.targets) < everything - 1:
                for target in p.targets:
                    out.setdefault(target, []).append(f"{source}:{p.code}")
    return out


def reverse_includes(resource_type: str) -> list[str]:
    """`searchRevInclude`: `Source:param` for each reference parameter that names this type
    among its targets (those to any type work too, unlisted)."""
    return sorted(_reverse_includes().get(resource_type, []))


def param(resource_type: str, code: str) -> SearchParam | None:
    return params_for(resource_type).get(code)


@cache
def common_params() -> dict[str, SearchParam]:
    """The parameters every type has (base Resource): the only ones for searches across types."""
    return {
        d["code"]: _param(d)
        for d in _definitions()
        if "Resource" in d["base"] and d.get("expression")
    }


@cache
def compartment_params(resource_type: str) -> tuple[str, ...]:
    """The parameters that put a resource in a Patient compartment."""
    table = json.loads((DATA / "compartment-patient.json").read_text())
    return tuple(table.get(resource_type, ()))


@cache
def compartment_types() -> tuple[str, ...]:
    table = json.loads((DATA / "compartment-patient.json").read_text())
    return tuple(sorted(set(table) | {"Patient"}))


def search_parameters(resource_type: str) -> list[dict]:
    """The CapabilityStatement's searchParam entries for one type."""
    return [
        {"name": p.code, "type": p.type, "definition": p.url}
        for p in sorted(params_for(resource_type).values(), key=lambda p: p.code)
        if p.type != "special"  # `near` (Location) is not searchable here
    ]
