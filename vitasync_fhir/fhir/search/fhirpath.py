"""Search parameter expressions compiled into plain Python path walkers.

The official definitions are FHIRPath. Almost all of them are unions of a few shapes: `Type.a.b`,
`(Type.a as T)`, `Type.a.as(T)`, `Type.a.ofType(T)`, `Type.a.where(resolve() is T)` and
`Type.a.where(name='literal')`. Those are compiled once, with the element types of the R4
StructureDefinitions (`data/elements.json`), into walkers over the resource's JSON that also know
the FHIR type of every value they return; choice elements (`value[x]`) become their concrete
`valueQuantity`, `valueString`, ... keys. Anything else goes to fhirpathpy, which is slower and
returns untyped values.

A walker returns a list of `(value, type)`; `value` is the JSON as stored, `type` the FHIR type
code (`CodeableConcept`, `dateTime`, a backbone path such as `Observation.component`, ...), or ""
when fhirpathpy evaluated it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Node = tuple[Any, str]
Walker = Callable[..., list[Node]]

_TOKEN = re.compile(
    r"\s*(?:(?P<name>[A-Za-z_%][A-Za-z0-9_]*)|(?P<str>'(?:[^'\\]|\\.)*')|(?P<op>[.()|=\[\]]))"
)
_SYSTEM_STRING = "http://hl7.org/fhirpath/System.String"
_BACKBONE = frozenset({"BackboneElement", "Element"})
_QUANTITIES = frozenset(
    {"Quantity", "Age", "Count", "Distance", "Duration", "SimpleQuantity", "MoneyQuantity"}
)
# Data types whose element paths a walker may step into; everything else is a leaf.
_PRIMITIVES = frozenset(
    {
        "base64Binary",
        "boolean",
        "canonical",
        "code",
        "date",
        "dateTime",
        "decimal",
        "id",
        "instant",
        "integer",
        "markdown",
        "oid",
        "positiveInt",
        "string",
        "time",
        "unsignedInt",
        "uri",
        "url",
        "uuid",
        "xhtml",
    }
)


class Unsupported(ValueError):
    """The expression has a shape the compiler does not handle; fhirpathpy evaluates it."""


def split_union(expression: str) -> list[str]:
    """The top-level `|` alternatives of an expression."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(expression):
        if ch == "'" and (i == 0 or expression[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        elif not quoted and depth == 0 and ch == "|":
            parts.append(expression[start:i].strip())
            start = i + 1
    parts.append(expression[start:].strip())
    return [p for p in parts if p]


def part_applies(part: str, resource_type: str) -> bool:
    """Whether one union alternative is about `resource_type` (or about every resource)."""
    head = part.lstrip("(").split(".", 1)[0].split(" ", 1)[0]
    if not head[:1].isupper():
        return True  # relative to the resource, as in InsurancePlan's `name | alias`
    return head in (resource_type, "Resource", "DomainResource")


# -- parsing ------------------------------------------------------------------------------------


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise Unsupported(f"cannot read {text[pos:]!r}")
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


class _Parser:
    """Reads one union alternative into steps: ("field", name) | ("as", T) | ("resolve", T) |
    ("eq", name, literal)."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self, value: str | None = None) -> bool:
        if self.pos >= len(self.tokens):
            return False
        return value is None or self.tokens[self.pos][1] == value

    def take(self, value: str | None = None, kind: str | None = None) -> str:
        if self.pos >= len(self.tokens):
            raise Unsupported("unexpected end")
        tok_kind, tok = self.tokens[self.pos]
        if (value is not None and tok != value) or (kind is not None and tok_kind != kind):
            raise Unsupported(f"unexpected {tok!r}")
        self.pos += 1
        return tok

    def parse(self) -> list[tuple]:
        steps = self.term()
        if self.pos != len(self.tokens):
            raise Unsupported("trailing tokens")
        return steps

    def term(self) -> list[tuple]:
        if self.peek("("):
            self.take("(")
            steps = self.term()
            self.take("as")
            steps.append(("as", self.take(kind="name")))
            self.take(")")
        else:
            steps = [("field", self.take(kind="name"))]
        while self.peek("."):
            self.take(".")
            name = self.take(kind="name")
            if name in ("as", "ofType") and self.peek("("):
                self.take("(")
                steps.append(("as", self.take(kind="name")))
                self.take(")")
            elif name == "where" and self.peek("("):
                self.take("(")
                steps.append(self.condition())
                self.take(")")
            elif self.peek("("):
                raise Unsupported(f"function {name}()")
            else:
                steps.append(("field", name))
        return steps

    def condition(self) -> tuple:
        first = self.take(kind="name")
        if first == "resolve":
            self.take("(")
            self.take(")")
            self.take("is")
            return ("resolve", self.take(kind="name"))
        self.take("=")
        literal = self.take(kind="str")[1:-1].replace("\\'", "'")
        return ("eq", first, literal)


def parse_steps(part: str) -> list[tuple]:
    return _Parser(part).parse()


# -- typing against the element table -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Branch:
    context: str  # where children are looked up: "Observation", "Observation.component", ...
    type: str  # FHIR type code of the values on this branch
    ops: tuple  # runtime operations


def _child_context(path: str, type_code: str) -> str:
    if type_code.startswith("#"):
        return type_code[1:]
    if type_code in _BACKBONE:
        return path
    return type_code


def _type_name(code: str) -> str:
    return "string" if code == _SYSTEM_STRING else code


def _cast_matches(actual: str, wanted: str) -> bool:
    if actual == wanted or actual.lower() == wanted.lower():
        return True
    return wanted == "Quantity" and actual in _QUANTITIES


def type_steps(
    steps: list[tuple], start: str, elements: Mapping[str, list[str]]
) -> list[tuple[tuple, str, str]]:
    """Resolve parsed steps against the element table: [(runtime ops, value type, context)].

    `start` is the context the first step is read in (a resource type or a backbone path). The
    first step may name that type itself (`Observation.code`) or be relative (`code`).
    """
    first = steps[0]
    if first[0] == "field" and first[1][:1].isupper():
        head = first[1]
        if head in ("Resource", "DomainResource"):
            context = head
        elif head == start:
            context = start
        else:
            raise Unsupported(f"{head} is not {start}")
        branches = [_Branch(context, head, ())]
        steps = steps[1:]
    else:
        branches = [_Branch(start, start, ())]
    for step in steps:
        branches = _apply(step, branches, elements)
    return [(b.ops, b.type, b.context) for b in branches]


def _apply(
    step: tuple, branches: list[_Branch], elements: Mapping[str, list[str]]
) -> list[_Branch]:
    kind = step[0]
    if kind == "field":
        out = []
        for b in branches:
            if b.type in _PRIMITIVES:
                raise Unsupported(f"step into primitive {b.type}")
            path = f"{b.context}.{step[1]}"
            if path in elements:
                for code in elements[path]:
                    t = _type_name(code)
                    ctx = _child_context(path, t)
                    typed = ctx if t in _BACKBONE or t.startswith("#") else t
                    out.append(_Branch(ctx, typed, b.ops + (("get", step[1]),)))
            elif path + "[x]" in elements:
                for code in elements[path + "[x]"]:
                    t = _type_name(code)
                    key = step[1] + t[:1].upper() + t[1:]
                    out.append(_Branch(_child_context(path, t), t, b.ops + (("get", key),)))
            else:
                raise Unsupported(f"unknown element {path}")
        return out
    if kind == "as":
        return [b for b in branches if _cast_matches(b.type, step[1])]
    if kind == "resolve":
        return [_Branch(b.context, b.type, b.ops + (("resolve", step[1]),)) for b in branches]
    if kind == "eq":
        return [_Branch(b.context, b.type, b.ops + (("eq", step[1], step[2]),)) for b in branches]
    raise Unsupported(f"step {kind}")


# -- runtime ------------------------------------------------------------------------------------


def reference_type(value: Any) -> str | None:
    """The resource type a Reference points to, from its `reference` or its `type`."""
    if not isinstance(value, dict):
        return None
    ref = value.get("reference")
    if isinstance(ref, str) and "/" in ref:
        parts = ref.split("/_history/", 1)[0].rstrip("/").split("/")
        if len(parts) >= 2:
            return parts[-2]
    kind = value.get("type")
    return kind if isinstance(kind, str) else None


def _get(key: str) -> Callable[[list], list]:
    def step(items: list) -> list:
        out: list = []
        for item in items:
            if item.__class__ is not dict:
                continue
            value = item.get(key)
            if value is None:
                continue
            if value.__class__ is list:
                out.extend(value)
            else:
                out.append(value)
        return out

    return step


def _resolve_is(type_name: str) -> Callable[[list], list]:
    return lambda items: [i for i in items if reference_type(i) == type_name]


def _where_eq(name: str, literal: str) -> Callable[[list], list]:
    return lambda items: [i for i in items if i.__class__ is dict and i.get(name) == literal]


def _op(op: tuple) -> Callable[[list], list]:
    if op[0] == "get":
        return _get(op[1])
    if op[0] == "resolve":
        return _resolve_is(op[1])
    return _where_eq(op[1], op[2])


def _runner(ops: tuple, type_code: str) -> Walker:
    if len(ops) == 1 and ops[0][0] == "get":
        key = ops[0][1]

        def one(node: Any, resource: Any = None) -> list[Node]:
            value = node.get(key) if node.__class__ is dict else None
            if value is None:
                return []
            if value.__class__ is list:
                return [(v, type_code) for v in value]
            return [(value, type_code)]

        return one
    if not ops:
        return lambda node, resource=None: [(node, type_code)]
    functions = [_op(op) for op in ops]

    def walk(node: Any, resource: Any = None) -> list[Node]:
        items = [node]
        for function in functions:
            items = function(items)
            if not items:
                return []
        return [(v, type_code) for v in items]

    return walk


def _fallback(expression: str) -> Walker:
    from fhirpathpy import compile as fp_compile
    from fhirpathpy.models import models

    compiled = fp_compile(expression, model=models["r4"])

    def walk(node: Any, resource: Any = None) -> list[Node]:
        try:
            values = compiled(node, {"resource": resource if resource is not None else node})
        except Exception:  # noqa: BLE001 - a definition the engine cannot evaluate indexes nothing
            return []
        return [(v, "") for v in values if v is not None]

    return walk


@dataclass(frozen=True, slots=True)
class Compiled:
    """One parameter's walker for one resource type, and how it was built."""

    walk: Callable[..., list[Node]]
    contexts: tuple[str, ...]  # contexts of the values (for composite components)
    compiled: bool  # False when fhirpathpy evaluates it
    # The top-level elements the walk reads (its values depend on nothing else); None when it
    # may read the whole resource (fhirpathpy, or an expression that is the resource itself).
    roots: tuple[str, ...] | None = None


def compile_expression(
    expression: str, start: str, elements: Mapping[str, list[str]], *, relative: bool = False
) -> Compiled:
    """Compile the alternatives of `expression` that apply to `start` (a type or backbone path)."""
    resource_type = start.split(".")[0]
    parts = [p for p in split_union(expression) if relative or part_applies(p, resource_type)]
    runners: list[Walker] = []
    contexts: list[str] = []
    roots: set[str] | None = set()
    try:
        for part in parts:
            for ops, type_code, context in type_steps(parse_steps(part), start, elements):
                runners.append(_runner(ops, type_code))
                contexts.append(context)
                if roots is not None and ops and ops[0][0] == "get":
                    roots.add(ops[0][1])
                else:
                    roots = None
    except Unsupported:
        if relative:
            return Compiled(_fallback(expression), (), False)
        return Compiled(_fallback(" | ".join(parts)), (), False)
    read = tuple(sorted(roots)) if roots is not None else None
    if len(runners) == 1:
        return Compiled(runners[0], tuple(contexts), True, read)

    def walk_all(node: Any, resource: Any = None) -> list[Node]:
        out: list[Node] = []
        for run in runners:
            out.extend(run(node))
        return out

    return Compiled(walk_all, tuple(contexts), True, read)


def composite_bases(
    expression: str, resource_type: str, elements: Mapping[str, list[str]]
) -> list[tuple[Walker, str]]:
    """Walkers for a composite's base expression, each with the context its components read in."""
    out = []
    for part in split_union(expression):
        if not part_applies(part, resource_type):
            continue
        for ops, _type, context in type_steps(parse_steps(part), resource_type, elements):
            out.append((_runner(ops, context), context))
    return out
