"""The validator every write goes through: is this parsed JSON a valid FHIR R4 resource?

The R4B models (through fhir/models.py) check structure but coerce values ("active": "yes" becomes
true), accept any code and know R4B rather than R4. So the JSON is first walked with
definitions/r4-elements.json, a table extracted from the official R4 definitions by
definitions/build_definitions.py: JSON types, primitive formats, unknown elements, arrays, choice
types, required elements, required bindings, ids and references. The model then validates once;
its errors are kept where the walk found nothing at that place. Where the two disagree about which
elements exist or are required, the R4 table wins: R4B changed a few types (Evidence,
EvidenceVariable, ElementDefinition, Extension.valueMeta, ...).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from vitasync_fhir.fhir import models

log = logging.getLogger(__name__)

TABLE_PATH = Path(__file__).with_name("definitions") / "r4-elements.json"
# Both limits bound time and memory before the models build anything. The largest Synthea patient
# bundle (3.9 MB, 1,111 entries) holds 67,000 JSON values and nests 12 deep; one resource in it at
# most 365 values.
MAX_DEPTH = 64
MAX_ELEMENTS = 100_000
_MAX_STRING = 1024 * 1024  # datatypes.html#string: strings SHALL NOT exceed 1 MB
_DATE_TYPES = frozenset({"date", "dateTime", "instant"})
# datatypes.html#string: no characters below U+0020 except tab, CR and LF
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_ABSOLUTE_URL = re.compile(r"https?://[^\s/?#]+[^\s]*")
_RELATIVE_REFERENCE = re.compile(
    r"([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?"
)


@dataclass(frozen=True, slots=True)
class Problem:
    code: str  # issue type: structure, required, value, code-invalid, invalid or too-costly
    expression: str  # FHIRPath-style element path, e.g. "Patient.name[0].given[1]"
    diagnostics: str  # what is wrong and what was expected


def validate(
    resource: object,
    *,
    expected_type: str | None = None,
    max_depth: int = MAX_DEPTH,
    max_elements: int = MAX_ELEMENTS,
) -> list[Problem]:
    """Every problem found in `resource` (parsed JSON). Empty list means valid."""
    walk = _Walk(_table(), max_depth=max_depth, max_elements=max_elements)
    try:
        resource_type = walk.root(resource, expected_type=expected_type)
    except _TooCostly as exc:
        return [Problem("too-costly", exc.path, exc.reason)]
    except Exception:  # a bug here must not break the write path; the log shows it
        log.exception("validation walk failed")
        return [Problem("invalid", expected_type or "Resource", "The resource could not be read.")]
    if resource_type is None:
        return walk.problems
    return walk.problems + _model_problems(resource, resource_type, walk.problems)


def single_valued(resource_type: str, path: str) -> bool:
    """Whether the dotted element `path` (e.g. "period", "subject") of `resource_type` holds one
    value at most: no step of it repeats. False when a step is unknown."""
    types = _table().types
    current = types.get(resource_type)
    steps = path.split(".")
    for n, step in enumerate(steps):
        elements = current.elements if current is not None else {}
        spec = elements.get(step)
        if spec is None:  # a choice, effective[x]: never repeats, but its type is open
            choice = any(
                k.startswith(step) and k[len(step) : len(step) + 1].isupper() for k in elements
            )
            return choice and n == len(steps) - 1
        if spec.many:
            return False
        current = types.get(spec.type)
    return True


def choice_of(resource_type: str, name: str) -> str | None:
    """The choice element `name` is one type of ("value" for "valueQuantity"), or None."""
    current = _table().types.get(resource_type)
    spec = current.elements.get(name) if current is not None else None
    return spec.group if spec is not None and spec.group else None


def choice_siblings(resource_type: str, name: str) -> tuple[str, ...]:
    """The other elements of the choice that `name` (e.g. "effectiveDateTime") is one type of, in
    `resource_type`: ("effectivePeriod", "effectiveTiming", ...); empty when it is no choice."""
    current = _table().types.get(resource_type)
    spec = current.elements.get(name) if current is not None else None
    if current is None or spec is None or not spec.group:
        return ()
    return tuple(k for k, s in current.elements.items() if s.group == spec.group and k != name)


def code_binding(owner: str, key: str) -> dict[str, frozenset[str]] | None:
    """The codes, per code system, of the required binding of the `code` element `key` of
    `owner` (a type or backbone path); None for another element or no such binding. Search reads
    a `code` element's implicit system from it (search/bindings.py)."""
    current = _table().types.get(owner)
    spec = current.elements.get(key) if current is not None else None
    if spec is None or spec.type != "code":
        return None
    return spec.systems


