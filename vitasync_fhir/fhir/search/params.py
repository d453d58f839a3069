"""Reading a search query: parameter names, modifiers, prefixes and values, checked against the
definitions of the searched types.

Every problem is a 400 naming the parameter. In lenient handling (`Prefer: handling=lenient`)
unknown or unusable parameters are dropped instead and listed in `Query.ignored`.

Escaping follows the specification: `\\,` `\\$` `\\|` and `\\\\` stand for the character itself, an
unescaped `,` separates alternatives (OR), `$` the parts of a composite value and `|` the system
and code of a token or the parts of a quantity.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from vitasync_fhir.fhir.models import resource_types
from vitasync_fhir.fhir.outcomes import FhirError, Issue
from vitasync_fhir.fhir.search import registry
from vitasync_fhir.fhir.search.dates import parse_range
from vitasync_fhir.fhir.search.registry import SearchParam
from vitasync_fhir.fhir.search.values import local_reference

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
ORDERED_TYPES = frozenset({"number", "date", "quantity"})
SORTABLE_TYPES = frozenset({"string", "token", "date", "number", "quantity", "uri", "reference"})
RESULT_PARAMS = frozenset(
    {
        "_count",
        "_sort",
        "_include",
        "_revinclude",
        "_summary",
        "_elements",
        "_total",
        "_contained",
        "_containedType",
        "_format",
        "_pretty",
        "_cursor",
        "_type",
    }
)


def shapes_result(name: str) -> bool:
    """Whether a parameter shapes the result (paging, includes, summaries) instead of selecting
    resources: `_include:iterate` as much as `_include`. `_format` and `_pretty` shape only the
    HTTP answer: every search ignores them."""
    base = name.partition(":")[0]
    return base in RESULT_PARAMS and base not in ("_format", "_pretty")


_MODIFIERS = {
    "string": {"exact", "contains", "missing"},
    "token": {"not", "text", "of-type", "missing"},
    "reference": {"missing", "identifier"},
    "date": {"missing"},
    "number": {"missing"},
    "quantity": {"missing"},
    "uri": {"missing", "below", "above"},
    "composite": {"missing"},
}
_KNOWN_UNSUPPORTED = {"in", "not-in", "above", "below", "text", "type", "iterate"}
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
ID_PARAM = SearchParam(
    code="_id",
    type="token",
    url="http://hl7.org/fhir/SearchParameter/Resource-id",
    expression="Resource.id",
)
LAST_UPDATED = SearchParam(
    code="_lastUpdated",
    type="date",
    url="http://hl7.org/fhir/SearchParameter/Resource-lastUpdated",
    expression="Resource.meta.lastUpdated",
)
ANY_SYSTEM = object()  # a token value without `|`: any system, or none
# What one search may carry; past either a 400 says so, in lenient handling too. Values count
# every parameter and each of its comma-separated values (alternatives of one parameter become
# IN lists or shallow ORs, cheap at this size). Each parameter that selects resources is a
# semi-join that PostgreSQL plans together with the others, at a cost that grows steeply: about
# 0.2 s for 64, 1 s for 128, past the statement timeout for 400, even on an empty database.
MAX_VALUES = 1000
MAX_CRITERIA = 64


class Skip(Exception):
    """A parameter to leave out in lenient handling (and to answer 400 for otherwise)."""

    def __init__(self, name: str, message: str, *, code: str = "invalid") -> None:
        super().__init__(message)
        self.name = name
        self.message = message
        self.code = code


# -- values -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenValue:
    system: Any  # ANY_SYSTEM, None for "|code" (no system), or the system
    code: str | None  # None for "system|"


@dataclass(frozen=True, slots=True)
class OfTypeValue:
    system: str
    code: str
    value: str


@dataclass(frozen=True, slots=True)
class DateValue:
    prefix: str
    low: int
    high: int


@dataclass(frozen=True, slots=True)
class NumberValue:
    prefix: str
    value: float
    low: float  # the implicit precision of the value as written: eq matches [low, high)
    high: float


@dataclass(frozen=True, slots=True)
class QuantityValue:
    number: NumberValue
    system: str | None
    code: str | None


@dataclass(frozen=True, slots=True)
class ReferenceValue:
    type: str | None
    id: str | None
    url: str | None


@dataclass(frozen=True, slots=True)
class StringValue:
    text: str


@dataclass(frozen=True, slots=True)
class CompositeValue:
    parts: tuple  # one value per component, typed by the component's parameter


# -- criteria -----------------------------------------------------------------------------------


@dataclass
class Criterion:
    """One search parameter as written: all its comma-separated values are alternatives (OR).

    `chain` holds, for a chained parameter (`subject:Patient.name=x`), one criterion per type the
    reference may point to; for a reverse chain (`_has:Observation:patient:code=x`), `has` is
    (source type, reference parameter) and `chain` the one criterion on the source type.
    `target_types` restricts a reference parameter to the types of a `:Type` modifier.
    `per_target` (reverse chains only) is how the SQL tests it, not what it means: each candidate
    target probes for one source instead of all sources being gathered first; `query` sets it when
    the sources are many and a page of targets is wanted.
    """

    name: str
    param: SearchParam
    modifier: str | None = None
    values: list = field(default_factory=list)
    missing: bool | None = None
    target_types: tuple[str, ...] = ()
    chain: list[tuple[str, Criterion]] = field(default_factory=list)
    has: tuple[str, str] | None = None
    per_target: bool = False


@dataclass(frozen=True, slots=True)
class SortKey:
    param: SearchParam
    descending: bool


@dataclass(frozen=True, slots=True)
class Include:
    source: str | None  # None for `*`
    param: str | None  # None for `*`
    target: str | None
    iterate: bool
    reverse: bool

    @property
    def name(self) -> str:
        return ("_revinclude" if self.reverse else "_include") + (
            ":iterate" if self.iterate else ""
        )

    @property
    def value(self) -> str:
        if self.source is None:
            return "*"
        return ":".join(p for p in (self.source, self.param or "*", self.target) if p)


@dataclass
class Query:
    types: tuple[str, ...]
    criteria: list[Criterion] = field(default_factory=list)
    sort: list[SortKey] = field(default_factory=list)
    count: int | None = None
    total: str | None = None
    summary: str | None = None
    elements: list[str] | None = None
    includes: list[Include] = field(default_factory=list)
    cursor: str | None = None
    ignored: list[Issue] = field(default_factory=list)
    used: list[tuple[str, str]] = field(default_factory=list)


# -- escaping -----------------------------------------------------------------------------------


def split_escaped(text: str, separator: str) -> list[str]:
    """Split on `separator` where it is not escaped by a backslash; escapes are kept."""
    parts, current, escaped = [], [], False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            current.append(ch)
            escaped = True
        elif ch == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def unescape(text: str) -> str:
    out, escaped = [], False
    for ch in text:
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        else:
            out.append(ch)
    if escaped:
        out.append("\\")
    return "".join(out)


# -- values by type -----------------------------------------------------------------------------


def _prefix(name: str, text: str) -> tuple[str, str]:
    if len(text) > 2 and text[:2] in PREFIXES and (text[2] in "0123456789+-."):
        return text[:2], text[2:]
    return "eq", text


def parse_number(name: str, text: str, *, prefixed: bool = True) -> NumberValue:
    prefix, rest = _prefix(name, text) if prefixed else ("eq", text)
    if not _NUMBER.fullmatch(rest):
        raise Skip(name, f"Parameter {name}: {text!r} is not a number")
    try:
        number = Decimal(rest)
        exponent = int(number.as_tuple().exponent)
        half = Decimal(5) * Decimal(10) ** (exponent - 1)
        return NumberValue(prefix, float(number), float(number - half), float(number + half))
    except (ArithmeticError, ValueError):  # InvalidOperation, Overflow: out of any useful range
        raise Skip(name, f"Parameter {name}: {text!r} is not a usable number") from None


def parse_date(name: str, text: str) -> DateValue:
    prefix, rest = _prefix(name, text)
    found = parse_range(rest)
    if found is None:
        raise Skip(name, f"Parameter {name}: {text!r} is not a date, dateTime or instant")
    return DateValue(prefix, found[0], found[1])


def parse_token(name: str, text: str) -> TokenValue:
    parts = split_escaped(text, "|")
    if len(parts) == 1:
        return TokenValue(ANY_SYSTEM, unescape(parts[0]))
    if len(parts) != 2:
        raise Skip(name, f"Parameter {name}: {text!r} has more than one '|'")
    system, code = unescape(parts[0]), unescape(parts[1])
    if not system and not code:
        raise Skip(name, f"Parameter {name}: {text!r} names neither a system nor a code")
    return TokenValue(system or None, code or None)


def parse_of_type(name: str, text: str) -> OfTypeValue:
    parts = [unescape(p) for p in split_escaped(text, "|")]
    if len(parts) != 3 or not all(parts):
        raise Skip(name, f"Parameter {name}: :of-type takes system|code|value, not {text!r}")
    return OfTypeValue(*parts)


def parse_quantity(name: str, text: str) -> QuantityValue:
    parts = split_escaped(text, "|")
    if len(parts) not in (1, 3):
        raise Skip(name, f"Parameter {name}: {text!r} is not number|system|code")
    number = parse_number(name, unescape(parts[0]))
    if len(parts) == 1:
        return QuantityValue(number, None, None)
    system, code = unescape(parts[1]) or None, unescape(parts[2]) or None
    return QuantityValue(number, system, code)


def parse_reference(
    name: str, text: str, param: SearchParam, modifier: str | None, base: str
) -> ReferenceValue:
    value = local_reference(unescape(text), base.rstrip("/"))
    if "://" in value or value.startswith("urn:"):
        return ReferenceValue(None, None, value)
    parts = value.split("/_history/", 1)[0].split("/")
    if len(parts) == 2 and parts[0] in resource_types():
        kind, ident = parts
        if modifier and modifier != kind:
            raise Skip(name, f"Parameter {name}: {value!r} is not a {modifier}")
        return ReferenceValue(kind, ident, None)
    if len(parts) == 1 and parts[0]:
        return ReferenceValue(modifier, parts[0], None)
    raise Skip(name, f"Parameter {name}: {text!r} is not a reference")


def parse_value(name: str, param: SearchParam, modifier: str | None, text: str, base: str) -> Any:
    kind = param.type
    if kind == "string":
        return StringValue(unescape(text))
    if kind == "token":
        if modifier == "text":
            return StringValue(unescape(text))
        if modifier == "of-type":
            return parse_of_type(name, text)
        return parse_token(name, text)
    if kind == "date":
        return parse_date(name, unescape(text))
    if kind == "number":
        return parse_number(name, unescape(text))
    if kind == "quantity":
        return parse_quantity(name, text)
    if kind == "reference":
        if modifier == "identifier":
            return parse_token(name, text)
        return parse_reference(name, text, param, modifier, base)
    if kind == "uri":
        return StringValue(unescape(text))
    if kind == "composite":
        return _parse_composite(name, param, text, base)
    raise Skip(name, f"Parameter {name}: type {kind} cannot be searched", code="not-supported")


def _parse_composite(name: str, param: SearchParam, text: str, base: str) -> CompositeValue:
    texts = split_escaped(text, "$")
    if len(texts) != len(param.components):
        raise Skip(
            name, f"Parameter {name}: {text!r} needs {len(param.components)} parts joined by '$'"
        )
    parts = []
    for (url, _expression), part in zip(param.components, texts, strict=True):
        component = registry.by_url().get(url)
        if component is None:
            raise Skip(
                name, f"Parameter {name}: component {url} is not known", code="not-supported"
            )
        parts.append(parse_value(name, component, None, part, base))
    return CompositeValue(tuple(parts))


# -- names --------------------------------------------------------------------------------------


def lookup(resource_types_: tuple[str, ...], code: str) -> SearchParam | None:
    """The parameter `code` on every one of the types (the first type's definition)."""
    if code == "_id":
        return ID_PARAM
    if code == "_lastUpdated":
        return LAST_UPDATED
    found = None
    for resource_type in resource_types_:
        param = registry.param(resource_type, code)
        if param is None:
            return None
        found = found or param
    return found


def parse_criterion(
    types: tuple[str, ...], name: str, raw: str, base: str, *, depth: int = 0
) -> Criterion:
    """One parameter and its comma-separated values, checked against `types`."""
    if depth > 4:
        raise Skip(name, f"Parameter {name}: chains are limited to 4 links")
    try:
        return _parse_criterion(types, name, raw, base, depth)
    except Skip as skip:
        if skip.name == name:
            raise
        raise Skip(name, f"Parameter {name}: {skip.message}", code=skip.code) from None


def _parse_criterion(
    types: tuple[str, ...], name: str, raw: str, base: str, depth: int
) -> Criterion:
    if name.startswith("_has:"):
        return _parse_has(types, name, raw, base, depth)
    head, dot, rest = name.partition(".")
    code, _, modifier = head.partition(":")
    param = lookup(types, code)
    if param is None:
        listed = ", ".join(types) if len(types) < 4 else "the searched types"
        raise Skip(name, f"Unknown search parameter {code!r} for {listed}", code="not-supported")
    if dot:
        return _parse_chain(types, name, param, modifier or None, rest, raw, base, depth)
    return _parse_plain(name, param, modifier or None, raw, base)


def _parse_plain(
    name: str, param: SearchParam, modifier: str | None, raw: str, base: str
) -> Criterion:
    criterion = Criterion(name=name, param=param, modifier=modifier)
    if modifier == "missing" and param.type not in _MODIFIERS:  # `near`, say: no index rows
        raise Skip(
            name,
            f"Parameter {name}: :missing is not supported on {param.code}",
            code="not-supported",
        )
    if modifier == "missing":
        if raw not in ("true", "false"):
            raise Skip(name, f"Parameter {name}: :missing takes true or false, not {raw!r}")
        criterion.missing = raw == "true"
        return criterion
    _check_modifier(name, param, modifier)
    if param.type == "reference" and modifier and modifier != "identifier":
        criterion.target_types = (modifier,)
    criterion.values = [
        parse_value(name, param, modifier, text, base)
        for text in split_escaped(raw, ",")
        if text != ""
    ]
    if not criterion.values:
        raise Skip(name, f"Parameter {name} has no value")
    return criterion


def _check_modifier(name: str, param: SearchParam, modifier: str | None) -> None:
    if modifier is None:
        return
    allowed = ("missing", "not") if param.code == "_id" else ("missing",)
    if param.code in ("_id", "_lastUpdated") and modifier not in allowed:
        code = "not-supported" if modifier in _MODIFIERS[param.type] else "invalid"
        raise Skip(
            name,
            f"Parameter {name}: modifier :{modifier} is not supported on {param.code}",
            code=code,
        )
    if param.type == "reference" and modifier[:1].isupper():
        if modifier not in resource_types():
            raise Skip(name, f"Parameter {name}: {modifier} is not a resource type")
        if param.targets and modifier not in param.targets:
            raise Skip(name, f"Parameter {name}: {param.code} cannot refer to a {modifier}")
        return
    if modifier in _MODIFIERS.get(param.type, ()):
        return
    code = "not-supported" if modifier in _KNOWN_UNSUPPORTED else "invalid"
    raise Skip(
        name,
        f"Parameter {name}: modifier :{modifier} is not supported for {param.type} parameters",
        code=code,
    )


def _targets(
    name: str, param: SearchParam, modifier: str | None, chained_code: str
) -> tuple[str, ...]:
    if modifier:
        if modifier not in resource_types() or (param.targets and modifier not in param.targets):
            raise Skip(name, f"Parameter {name}: {modifier} is not a target of {param.code}")
        return (modifier,)
    candidates = param.targets or tuple(sorted(resource_types()))
    found = tuple(
        t
        for t in candidates
        if chained_code in ("_id", "_lastUpdated") or registry.param(t, chained_code)
    )
    if not found:
        raise Skip(
            name, f"Parameter {name}: no target of {param.code} has a parameter {chained_code!r}"
        )
    return found


def _parse_chain(
    types: tuple[str, ...],
    name: str,
    param: SearchParam,
    modifier: str | None,
    rest: str,
    raw: str,
    base: str,
    depth: int,
) -> Criterion:
    if param.type != "reference":
        raise Skip(name, f"Parameter {name}: only reference parameters can be chained")
    chained_code = rest.split(".", 1)[0].split(":", 1)[0]
    targets = _targets(name, param, modifier, chained_code)
    chain = [(t, parse_criterion((t,), rest, raw, base, depth=depth + 1)) for t in targets]
    return Criterion(name=name, param=param, modifier=modifier, target_types=targets, chain=chain)


def _parse_has(types: tuple[str, ...], name: str, raw: str, base: str, depth: int) -> Criterion:
    parts = name.split(":", 3)
    if len(parts) != 4 or not all(parts[1:]):
        raise Skip(name, f"Parameter {name}: _has takes _has:Type:reference:parameter")
    _, source, reference, rest = parts
    if source not in resource_types():
        raise Skip(name, f"Parameter {name}: {source} is not a resource type")
    param = registry.param(source, reference)
    if param is None or param.type != "reference":
        raise Skip(name, f"Parameter {name}: {source} has no reference parameter {reference!r}")
    if len(types) != 1:
        raise Skip(name, f"Parameter {name}: _has needs a single resource type to search")
    if param.targets and types[0] not in param.targets:
        raise Skip(name, f"Parameter {name}: {source}.{reference} cannot refer to a {types[0]}")
    inner = parse_criterion((source,), rest, raw, base, depth=depth + 1)
    return Criterion(name=name, param=param, has=(source, reference), chain=[(source, inner)])


# -- result parameters ----------------------------------------------------------------------------


def _count(name: str, raw: str, maximum: int) -> int:
    if not (raw.isascii() and raw.isdigit()):
        raise Skip(name, f"Parameter _count: {raw!r} is not a non-negative integer")
    return min(int(raw), maximum)


def _sort(types: tuple[str, ...], raw: str) -> list[SortKey]:
    keys = []
    for item in raw.split(","):
        item = item.strip()
        descending = item.startswith("-")
        code = item[1:] if descending else item
        param = lookup(types, code) if code else None
        if param is None:
            raise Skip(
                "_sort",
                f"Parameter _sort: {code!r} is not a search parameter of {', '.join(types)}",
            )
        if param.type not in SORTABLE_TYPES:
            raise Skip(
                "_sort", f"Parameter _sort: {code} is a {param.type} parameter, which cannot sort"
            )
        keys.append(SortKey(param, descending))
    return keys


def _include(name: str, raw: str, types: tuple[str, ...]) -> Include:
    base, _, modifier = name.partition(":")
    if modifier not in ("", "iterate", "recurse"):
        raise Skip(name, f"Parameter {name}: modifier :{modifier} is not supported")
    reverse = base == "_revinclude"
    iterate = bool(modifier)
    if raw == "*":
        return Include(None, None, None, iterate, reverse)
    parts = raw.split(":")
    if len(parts) not in (2, 3):
        raise Skip(name, f"Parameter {name}: {raw!r} is not Type:parameter[:targetType]")
    source, code = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if source not in resource_types():
        raise Skip(name, f"Parameter {name}: {source} is not a resource type")
    if target is not None and target not in resource_types():
        raise Skip(name, f"Parameter {name}: {target} is not a resource type")
    if code == "*":
        return Include(source, None, target, iterate, reverse)
    param = registry.param(source, code)
    if param is None or param.type != "reference":
        raise Skip(name, f"Parameter {name}: {source} has no reference parameter {code!r}")
    if not reverse and not iterate and source not in types:
        raise Skip(name, f"Parameter {name}: {source} is not a searched type")
    return Include(source, code, target, iterate, reverse)


_SUMMARY = ("true", "false", "text", "data", "count")
_TOTAL = ("none", "estimate", "accurate")


def parse_query(
    types: tuple[str, ...],
    pairs: list[tuple[str, str]],
    *,
    base: str,
    max_count: int,
    lenient: bool = False,
    system: bool = False,
) -> Query:
    """Read every (name, value) pair of a search; 400 on the first problem unless lenient."""
    query = Query(types=types)
    problems: list[Issue] = []
    carried = 0
    for name, raw in pairs:
        carried += len(split_escaped(raw, ","))
        if carried > MAX_VALUES:
            raise _too_costly(
                name,
                f"a search carries at most {MAX_VALUES} values, counting every parameter and"
                " each of its comma-separated values",
            )
        try:
            if "\x00" in name or "\x00" in raw:
                raise Skip(
                    name.replace("\x00", ""), "Search parameters cannot contain NUL characters"
                )
            _read(query, name, raw, base, max_count, system)
        except Skip as skip:
            issue = Issue(
                skip.code,
                skip.message,
                severity="warning" if lenient else "error",
                expression=skip.name,
            )
            problems.append(issue)
            continue
        if len(query.criteria) > MAX_CRITERIA:
            raise _too_costly(
                name, f"a search takes at most {MAX_CRITERIA} parameters that select resources"
            )
        query.used.append((name, str(query.count) if name == "_count" else raw))
    if problems and not lenient:
        raise FhirError(
            400,
            problems[0].code,
            problems[0].diagnostics,
            expression=problems[0].expression,
            issues=problems,
        )
    query.ignored = problems
    return query


def _too_costly(name: str, limit: str) -> FhirError:
    return FhirError(
        400, "too-costly", f"Parameter {name}: {limit}; split it into several", expression=name
    )


def _read(query: Query, name: str, raw: str, base: str, max_count: int, system: bool) -> None:
    types = query.types
    if name in ("_format", "_pretty"):
        return
    if name == "_count":
        query.count = _count(name, raw, max_count)
    elif name == "_sort":
        query.sort = _sort(types, raw)
    elif name.partition(":")[0] in ("_include", "_revinclude"):
        query.includes.extend(_include(name, item, types) for item in raw.split(",") if item)
    elif name == "_summary":
        if raw not in _SUMMARY:
            raise Skip(name, f"Parameter _summary: {raw!r} is not one of {', '.join(_SUMMARY)}")
        query.summary = raw
    elif name == "_elements":
        query.elements = [e.strip() for e in raw.split(",") if e.strip()]
    elif name == "_total":
        if raw not in _TOTAL:
            raise Skip(name, f"Parameter _total: {raw!r} is not one of {', '.join(_TOTAL)}")
        query.total = raw
    elif name == "_contained":
        if raw != "false":
            raise Skip(
                name,
                "Parameter _contained: searching contained resources is not supported",
                code="not-supported",
            )
    elif name == "_cursor":
        query.cursor = raw
    elif name in ("_type", "_containedType"):
        if name == "_containedType" or not system:
            raise Skip(name, f"Parameter {name} is not supported here", code="not-supported")
    elif raw == "":
        return  # the specification: a parameter without a value is ignored
    else:
        query.criteria.append(parse_criterion(types, name, raw, base))
