"""`_summary` and `_elements`: the only reasons a search parses and re-serializes stored resources.

The kept elements come from the StructureDefinitions (`isSummary` and `min >= 1` of the top-level
elements, in data/elements.json). A trimmed resource carries the SUBSETTED tag, as the
specification asks.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from vitasync_fhir.fhir.search import registry

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "Resource encoded in summary mode",
}
_ALWAYS = ("resourceType", "id", "meta")
# The types a choice element's name can end in: `value` is `valueQuantity`, `valueString`, ...
_CHOICE_TYPES = frozenset(
    {
        "Base64Binary",
        "Boolean",
        "Canonical",
        "Code",
        "Date",
        "DateTime",
        "Decimal",
        "Id",
        "Instant",
        "Integer",
        "Markdown",
        "Oid",
        "PositiveInt",
        "String",
        "Time",
        "UnsignedInt",
        "Uri",
        "Url",
        "Uuid",
        "Address",
        "Age",
        "Annotation",
        "Attachment",
        "CodeableConcept",
        "Coding",
        "ContactPoint",
        "Count",
        "Distance",
        "Duration",
        "HumanName",
        "Identifier",
        "Money",
        "Period",
        "Quantity",
        "Range",
        "Ratio",
        "Reference",
        "SampledData",
        "Signature",
        "Timing",
        "ContactDetail",
        "Contributor",
        "DataRequirement",
        "Expression",
        "ParameterDefinition",
        "RelatedArtifact",
        "TriggerDefinition",
        "UsageContext",
        "Dosage",
        "Meta",
    }
)


def _matches(key: str, names: Iterable[str]) -> bool:
    plain = key[1:] if key.startswith("_") else key
    for name in names:
        stem = name.removesuffix("[x]")
        if plain == stem or (plain.startswith(stem) and plain[len(stem) :] in _CHOICE_TYPES):
            return True
    return False


def _keep(resource: dict, names: Iterable[str]) -> dict:
    wanted = set(names) | set(_ALWAYS)
    return {k: v for k, v in resource.items() if _matches(k, wanted)}


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
        resource = _keep(resource, registry.summary_elements(resource_type))
    elif summary == "text":
        resource = _keep(resource, ("text", *registry.mandatory_elements(resource_type)))
    elif summary == "data":
        resource = {k: v for k, v in resource.items() if k != "text"}
    elif elements:
        resource = _keep(resource, (*elements, *registry.mandatory_elements(resource_type)))
    return orjson.dumps(_tagged(resource)).decode()