# -- the R4 table -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Primitive:
    name: str
    json: str  # boolean, integer, decimal or string
    pattern: re.Pattern[str] | None
    low: int | None
    high: int | None


@dataclass(frozen=True, slots=True)
class _Spec:
    type: str
    many: bool
    group: str
    primitive: _Primitive | None
    codes: frozenset[str] | None  # required binding of a code, any system
    systems: dict[str, frozenset[str]] | None  # required binding of a Coding, per system
    valueset: str  # the bound value set's url, for messages


@dataclass(frozen=True, slots=True)
class _Type:
    name: str
    elements: dict[str, _Spec]
    required: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Table:
    types: dict[str, _Type]
    resources: frozenset[str]
    primitives: dict[str, _Primitive]


@cache
def _table() -> _Table:
    raw = orjson.loads(TABLE_PATH.read_bytes())
    primitives = {
        name: _Primitive(
            name, p["json"], _compile(p["regex"]) if p["regex"] else None, p["min"], p["max"]
        )
        for name, p in raw["primitives"].items()
    }
    valuesets = []
    for vs in raw["valuesets"]:
        systems = {system: frozenset(codes) for system, codes in vs["codes"].items()}
        valuesets.append((vs["url"], systems, frozenset().union(*systems.values())))

    def spec(code: str, many: int, group: str, valueset: int) -> _Spec:
        if valueset < 0:
            return _Spec(code, bool(many), group, primitives.get(code), None, None, "")
        url, systems, codes = valuesets[valueset]
        return _Spec(code, bool(many), group, primitives.get(code), codes, systems, url)

    types = {
        name: _Type(
            name,
            {key: spec(*entry) for key, entry in t["elements"].items()},
            tuple(t["required"]),
        )
        for name, t in raw["types"].items()
    }
    resources = frozenset(raw["resources"]) & models.resource_types()
    return _Table(types, resources, primitives)


def _compile(regex: str) -> re.Pattern[str]:
    # The definitions' regexes are XML Schema ones, whose \s is only space, tab, CR and LF: with
    # re.ASCII, \S also matches a no-break space and other Unicode spaces, as it should.
    return re.compile(regex, re.ASCII)


# -- the walk -----------------------------------------------------------------------------------


class _TooCostly(Exception):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(reason)
        self.path = path
        self.reason = reason


