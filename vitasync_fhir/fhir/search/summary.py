"""`_summary` and `_elements`: the only reasons a search parses and re-serializes stored resources.

The kept elements come from the StructureDefinitions (`isSummary` and `min >= 1` of the top-level
elements, in data/elements.json). A trimmed resource carries the SUBSETTED tag, as the
specification asks.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from vitasync_fhir.fhir.search import registry
from vitasync_fhir.fhir.validation import choice_of

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "Resource encoded in summary mode",
}
_ALWAYS = ("resourceType", "id", "meta")


def _keep(resource: dict, resource_type: str, names: Iterable[str]) -> dict:
    """The elements of `resource` named in `names` (a choice by its name, `value` or `value[x]`,
    keeps whichever type the resource has), with the ones always kept; `_x` goes with `x`."""
    wanted = {name.removesuffix("[x]") for name in names} | set(_ALWAYS)
    out = {}
    for key, value in resource.items():
        plain = key[1:] if key.startswith("_") else key
        if plain in wanted or choice_of(resource_type, plain) in wanted:
            out[key] = value
    return out


def _tagged(resource: dict) -> dict:
    meta = dict(resource.get("meta") or {})
    tags = [t for t in meta.get("tag", []) if t.get("code") != "SUBSETTED"]
    meta["tag"] = [*tags, SUBSETTED]
    out = {"resourceType": resource.get("resourceType"), "id": resource.get("id"), "meta": meta}
    out.update({k: v for k, v in resource.items() if k not in out})
    return {k: v for k, v in out.items() if v is not None}


def trim(
    content: str, resource_type: str, *, summary: str | None, elements: list[str] | None
) -> str:
    """The stored JSON as served under `_summary` / `_elements` (unchanged when neither applies)."""
    if summary in (None, "false") and not elements:
        return content
    resource = orjson.loads(content)
    if summary == "true":
        resource = _keep(resource, resource_type, registry.summary_elements(resource_type))
    elif summary == "text":
        resource = _keep(
            resource, resource_type, ("text", *registry.mandatory_elements(resource_type))
        )
    elif summary == "data":
        resource = {k: v for k, v in resource.items() if k != "text"}
    elif elements:
        resource = _keep(
            resource, resource_type, (*elements, *registry.mandatory_elements(resource_type))
        )
    return orjson.dumps(_tagged(resource)).decode()
