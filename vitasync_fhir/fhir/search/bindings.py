"""The implicit code systems of `code` elements, for token searches written `system|code`.

A `code` element carries no system: R4 search (token, data type `code`) says its system is the
one of the value set it is bound to. The index stores such values with no system, so a query's
system is checked here instead, against the element's required binding in the validator's R4
table (validation.code_binding: the codes of each bound value set per code system). Nothing
is reindexed for it, and nothing but the table decides it.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from types import MappingProxyType

from vitasync_fhir.fhir import validation
from vitasync_fhir.fhir.search import fhirpath, registry

Implicit = Mapping[str, frozenset[str]]  # code -> the code systems it is a code of
NONE: Implicit = MappingProxyType({})


@cache
def _bound_codes(owner: str, key: str) -> Implicit:
    """code -> its code systems, for one `code` element with a required binding (the validator's
    table, turned around)."""
    systems = validation.code_binding(owner, key)
    if not systems:
        return NONE
    codes: dict[str, set[str]] = {}
    for system, listed in systems.items():
        for code in listed:
            codes.setdefault(code, set()).add(system)
    return MappingProxyType({c: frozenset(s) for c, s in codes.items()})


def _code_elements(part: str) -> list[tuple[str, str]]:
    """(owner, json key) of the `code` elements one alternative of an expression ends on."""
    steps = fhirpath.parse_steps(part)
    elements = registry.elements()
    last = max((n for n, s in enumerate(steps) if s[0] == "field"), default=0)
    if last == 0 or not steps[0][1][:1].isupper():
        return []
    ending = fhirpath.type_steps(steps, steps[0][1], elements)
    if not any(kind == "code" for _, kind, _ in ending):
        return []
    name = steps[last][1]
    out = []
    for _, _, owner in fhirpath.type_steps(steps[:last], steps[0][1], elements):
        if "code" in elements.get(f"{owner}.{name}", ()):
            out.append((owner, name))
        elif "code" in elements.get(f"{owner}.{name}[x]", ()):
            out.append((owner, f"{name}Code"))
    return out


@cache
def implicit_systems(url: str, types: tuple[str, ...] = ()) -> Implicit:
    """code -> its implicit code systems, over the bound `code` elements that the search
    parameter `url` indexes in resources of `types` (all when empty): empty when it indexes
    none, or only through fhirpathpy. Per type, because one definition may end on a `code` in
    one type and on a CodeableConcept in another (`type`: AllergyIntolerance.type | ...)."""
    param = registry.by_url().get(url)
    if param is None or param.type != "token":
        return NONE
    found: dict[str, set[str]] = {}
    for part in fhirpath.split_union(param.expression):
        if types and not any(fhirpath.part_applies(part, t) for t in types):
            continue
        try:
            elements = _code_elements(part)
        except fhirpath.Unsupported:
            continue
        for element in elements:
            for code, systems in _bound_codes(*element).items():
                found.setdefault(code, set()).update(systems)
    if not found:
        return NONE
    return MappingProxyType({c: frozenset(s) for c, s in found.items()})