class _Walk:
    """One pass over the JSON, collecting problems; depth and size are bounded."""

    def __init__(self, table: _Table, *, max_depth: int, max_elements: int) -> None:
        self.table = table
        self.max_depth = max_depth
        self.budget = max_elements
        self.problems: list[Problem] = []

    def problem(self, code: str, expression: str, diagnostics: str) -> None:
        self.problems.append(Problem(code, expression, diagnostics))

    def root(self, value: object, *, expected_type: str | None) -> str | None:
        """Walk a top-level resource; its type if the models should validate it too."""
        if type(value) is not dict:
            self.problem(
                "invalid",
                expected_type or "Resource",
                f"A resource must be a JSON object, not {_json_name(value)}.",
            )
            return None
        resource_type = value.get("resourceType")
        if expected_type is not None and resource_type != expected_type:
            self.problem(
                "invalid",
                "resourceType",
                f"Expected resourceType {expected_type!r}, got {resource_type!r}.",
            )
        if not self.resource(value, "", depth=1):
            return None
        return resource_type

    def resource(self, value: dict[str, Any], path: str, *, depth: int) -> bool:
        """Walk a resource at `path` ("" for the top); False if its type is not R4."""
        resource_type = value.get("resourceType")
        where = f"{path}.resourceType" if path else "resourceType"
        if resource_type is None:
            self.problem("invalid", where, "resourceType is missing; it names the resource type.")
        elif type(resource_type) is not str or resource_type not in self.table.resources:
            self.problem(
                "invalid",
                where,
                f"{resource_type!r} is not a FHIR R4 resource type that this server stores.",
            )
        else:
            of = self.table.types[resource_type]
            self.members(value, of, path or resource_type, depth, is_resource=True, bare=True)
            return True
        self.measure(value, path or "Resource", depth)
        return False

    def members(
        self,
        value: dict[str, Any],
        of: _Type,
        path: str,
        depth: int,
        *,
        is_resource: bool = False,
        bare: bool = False,
    ) -> None:
        """Walk an object of type `of`; `bare` if an id alone is enough (ele-1)."""
        if depth > self.max_depth:
            raise _TooCostly(path, f"Nesting deeper than {self.max_depth} levels is refused.")
        if not value or (not bare and value.keys() == {"id"}):
            self.problem("structure", path, "An element must have a value or child elements.")
        elements = of.elements
        groups: dict[str, str] = {}
        for key, item in value.items():
            self.spend(path)
            spec = elements.get(key)
            if spec is not None:
                self.element(spec, item, f"{path}.{key}", depth, value.get("_" + key))
            elif is_resource and key == "resourceType":
                continue
            elif type(key) is str and key[:1] == "_":
                spec = elements.get(key[1:])
                self.sibling(spec, key, item, path, depth, value.get(key[1:]))
            else:
                self.problem("structure", f"{path}.{key}", f"Unknown element '{key}' in {of.name}.")
                self.measure(item, f"{path}.{key}", depth + 1)
            if spec is not None and spec.group:
                self.choice(spec.group, key.removeprefix("_"), groups, path)
        self.required(of, value, groups, path)

    def element(self, spec: _Spec, value: object, path: str, depth: int, sibling: object) -> None:
        if not spec.many:
            if type(value) is list:
                self.problem("structure", path, "Must be a single value, not an array.")
                self.measure(value, path, depth + 1)
            else:
                self.value(spec, value, path, depth)
            return
        if type(value) is not list:
            self.problem("structure", path, f"Must be an array, not {_json_name(value)}.")
            self.measure(value, path, depth + 1)
            return
        if not value:
            self.problem("structure", path, "Arrays must not be empty; leave the element out.")
        aligned = sibling if type(sibling) is list and len(sibling) == len(value) else None
        for index, item in enumerate(value):
            if item is None and aligned is not None and aligned[index] is not None:
                continue  # no value, only the id or extensions in the _element sibling
            self.spend(path)
            self.value(spec, item, f"{path}[{index}]", depth + 1)

    def value(self, spec: _Spec, value: object, path: str, depth: int) -> None:
        if value is None:
            self.problem("structure", path, "null is not allowed; leave the element out.")
        elif spec.primitive is not None:
            self.primitive(spec, spec.primitive, value, path)
            if type(value) is dict or type(value) is list:
                self.measure(value, path, depth + 1)
        elif type(value) is not dict:
            self.problem("structure", path, f"Must be a {spec.type}, not {_json_name(value)}.")
            self.measure(value, path, depth + 1)
        elif spec.type == "Resource":
            if "contained" in value and path.rpartition(".")[2].startswith("contained["):
                self.problem(
                    "structure",
                    f"{path}.contained",
                    "Contained resources SHALL NOT "
                    "contain resources themselves (dom-2); list them all at the top.",
                )
            self.resource(value, path, depth=depth + 1)
        else:
            self.members(value, self.table.types[spec.type], path, depth + 1)
            if spec.systems is not None:
                self.codings(spec, value, path)
            if spec.type == "Reference":
                self.reference(value.get("reference"), f"{path}.reference")
            elif spec.type == "Period":
                self.period(value, path)

    def primitive(self, spec: _Spec, of: _Primitive, value: object, path: str) -> None:
        problem = _primitive_problem(of, value)
        if problem is not None:
            self.problem("value", path, problem)
        elif spec.codes is not None and value not in spec.codes:
            self.problem("code-invalid", path, _not_in(value, spec.valueset, spec.codes))

    def sibling(
        self, spec: _Spec | None, key: str, value: object, path: str, depth: int, values: object
    ) -> None:
        """The `_name` sibling of a primitive holds its id and extensions (json.html#primitive)."""
        here, named = f"{path}.{key}", f"{path}.{key[1:]}"
        if spec is None or spec.primitive is None:
            self.problem("structure", here, f"Unknown element '{key}'.")
        elif not spec.many and type(value) is dict:
            element = self.table.types["Element"]
            self.members(value, element, named, depth + 1, bare=values is not None)
            return
        elif not spec.many:
            self.problem("structure", here, "Must be an object with id or extension.")
        elif type(value) is list and value:
            self.siblings(value, values, here, named, depth)
            return
        else:
            self.problem("structure", here, "Must be a non-empty array, with null where empty.")
        self.measure(value, named, depth + 1)

    def siblings(
        self, value: list[object], values: object, here: str, named: str, depth: int
    ) -> None:
        paired = values if type(values) is list else []
        if values is not None and len(paired) != len(value):
            self.problem(
                "structure",
                here,
                f"Must have one entry per entry of {named}, with null where there is nothing.",
            )
        element = self.table.types["Element"]
        for index, item in enumerate(value):
            self.spend(here)
            if type(item) is dict:
                has_value = index < len(paired) and paired[index] is not None
                self.members(item, element, f"{named}[{index}]", depth + 2, bare=has_value)
            elif item is not None or values is None:
                self.problem("structure", f"{here}[{index}]", "Must be an object or null.")
                self.measure(item, here, depth + 2)

    def choice(self, group: str, key: str, groups: dict[str, str], path: str) -> None:
        first = groups.setdefault(group, key)
        if first != key:
            self.problem(
                "structure",
                f"{path}.{group}",
                f"Only one of the {group}[x] elements is allowed, found {first} and {key}.",
            )

    def required(self, of: _Type, value: dict[str, Any], groups: dict[str, str], path: str) -> None:
        for name in of.required:
            if name in value or "_" + name in value or name in groups:
                continue
            self.problem("required", f"{path}.{name}", f"{of.name}.{name} is required (min 1).")

    def codings(self, spec: _Spec, value: dict[str, Any], path: str) -> None:
        """Required binding of a Coding or CodeableConcept: check codings of the bound systems."""
        if spec.type == "Coding":
            pairs = [(value, f"{path}.code")]
        else:
            codings = value.get("coding")
            if type(codings) is not list:
                return
            pairs = [(c, f"{path}.coding[{i}].code") for i, c in enumerate(codings)]
        assert spec.systems is not None
        for coding, where in pairs:
            if type(coding) is not dict:
                continue
            allowed = spec.systems.get(coding.get("system"))  # type: ignore[arg-type]
            code = coding.get("code")
            if allowed is not None and type(code) is str and code not in allowed:
                self.problem("code-invalid", where, _not_in(code, spec.valueset, allowed))

    def reference(self, reference: object, path: str) -> None:
        if type(reference) is not str or not reference.strip():
            return  # a wrong type or an empty string is reported as a string problem
        if not self.reference_ok(reference):
            self.problem(
                "value",
                path,
                f"{reference!r} is not a reference: expected Type/id, Type/id/_history/vid, "
                "an http(s) URL, #contained-id, urn:uuid:<uuid> or urn:oid:<oid>.",
            )

    def reference_ok(self, reference: str) -> bool:
        primitives = self.table.primitives
        if reference[0] == "#":
            return reference == "#" or _full(primitives["id"], reference[1:])
        if reference.startswith("urn:uuid:"):
            return _full(primitives["uuid"], reference)
        if reference.startswith("urn:oid:"):
            return _full(primitives["oid"], reference)
        if reference.startswith(("http://", "https://")):
            return _ABSOLUTE_URL.fullmatch(reference) is not None
        match = _RELATIVE_REFERENCE.fullmatch(reference)
        return match is not None and match[1] in self.table.resources

    def period(self, value: dict[str, Any], path: str) -> None:
        """per-1 (datatypes.html#Period): start SHALL NOT be after end. A partial date stands for
        its whole span, so only a start that begins after the end's span ends is refused."""
        start, end = _span(value.get("start")), _span(value.get("end"))
        if start is None or end is None:
            return  # absent or malformed: the primitive check has said so
        (first, _), (_, last) = start, end
        if (first.tzinfo is None) != (last.tzinfo is None):  # a bare date lies in some zone
            first = _zoned(first, _EARLIEST_DAY)
            last = _zoned(last, _LATEST_DAY)
        if first >= last:
            self.problem(
                "invariant",
                path,
                f"Period start {value['start']!r} is after its end {value['end']!r} (per-1).",
            )

    def spend(self, path: str) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise _TooCostly(path, "The resource has too many elements to validate.")

    def measure(self, value: object, path: str, depth: int) -> None:
        """Charge depth and size for a value the walk does not descend into."""
        stack = [(value, depth)]
        while stack:
            item, level = stack.pop()
            children: Iterable[object]
            if type(item) is dict:
                children = item.values()
            elif type(item) is list:
                children = item
            else:
                continue
            if level > self.max_depth:
                raise _TooCostly(path, f"Nesting deeper than {self.max_depth} levels is refused.")
            for child in children:
                self.spend(path)
                stack.append((child, level + 1))


# -- primitives ---------------------------------------------------------------------------------


def _primitive_problem(of: _Primitive, value: object) -> str | None:
    """What is wrong with `value` as the JSON form of primitive type `of`, or None."""
    kind = of.json
    if kind == "string":
        if type(value) is not str:
            return f"Must be a JSON string ({of.name}), not {_json_name(value)}."
        if not value.strip():
            return "Must not be empty or only whitespace; leave the element out."
        if len(value) > _MAX_STRING and of.name != "base64Binary":
            return "Strings must not exceed 1 MB."
        if _CONTROL.search(value) is not None:
            return "Must not contain control characters other than tab, CR and LF."
        if of.pattern is not None and of.pattern.fullmatch(value) is None:
            return f"{_shorten(value)!r} is not a valid {of.name}."
        if of.name in _DATE_TYPES and len(value) >= 10 and not _real_date(value):
            return f"{value[:10]!r} is not a calendar date."
        return None
    if kind == "boolean":
        return None if type(value) is bool else f"Must be true or false, not {_json_name(value)}."
    if kind == "decimal":
        if type(value) in (int, float):
            return None
        return f"Must be a JSON number, not {_json_name(value)}."
    if type(value) is not int:
        return f"Must be a JSON integer ({of.name}), not {_json_name(value)}."
    assert of.low is not None and of.high is not None
    if not of.low <= value <= of.high:
        return f"{value} is outside the range of {of.name} ({of.low}..{of.high})."
    return None


def _real_date(value: str) -> bool:
    try:
        date(int(value[0:4]), int(value[5:7]), int(value[8:10]))
    except ValueError:
        return False
    return True


# A date without a time has no zone: its day begins earliest at UTC+14:00, ends latest at UTC-12:00.
_EARLIEST_DAY = timezone(timedelta(hours=14))
_LATEST_DAY = timezone(timedelta(hours=-12))


def _span(value: object) -> tuple[datetime, datetime] | None:
    """When a date or dateTime begins and ends at its precision (the end exclusive): naive for a
    date, aware for a time (FHIR gives a time with its zone); None when it is neither."""
    if type(value) is not str:
        return None
    try:
        if "T" in value:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            # A fraction is precise enough to count as a point.
            step = timedelta(microseconds=1) if "." in value else timedelta(seconds=1)
            return moment, moment + step
        parts = [int(p) for p in value.split("-")]
        year, month, day = (parts + [1, 1])[:3]
        start = datetime(year, month, day)
        if len(parts) == 1:
            return start, start.replace(year=year + 1)
        if len(parts) == 2:
            return start, start.replace(year=year + month // 12, month=month % 12 + 1)
        return start, start + timedelta(days=1)
    except (ValueError, OverflowError):
        return None


def _zoned(moment: datetime, zone: timezone) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)


def _full(of: _Primitive, value: str) -> bool:
    return of.pattern is not None and of.pattern.fullmatch(value) is not None


def _json_name(value: object) -> str:
    if value is None:
        return "null"
    if type(value) is bool:
        return f"the boolean {str(value).lower()}"
    if type(value) in (int, float):
        return f"the number {value}"
    if type(value) is str:
        return f"the string {_shorten(value)!r}"
    if type(value) is list:
        return "an array"
    if type(value) is dict:
        return "an object"
    return type(value).__name__


def _shorten(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


def _not_in(code: object, valueset: str, codes: frozenset[str]) -> str:
    listed = sorted(codes)
    shown = ", ".join(listed[:12]) + (", ..." if len(listed) > 12 else "")
    where = valueset if valueset.startswith("http") else "the required value set"
    return f"{code!r} is not in {where} ({shown})."


# -- the models ---------------------------------------------------------------------------------


# The R4 table decides which elements exist and which are required; R4B differs there.
_STRUCTURAL_ERRORS = ("extra_forbidden", "missing")


def _model_problems(resource: object, resource_type: str, found: list[Problem]) -> list[Problem]:
    """Errors of the R4B model that the walk did not already report at or around that place."""
    try:
        models.model_for(resource_type).model_validate(resource)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
    except Exception as exc:  # a model bug must not break the write path
        log.warning("the %s model failed: %r", resource_type, exc)
        return [Problem("invalid", resource_type, f"The {resource_type} model rejected it.")]
    else:
        return []
    problems = []
    for error in errors:
        if error["type"].endswith(_STRUCTURAL_ERRORS):
            continue
        path = _loc_path(resource_type, error["loc"])
        if any(_related(path, p.expression) for p in found):
            continue
        code = "structure" if error["type"].endswith("_type") else "value"
        problems.append(Problem(code, path, error["msg"].rstrip(".") + "."))
    return problems


def _loc_path(root: str, loc: tuple[int | str, ...]) -> str:
    parts = [root]
    for part in loc:
        if type(part) is int:
            parts.append(f"[{part}]")
        elif str(part).replace("_", "").isalnum():  # skips pydantic's validator tags
            parts.append(f".{part}")
    return "".join(parts)


def _related(path: str, other: str) -> bool:
    """Whether one path is the other or inside it."""
    short, long = sorted((path, other), key=len)
    return long == short or long.startswith((short + ".", short + "["))
