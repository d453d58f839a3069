"""All search SQL: criteria into WHERE clauses over the index tables, sorting, keyset pages,
counts and the selection of included resources.

Every selection of resources, whether the matches, a chain's targets, a reverse chain's sources or
included resources, is built by `scope()`, so the `restrict` hook reaches all of them. `restrict`
is a callable `(resources alias, resource types) -> WHERE clause or None`; the access layer uses it
to keep callers inside what they may read.

Query shapes, chosen so that PostgreSQL and SQLite both drive them from an index:
- a criterion is `r.id IN (SELECT resource_id FROM search_x WHERE resource_type = :t AND param = :p
  AND <value>)`, a semi-join on `(resource_type, param, value...)`; `:not` and `:missing=true` are
  `NOT EXISTS` on `(resource_type, resource_id, param)`;
- pages are keyset pages: `WHERE (sort keys, id) > (the last row's)`, never OFFSET;
- `_lastUpdated` and `_id` sort on the `resources` columns and their index; other parameters sort
  on the smallest (ascending) or largest (descending) indexed value, resources without one last,
  looked up once per match by `(resource_type, resource_id, param)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    exists,
    false,
    func,
    literal,
    or_,
    select,
    true,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import FromClause

from vitasync_fhir.fhir.models import resource_types
from vitasync_fhir.fhir.search import bindings, dates, registry
from vitasync_fhir.fhir.search.boolean import all_of, any_of
from vitasync_fhir.fhir.search.params import (
    ANY_SYSTEM,
    CompositeValue,
    Criterion,
    DateValue,
    Include,
    NumberValue,
    OfTypeValue,
    QuantityValue,
    ReferenceValue,
    SortKey,
    StringValue,
    TokenValue,
)
from vitasync_fhir.fhir.search.tables import (
    INDEX_TABLES,
    TEXT_LENGTH,
    resource_compartments,
    search_reference,
    search_token,
)
from vitasync_fhir.fhir.search.values import normalize
from vitasync_fhir.fhir.tables import resources
from vitasync_fhir.fhir.validation import single_valued

Restrict = Callable[[FromClause, tuple[str, ...]], ColumnElement[bool] | None]
Types = tuple[str, ...]
_CHUNK = 500
# A reverse chain is tested per target (for a page) when it selects DENSE_SOURCES sources or more
# (fewer cost under about 30 ms to gather at the tenfold benchmark scale) and they are estimated
# to reach DENSE_SHARE of the targets or more; see `_walk_pays`.
DENSE_SOURCES = 2000
DENSE_SHARE = 0.25
DENSE_SAMPLE = 500
DENSE_CAP = 100_000
INCLUDE_ROUNDS = 5  # rounds of included resources: the first, then `:iterate` ones


# -- the one place that selects resources ----------------------------------------------------------


def _all_types(types: Types) -> bool:
    return len(types) >= len(resource_types())


def scope(
    types: Types, *, restrict: Restrict | None
) -> tuple[FromClause, list[ColumnElement[bool]]]:
    """A fresh alias of `resources` and the clauses every selection of it must carry."""
    r = resources.alias()
    clauses: list[ColumnElement[bool]] = [r.c.deleted == false()]
    if len(types) == 1:
        clauses.insert(0, r.c.resource_type == types[0])
    elif not _all_types(types):
        clauses.insert(0, r.c.resource_type.in_(types))
    if restrict is not None:
        extra = restrict(r, types)
        if extra is not None:
            clauses.append(extra)
    return r, clauses


def _member(
    r: FromClause, types: Types, table: FromClause, param: str, where: ColumnElement[bool]
) -> ColumnElement[bool]:
    """`r` has an index row of `param` satisfying `where` (a semi-join driven by the index)."""
    if len(types) == 1:
        rows = select(table.c.resource_id).where(
            table.c.resource_type == types[0], table.c.param == param, where
        )
        return r.c.id.in_(rows)
    rows = select(table.c.resource_type, table.c.resource_id).where(table.c.param == param, where)
    if not _all_types(types):
        rows = rows.where(table.c.resource_type.in_(types))
    return tuple_(r.c.resource_type, r.c.id).in_(rows)


def _lacks(
    r: FromClause, table: FromClause, param: str, where: ColumnElement[bool]
) -> ColumnElement[bool]:
    """`r` has no index row of `param` satisfying `where`."""
    return ~exists().where(
        table.c.resource_type == r.c.resource_type,
        table.c.resource_id == r.c.id,
        table.c.param == param,
        where,
    )


# -- criteria -------------------------------------------------------------------------------------


def criterion_clause(
    c: Criterion, r: FromClause, types: Types, *, restrict: Restrict | None
) -> ColumnElement[bool]:
    code = c.param.code
    if code == "_id":
        if c.missing is not None:
            return false() if c.missing else true()
        ids = [v.code for v in c.values]
        return r.c.id.not_in(ids) if c.modifier == "not" else r.c.id.in_(ids)
    if code == "_lastUpdated":
        if c.missing is not None:
            return false() if c.missing else true()
        return any_of([_instant_clause(v, r.c.last_updated) for v in c.values])
    if c.has is not None:
        return _has_clause(c, r, types, restrict)
    if c.chain:
        return _chain_clause(c, r, types, restrict)
    if c.missing is not None:
        return _missing_clause(c, r, types)
    table, param = _index_of(c)
    t = table.alias()
    where = values_clause(c, t, types)
    if c.modifier == "not":
        return _lacks(r, t, param, where)
    return _member(r, types, t, param, where)


def _missing_clause(c: Criterion, r: FromClause, types: Types) -> ColumnElement[bool]:
    """`:missing`: whether `r` has no index row of the parameter. A reference that names its
    target only by identifier has just `:identifier` rows, yet it is there all the same (a
    reference to a contained resource has a row of its own, see values.reference_rows)."""
    indexes = [_index_of(c)]
    if c.param.type == "reference" and c.modifier != "identifier":
        indexes.append((search_token, c.param.code + ":identifier"))
    if c.missing:
        return all_of([_lacks(r, table.alias(), param, true()) for table, param in indexes])
    return any_of([_member(r, types, table.alias(), param, true()) for table, param in indexes])


def _index_of(c: Criterion) -> tuple[Any, str]:
    if c.modifier == "identifier":
        return search_token, c.param.code + ":identifier"
    if c.modifier == "of-type":
        return search_token, c.param.code + ":of-type"
    return INDEX_TABLES[c.param.type], c.param.code


def _chain_clause(
    c: Criterion, r: FromClause, types: Types, restrict: Restrict | None
) -> ColumnElement[bool]:
    ref = search_reference.alias()
    alternatives = []
    for target_type, inner in c.chain:
        target, clauses = scope((target_type,), restrict=restrict)
        matched = select(target.c.id).where(
            *clauses, criterion_clause(inner, target, (target_type,), restrict=restrict)
        )
        alternatives.append(and_(ref.c.target_type == target_type, ref.c.target_id.in_(matched)))
    return _member(r, types, ref, c.param.code, any_of(alternatives))


def _has_sources(c: Criterion, restrict: Restrict | None, *, of: Any = None) -> Select:
    """The ids of the source resources a reverse chain's inner criterion selects; with `of` (a
    source id column of an outer query), whether that one source is selected, as a lookup by id.
    """
    assert c.has is not None
    source_type, _ = c.has
    ((_, inner),) = c.chain
    source, clauses = scope((source_type,), restrict=restrict)
    if _sources_indexed(c, restrict):
        table, param = _index_of(inner)
        t = table.alias()
        value = values_clause(inner, t, (source_type,))
        if of is None:
            return select(t.c.resource_id).where(
                t.c.resource_type == source_type, t.c.param == param, value
            )
        # The value test sits behind COALESCE so that no index on the value can serve it: the
        # lookup must go by (type, id, param), whatever the statistics say of the value.
        return select(t.c.resource_id).where(
            t.c.resource_type == source_type,
            t.c.resource_id == of,
            t.c.param == param,
            func.coalesce(value, false()).is_(true()),
        )
    if of is not None:
        clauses.append(source.c.id == of)
    return select(source.c.id).where(
        *clauses, criterion_clause(inner, source, (source_type,), restrict=restrict)
    )


def _sources_indexed(c: Criterion, restrict: Restrict | None) -> bool:
    """Whether one index table answers the reverse chain's sources (no access filter on them)."""
    assert c.has is not None
    ((_, inner),) = c.chain
    _, clauses = scope((c.has[0],), restrict=restrict)
    return len(clauses) == 2 and _index_only(inner)  # type and not-deleted: the index says both


def _has_clause(
    c: Criterion, r: FromClause, types: Types, restrict: Restrict | None
) -> ColumnElement[bool]:
    """Two shapes, the same answer. Gathering every source and then their targets is right for a
    few sources; for many (a code on most patients' Observations) a page of targets would wait for
    all of them, so `per_target` asks each candidate target, in page order, for one source: a
    subquery with LIMIT 1 that the planner cannot flatten into a join over all sources."""
    assert c.has is not None
    source_type, reference = c.has
    ref = search_reference.alias()
    where = [
        ref.c.resource_type == source_type,
        ref.c.param == reference,
        ref.c.target_type == types[0],
    ]
    if c.per_target:
        # Each reference of the target asks for its own source by id: an index lookup per row
        # (as a join, a misestimate of the sources made PostgreSQL compare every pair).
        one = _has_sources(c, restrict, of=ref.c.resource_id).limit(1).scalar_subquery()
        probe = select(literal(1)).where(*where, ref.c.target_id == r.c.id, one.is_not(None))
        return probe.limit(1).scalar_subquery().is_not(None)
    sources = _has_sources(c, restrict)
    return r.c.id.in_(select(ref.c.target_id).where(*where, ref.c.resource_id.in_(sources)))


async def _count(session: AsyncSession, rows: Select, cap: int) -> int:
    """How many rows `rows` selects, counting no further than `cap`."""
    capped = rows.limit(cap).subquery()
    return int((await session.execute(select(func.count()).select_from(capped))).scalar_one())


async def _walk_pays(
    session: AsyncSession, c: Criterion, target_type: str, restrict: Restrict | None
) -> bool:
    """Whether testing each target beats gathering every source, for one page.

    Gathering costs in proportion to the sources; walking the targets in page order costs in
    proportion to the targets it passes before a page is full, so it pays only when the sources
    are many and spread over a good share of the targets (a code on most patients' Observations),
    not when they are many on a few (a lab repeated on some patients). The share is estimated
    from index reads that stop early: how many sources each target has among the first
    DENSE_SAMPLE sources, the targets (up to DENSE_CAP), and the sources up to the number that
    would reach that share.
    """
    assert c.has is not None
    source_type, reference = c.has
    if not _sources_indexed(c, restrict):  # sources behind an access filter: gather them
        return False
    sources = _has_sources(c, restrict)
    if await _count(session, sources, DENSE_SOURCES) < DENSE_SOURCES:
        return False
    ref = search_reference
    sample = sources.limit(DENSE_SAMPLE).subquery()
    # The target of each sampled source, looked up by the source's id (a join here could be
    # planned as a scan of every reference when the statistics are stale).
    target_of = (
        select(ref.c.target_id)
        .where(
            ref.c.resource_type == source_type,
            ref.c.resource_id == sample.c[0],
            ref.c.param == reference,
            func.coalesce(ref.c.target_type == target_type, false()).is_(true()),
        )
        .limit(1)
        .scalar_subquery()
    )
    spread = select(func.count(func.distinct(target_of))).select_from(sample)
    distinct = int((await session.execute(spread)).scalar_one())
    if distinct == 0:
        return False
    target, clauses = scope((target_type,), restrict=restrict)
    targets = await _count(session, select(target.c.id).where(*clauses), DENSE_CAP)
    # Sources per target as in the sample: enough sources to reach DENSE_SHARE of the targets.
    needed = max(DENSE_SOURCES, math.ceil(DENSE_SHARE * targets * DENSE_SAMPLE / distinct))
    return await _count(session, sources, needed) >= needed


async def plan_has(
    session: AsyncSession,
    types: Types,
    criteria: Sequence[Criterion],
    *,
    restrict: Restrict | None,
) -> list[Criterion]:
    """`criteria` with each reverse chain tested per target where that is cheaper (for a page)."""
    out = []
    for c in criteria:
        if (
            c.has is not None
            and len(types) == 1
            and not c.per_target
            and await _walk_pays(session, c, types[0], restrict)
        ):
            c = replace(c, per_target=True)
        out.append(c)
    return out


def _index_only(c: Criterion) -> bool:
    """Whether one index table answers `c` alone: index rows exist only for current resources."""
    return not (
        c.chain
        or c.has
        or c.missing is not None
        or c.modifier == "not"
        or c.param.code in ("_id", "_lastUpdated")
    )


def compartment_clause(r: FromClause, types: Types, patient_id: str) -> ColumnElement[bool]:
    """`r` is in the compartment of Patient `patient_id`."""
    rc = resource_compartments.alias()
    where = and_(rc.c.compartment_type == "Patient", rc.c.compartment_id == patient_id)
    if len(types) == 1:
        return r.c.id.in_(select(rc.c.resource_id).where(where, rc.c.resource_type == types[0]))
    rows = select(rc.c.resource_type, rc.c.resource_id).where(where)
    return tuple_(r.c.resource_type, r.c.id).in_(rows)


# -- values ---------------------------------------------------------------------------------------


def values_clause(c: Criterion, t: FromClause, types: Types = ()) -> ColumnElement[bool]:
    """Any of the values of `c` on the index rows `t` of resources of `types` (any when empty).
    Values that are plain equalities of one shape (codes of one system, ids of one target type,
    urls) become one IN list, which any number of values keeps shallow and both databases
    answer from the index."""
    implicit = (
        bindings.implicit_systems(c.param.url, types) if c.param.type == "token" else bindings.NONE
    )
    groups: dict[tuple, list[Any]] = {}
    others: list[ColumnElement[bool]] = []
    for v in c.values:
        shape = _equality_shape(c, v, implicit)
        if shape is None:
            others.append(value_clause(c, v, t, implicit=implicit))
        else:
            groups.setdefault(shape, []).append(v)
    listed = [
        _equal_to_any(c, shape, found, t)
        if len(found) > 1
        else value_clause(c, found[0], t, implicit=implicit)
        for shape, found in groups.items()
    ]
    return any_of([*listed, *others])


def _equality_shape(c: Criterion, v: Any, implicit: bindings.Implicit) -> tuple | None:
    """What an equality value shares with the others it can be listed with, or None. A system
    written for a parameter on bound `code` elements is weighed per code (token_clause)."""
    if isinstance(v, TokenValue) and c.modifier in (None, "not", "identifier") and v.code:
        if implicit and c.modifier != "identifier" and v.system is not ANY_SYSTEM:
            return None
        return ("token", v.system)
    if isinstance(v, ReferenceValue) and c.param.type == "reference":
        return ("url",) if v.url is not None else ("reference", v.type)
    return None


def _equal_to_any(c: Criterion, shape: tuple, found: list[Any], t: FromClause) -> Any:
    if shape[0] == "token":
        system = shape[1]
        codes = t.c.code.in_([v.code for v in found])
        if system is ANY_SYSTEM:
            return codes
        return and_(codes, t.c.system.is_(None) if system is None else t.c.system == system)
    if shape[0] == "url":
        return t.c.url.in_([v.url for v in found])
    return _of_target_type(c, shape[1], t.c.target_id.in_([v.id for v in found]), t.c.target_type)


def value_clause(
    c: Criterion, v: Any, t: FromClause, *, implicit: bindings.Implicit = bindings.NONE
) -> ColumnElement[bool]:
    kind = c.param.type
    if c.modifier in ("identifier", "of-type"):
        if isinstance(v, OfTypeValue):
            return and_(t.c.system == v.system, t.c.code == f"{v.code}|{v.value}")
        return token_clause(v, t.c.system, t.c.code)
    if kind == "string":
        return string_clause(v, c.modifier, t.c.value, t.c.raw)
    if kind == "token":
        if c.modifier == "text":
            return prefix_clause(t.c.text, normalize(v.text))
        return token_clause(v, t.c.system, t.c.code, implicit=implicit)
    if kind == "date":
        return date_clause(v, t.c.low, t.c.high)
    if kind == "number":
        return number_clause(v, t.c.value)
    if kind == "quantity":
        return quantity_clause(v, t.c.value, t.c.system, t.c.code, t.c.unit)
    if kind == "reference":
        return reference_clause(v, c, t.c.target_type, t.c.target_id, t.c.url)
    if kind == "uri":
        return uri_clause(v, c.modifier, t.c.value)
    if kind == "composite":
        return composite_clause(v, c, t)
    raise ValueError(kind)


def _next_string(prefix: str) -> str | None:
    """The least string after every string that starts with `prefix` (None: there is none)."""
    stripped = prefix.rstrip("\U0010ffff")  # the last code point has no successor
    if not stripped:
        return None
    following = ord(stripped[-1]) + 1
    if 0xD800 <= following <= 0xDFFF:  # surrogates are no characters: UTF-8 cannot hold them
        following = 0xE000
    return stripped[:-1] + chr(following)


def prefix_clause(column: Any, prefix: str) -> ColumnElement[bool]:
    """Starts-with as an index range (the columns compare byte by byte)."""
    prefix = prefix[:TEXT_LENGTH]
    if not prefix:
        return column.is_not(None)
    after = _next_string(prefix)
    return column >= prefix if after is None else and_(column >= prefix, column < after)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def string_clause(
    v: StringValue, modifier: str | None, value: Any, raw: Any
) -> ColumnElement[bool]:
    norm = normalize(v.text)
    if modifier == "exact":
        clause = value == norm
        return and_(clause, raw == v.text) if raw is not None else clause
    if modifier == "contains":
        return value.like(f"%{_like_escape(norm)}%", escape="\\")
    return prefix_clause(value, norm)


def token_clause(
    v: TokenValue, system: Any, code: Any, *, implicit: bindings.Implicit = bindings.NONE
) -> ColumnElement[bool]:
    """`implicit` holds the code systems of the parameter's bound `code` elements, whose rows
    have no system (bindings.py): `system|code` matches such a row when `system` is the code's
    own, and `|code` (no system at all) does not: the code has a system, an implicit one."""
    if v.code is None:
        own = system == v.system
        codes = sorted(c for c, systems in implicit.items() if v.system in systems)
        return or_(own, and_(code.in_(codes), system.is_(None))) if codes else own
    if v.system is ANY_SYSTEM:
        return code == v.code
    if v.system is None:
        return false() if v.code in implicit else and_(code == v.code, system.is_(None))
    own = and_(code == v.code, system == v.system)
    if v.system in implicit.get(v.code, ()):
        return or_(own, and_(code == v.code, system.is_(None)))
    return own


def _approximate(low: int, high: int) -> tuple[int, int]:
    now = dates.micros(datetime.now(dates.UTC))
    gap = max(abs(now - low), abs(now - high)) // 10
    return low - gap, high + gap


def date_clause(v: DateValue, low: Any, high: Any) -> ColumnElement[bool]:
    """The prefixes of the specification as comparisons of ranges: the target's [low, high)
    against the value's [v.low, v.high)."""
    a, b = v.low, v.high
    p = v.prefix
    if p == "eq":
        return and_(low >= a, high <= b)
    if p == "ne":
        return or_(low < a, high > b)
    if p == "gt":
        return high > b
    if p == "lt":
        return low < a
    if p == "ge":
        return or_(high > b, low >= a)
    if p == "le":
        return or_(low < a, high <= b)
    if p == "sa":
        return low >= b
    if p == "eb":
        return high <= a
    wide_low, wide_high = _approximate(a, b)
    return and_(low < wide_high, high > wide_low)


def _instant_clause(v: DateValue, column: Any) -> ColumnElement[bool]:
    """The same prefixes against a point in time (resources.last_updated)."""
    a, b = dates.from_micros(v.low), dates.from_micros(v.high)
    p = v.prefix
    if p == "eq":
        return and_(column >= a, column < b)
    if p == "ne":
        return or_(column < a, column >= b)
    if p in ("gt", "sa"):
        return column >= b
    if p in ("lt", "eb"):
        return column < a
    if p == "ge":
        return column >= a
    if p == "le":
        return column < b
    wide_low, wide_high = _approximate(v.low, v.high)
    return and_(column >= dates.from_micros(wide_low), column < dates.from_micros(wide_high))


def number_clause(v: NumberValue, column: Any) -> ColumnElement[bool]:
    """eq and ne use the precision of the value as written (100 is [99.5, 100.5)); the other
    prefixes compare with the value itself; ap is within 10%."""
    p = v.prefix
    if p == "eq":
        return and_(column >= v.low, column < v.high)
    if p == "ne":
        return or_(column < v.low, column >= v.high)
    if p in ("gt", "sa"):
        return column > v.value
    if p in ("lt", "eb"):
        return column < v.value
    if p == "ge":
        return column >= v.value
    if p == "le":
        return column <= v.value
    spread = abs(v.value) / 10
    return and_(column >= v.value - spread, column <= v.value + spread)


def quantity_clause(
    v: QuantityValue, value: Any, system: Any, code: Any, unit: Any
) -> ColumnElement[bool]:
    clause = number_clause(v.number, value)
    if v.code is None and v.system is None:
        return clause
    if v.system is not None:
        clause = and_(clause, system == v.system)
    if v.code is not None:
        units = (
            code == v.code
            if v.system is not None or unit is None
            else or_(code == v.code, unit == v.code)
        )
        clause = and_(clause, units)
    return clause


def reference_clause(
    v: ReferenceValue, c: Criterion, target_type: Any, target_id: Any, url: Any
) -> ColumnElement[bool]:
    if v.url is not None:
        return url == v.url if url is not None else false()
    return _of_target_type(c, v.type, target_id == v.id, target_type)


def _of_target_type(
    c: Criterion, kind: str | None, clause: ColumnElement[bool], target_type: Any
) -> ColumnElement[bool]:
    """`clause` on references to a `kind` (None: to any type `c` may refer to)."""
    if kind is not None:
        return and_(clause, target_type == kind)
    allowed = c.target_types or c.param.targets
    if allowed and len(allowed) < len(resource_types()):
        return and_(clause, target_type.in_(allowed))
    return clause


def uri_clause(v: StringValue, modifier: str | None, column: Any) -> ColumnElement[bool]:
    if modifier == "below":
        return or_(column == v.text, prefix_clause(column, v.text.rstrip("/") + "/"))
    if modifier == "above":
        text = v.text
        candidates = {text}
        while "/" in text.rstrip("/"):
            text = text.rstrip("/").rsplit("/", 1)[0]
            if text.endswith(":/") or text.endswith(":"):
                break
            candidates.add(text)
        return column.in_(sorted(candidates))
    return column == v.text


def composite_clause(v: CompositeValue, c: Criterion, t: FromClause) -> ColumnElement[bool]:
    clauses = []
    for n, ((url, _), part) in enumerate(zip(c.param.components, v.parts, strict=True), start=1):
        component = registry.by_url()[url]
        cols = {name: t.c[f"c{n}_{name}"] for name in ("system", "code", "value", "low", "high")}
        kind = component.type
        if kind == "token":
            clauses.append(token_clause(part, cols["system"], cols["code"]))
        elif kind == "quantity":
            clauses.append(quantity_clause(part, cols["value"], cols["system"], cols["code"], None))
        elif kind == "date":
            clauses.append(date_clause(part, cols["low"], cols["high"]))
        elif kind == "number":
            clauses.append(number_clause(part, cols["value"]))
        elif kind == "string":
            clauses.append(prefix_clause(cols["code"], normalize(part.text)))
        elif kind == "reference":
            probe = Criterion(name=c.name, param=component)
            clauses.append(reference_clause(part, probe, cols["system"], cols["code"], None))
        else:
            clauses.append(cols["code"] == part.text)
    return and_(*clauses)


# -- sorting and pages ----------------------------------------------------------------------------

_SORT_COLUMN = {
    "string": ("value", "value"),
    "token": ("code", "code"),
    "date": ("low", "high"),
    "number": ("value", "value"),
    "quantity": ("value", "value"),
    "uri": ("value", "value"),
    "reference": ("target_id", "target_id"),
}


@dataclass(frozen=True, slots=True)
class SortColumn:
    expression: Any
    descending: bool
    nullable: bool
    kind: str  # "text", "int", "float" or "instant": how cursor values are read back


def sort_columns(keys: Sequence[SortKey], r: FromClause, types: Types) -> list[SortColumn]:
    """The ORDER BY of a search: its _sort keys, then the id (and type) as the tie-break."""
    out = []
    for key in keys:
        code = key.param.code
        if code == "_id":
            out.append(SortColumn(r.c.id, key.descending, False, "text"))
        elif code == "_lastUpdated":
            out.append(SortColumn(r.c.last_updated, key.descending, False, "instant"))
        else:
            out.append(_param_sort(key, r))
    descending = out[-1].descending if out else False
    if len(types) > 1:
        out.append(SortColumn(r.c.resource_type, descending, False, "text"))
    out.append(SortColumn(r.c.id, descending, False, "text"))
    return out


def _param_sort(key: SortKey, r: FromClause) -> SortColumn:
    kind = key.param.type
    table = INDEX_TABLES[kind].alias()
    ascending_column, descending_column = _SORT_COLUMN[kind]
    column = table.c[descending_column if key.descending else ascending_column]
    # Behind COALESCE no index on the value can answer min() or max(): without statistics SQLite
    # took such an index and read the parameter's rows of all resources for each resource
    # sorted (minutes for 10,000), instead of the resource's own rows by (type, id, param).
    value = func.coalesce(column, column)
    pick = func.max(value) if key.descending else func.min(value)
    expression = (
        select(pick)
        .where(
            table.c.resource_type == r.c.resource_type,
            table.c.resource_id == r.c.id,
            table.c.param == key.param.code,
        )
        .scalar_subquery()
    )
    value_kind = "int" if kind == "date" else "float" if kind in ("number", "quantity") else "text"
    return SortColumn(expression, key.descending, True, value_kind)


def order_by(columns: Sequence[SortColumn], *, reverse: bool) -> list[Any]:
    out = []
    for col in columns:
        descending = col.descending != reverse
        term = col.expression.desc() if descending else col.expression.asc()
        if col.nullable:
            term = term.nulls_first() if reverse else term.nulls_last()
        out.append(term)
    return out


def after(
    columns: Sequence[SortColumn], values: Sequence[Any], *, reverse: bool
) -> ColumnElement[bool]:
    """Rows strictly after `values` in the order (before them when `reverse`), nulls last."""
    if all(not c.nullable for c in columns) and len({c.descending for c in columns}) == 1:
        left = tuple_(*[c.expression for c in columns])
        right = tuple_(
            *[literal(v, type_=c.expression.type) for c, v in zip(columns, values, strict=True)]
        )
        forward = columns[0].descending == reverse
        return left > right if forward else left < right
    alternatives = []
    equal: list[ColumnElement[bool]] = []
    for col, value in zip(columns, values, strict=True):
        alternatives.append(and_(*equal, _beyond(col, value, reverse)))
        equal.append(col.expression.is_(None) if value is None else col.expression == value)
    return or_(*alternatives)


def _beyond(col: SortColumn, value: Any, reverse: bool) -> ColumnElement[bool]:
    forward = col.descending == reverse  # ascending in the direction of travel
    if value is None:
        # Nulls come last going forward: nothing is beyond a null, every value is before it.
        return col.expression.is_not(None) if reverse else false()
    step = col.expression > value if forward else col.expression < value
    if col.nullable and not reverse:
        return or_(step, col.expression.is_(None))
    return step


@dataclass
class Page:
    rows: list[Any]  # (resource_type, id, content, *sort values)
    more: bool  # another row lies beyond the page in the direction of travel


def where_clauses(
    criteria: Iterable[Criterion], r: FromClause, types: Types, *, restrict: Restrict | None
) -> list[ColumnElement[bool]]:
    plain: list[Criterion] = []
    ranges: dict[str, list[Criterion]] = {}
    for c in criteria:
        if len(types) == 1 and _one_row(c, types[0]):
            ranges.setdefault(c.param.code, []).append(c)
        else:
            plain.append(c)
    clauses = [criterion_clause(c, r, types, restrict=restrict) for c in plain]
    for group in ranges.values():
        clauses.append(_same_row(group, r, types))
    return clauses


def _one_row(c: Criterion, resource_type: str) -> bool:
    """A date criterion on a parameter that indexes one row per resource at most: AND'ed
    criteria on it (`date=ge2019-06&date=lt2019-07`) can then test that one row together, which
    an index range answers, instead of each selecting its own half of the table."""
    if c.param.type != "date" or c.modifier or c.missing is not None or c.chain or c.has:
        return False
    return _single_valued_param(resource_type, c.param.expression)


@cache
def _single_valued_param(resource_type: str, expression: str) -> bool:
    prefix = resource_type + "."
    paths = [part.strip().strip("()") for part in expression.split("|")]
    mine = [p[len(prefix) :] for p in paths if p.startswith(prefix)]
    return (
        len(mine) == 1
        and mine[0].replace(".", "").isalnum()
        and single_valued(resource_type, mine[0])
    )


def _sorted_by_filter(
    types: Types, criteria: Sequence[Criterion], sort: Sequence[SortKey]
) -> list[Criterion] | None:
    """The date criteria that both filter and (as the only _sort key) order a search on a
    single-valued parameter: `Encounter?date=ge2019-06&date=lt2019-07&_sort=-date`."""
    if len(types) != 1 or len(sort) != 1 or sort[0].param.type != "date":
        return None
    code = sort[0].param.code
    group = [c for c in criteria if c.param.code == code and _one_row(c, types[0])]
    return group or None


def _filter_row_sort(
    group: list[Criterion],
    key: SortKey,
    r: FromClause,
    types: Types,
    clauses: list[ColumnElement[bool]],
) -> tuple[FromClause, SortColumn]:
    """Filter and sort on the one index row of a single-valued date parameter, joined: an index
    on (type, param, high) can then hand over the rows in page order and stop at a page, where a
    sort value looked up per match had to be read for every match first."""
    table, param = _index_of(group[0])
    t = table.alias()
    clauses.append(all_of([values_clause(c, t) for c in group]))
    joined = r.join(
        t,
        and_(t.c.resource_type == types[0], t.c.resource_id == r.c.id, t.c.param == param),
    )
    column = t.c.high if key.descending else t.c.low
    return joined, SortColumn(column, key.descending, False, "int")


def _same_row(group: list[Criterion], r: FromClause, types: Types) -> ColumnElement[bool]:
    table, param = _index_of(group[0])
    t = table.alias()
    where = all_of([values_clause(c, t) for c in group])
    return _member(r, types, t, param, where)


def matches(
    types: Types,
    criteria: Sequence[Criterion],
    *,
    restrict: Restrict | None,
    compartment: str | None = None,
) -> tuple[FromClause, list[ColumnElement[bool]]]:
    """The resources of a search: the alias and its complete WHERE."""
    r, clauses = scope(types, restrict=restrict)
    clauses.extend(where_clauses(criteria, r, types, restrict=restrict))
    if compartment is not None:
        clauses.append(compartment_clause(r, types, compartment))
    return r, clauses


async def fetch_page(
    session: AsyncSession,
    types: Types,
    criteria: Sequence[Criterion],
    sort: Sequence[SortKey],
    *,
    count: int,
    position: Sequence[Any] | None,
    reverse: bool,
    restrict: Restrict | None,
    compartment: str | None = None,
) -> Page:
    """One page of matches after `position` (the sort values of the row before it), or before
    it when `reverse` (a previous page), in page order."""
    criteria = await plan_has(session, types, criteria, restrict=restrict)
    sorted_by = _sorted_by_filter(types, criteria, sort)
    if sorted_by is not None:
        criteria = [c for c in criteria if c not in sorted_by]
    r, clauses = matches(types, criteria, restrict=restrict, compartment=compartment)
    source: FromClause = r
    columns = sort_columns(sort, r, types)
    if sorted_by is not None:
        source, columns[0] = _filter_row_sort(sorted_by, sort[0], r, types, clauses)
    rows = select(r.c.resource_type, r.c.id, r.c.content).select_from(source).where(*clauses)
    if any(c.nullable for c in columns):
        rows, columns = _sort_values_once(rows, columns)
    if position is not None:
        rows = rows.where(after(columns, position, reverse=reverse))
    statement = (
        rows.add_columns(*[c.expression for c in columns])
        .order_by(*order_by(columns, reverse=reverse))
        .limit(count + 1)
    )
    found = list((await session.execute(statement)).all())
    more = len(found) > count
    found = found[:count]
    if reverse:
        found.reverse()
    return Page(rows=found, more=more)


def _sort_values_once(
    rows: Select, columns: Sequence[SortColumn]
) -> tuple[Select, list[SortColumn]]:
    """`rows` over a subquery that carries the sort values, so that each value looked up from
    the index is looked up once a row: the keyset's OR chain, the ORDER BY and the select list
    each ran their own (up to five a row on a next page). OFFSET 0 keeps both databases from
    merging the subquery into the outer query, which would copy the lookups back."""
    names = [f"sort_{n}" for n in range(len(columns))]
    labelled = [c.expression.label(name) for c, name in zip(columns, names, strict=True)]
    inner = rows.add_columns(*labelled).offset(0).subquery()
    outer = select(inner.c.resource_type, inner.c.id, inner.c.content)
    return outer, [replace(c, expression=inner.c[n]) for c, n in zip(columns, names, strict=True)]


def sort_kinds(sort: Sequence[SortKey], types: Types) -> list[str]:
    r = resources.alias()
    return [c.kind for c in sort_columns(sort, r, types)]


async def count_matches(
    session: AsyncSession,
    types: Types,
    criteria: Sequence[Criterion],
    *,
    restrict: Restrict | None,
    compartment: str | None = None,
    estimate: bool = False,
) -> int:
    narrowed: list[ColumnElement[bool]] = []
    if restrict is not None:
        restrict = _noting(restrict, narrowed)
    r, clauses = matches(types, criteria, restrict=restrict, compartment=compartment)
    # The planner's statistics are of whole tables: for a caller who may see only part of what
    # the search reads they would tell how much of the rest there is (how many other patients'
    # Conditions, how often a code is in their Observations). Such a caller's estimate is a count.
    if estimate and not narrowed and (await session.connection()).dialect.name == "postgresql":
        return await _estimate(session, select(r.c.id).where(*clauses))
    statement = select(func.count()).select_from(r).where(*clauses)
    return int((await session.execute(statement)).scalar_one())


def _noting(restrict: Restrict, narrowed: list[ColumnElement[bool]]) -> Restrict:
    """`restrict`, adding to `narrowed` each clause it puts on a selection."""

    def noted(table: FromClause, types: Types) -> ColumnElement[bool] | None:
        clause = restrict(table, types)
        if clause is not None:
            narrowed.append(clause)
        return clause

    return noted


async def _estimate(session: AsyncSession, statement: Select) -> int:
    connection = await session.connection()
    compiled = statement.compile(
        dialect=connection.dialect, compile_kwargs={"render_postcompile": True}
    )
    result = await connection.exec_driver_sql(
        "EXPLAIN (FORMAT JSON) " + str(compiled), compiled.params
    )
    plan = result.scalar_one()
    return int(plan[0]["Plan"]["Plan Rows"])


async def match_ids(
    session: AsyncSession,
    resource_type: str,
    criteria: Sequence[Criterion],
    *,
    limit: int,
    restrict: Restrict | None,
) -> list[str]:
    criteria = await plan_has(session, (resource_type,), criteria, restrict=restrict)
    r, clauses = matches((resource_type,), criteria, restrict=restrict)
    statement = select(r.c.id).where(*clauses).order_by(r.c.id).limit(limit)
    return list((await session.execute(statement)).scalars())


# -- included resources ---------------------------------------------------------------------------


def _chunks(items: Sequence, size: int = _CHUNK) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _by_type(keys: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for resource_type, resource_id in keys:
        grouped.setdefault(resource_type, []).append(resource_id)
    return grouped


async def fetch_resources(
    session: AsyncSession, keys: Iterable[tuple[str, str]], *, restrict: Restrict | None
) -> list[Any]:
    """(resource_type, id, content) of current resources, in the order of `keys`."""
    wanted = list(keys)
    found: dict[tuple[str, str], Any] = {}
    for resource_type, ids in _by_type(wanted).items():
        for chunk in _chunks(ids):
            r, clauses = scope((resource_type,), restrict=restrict)
            statement = select(r.c.resource_type, r.c.id, r.c.content).where(
                *clauses, r.c.id.in_(chunk)
            )
            for row in (await session.execute(statement)).all():
                found[(row.resource_type, row.id)] = row
    return [found[k] for k in wanted if k in found]


async def _referenced(
    session: AsyncSession, include: Include, frontier: Sequence[tuple[str, str]]
) -> list[tuple[str, str]]:
    """What the `frontier` resources refer to through `include` (an _include)."""
    ref = search_reference
    out: list[tuple[str, str]] = []
    for resource_type, ids in _by_type(frontier).items():
        if include.source is not None and include.source != resource_type:
            continue
        for chunk in _chunks(ids):
            statement = select(ref.c.target_type, ref.c.target_id).where(
                ref.c.resource_type == resource_type,
                ref.c.resource_id.in_(chunk),
                ref.c.target_id.is_not(None),
            )
            if include.param is not None:
                statement = statement.where(ref.c.param == include.param)
            if include.target is not None:
                statement = statement.where(ref.c.target_type == include.target)
            out.extend((row[0], row[1]) for row in (await session.execute(statement)).all())
    return out


async def _referring(
    session: AsyncSession, include: Include, frontier: Sequence[tuple[str, str]]
) -> list[tuple[str, str]]:
    """What refers to the `frontier` resources through `include` (a _revinclude)."""
    ref = search_reference
    out: list[tuple[str, str]] = []
    for target_type, ids in _by_type(frontier).items():
        if include.target is not None and include.target != target_type:
            continue
        for chunk in _chunks(ids):
            statement = select(ref.c.resource_type, ref.c.resource_id).where(
                ref.c.target_type == target_type, ref.c.target_id.in_(chunk)
            )
            if include.source is not None:
                statement = statement.where(ref.c.resource_type == include.source)
            if include.param is not None:
                statement = statement.where(ref.c.param == include.param)
            out.extend((row[0], row[1]) for row in (await session.execute(statement)).all())
    return out


@dataclass
class Included:
    rows: list[Any]  # (resource_type, id, content) of the included resources
    # The includes that found more than was added, each with why: "limit" (more resources than
    # a page may include) or "rounds" (`:iterate` still finding resources after the last round).
    cut: dict[Include, str]


async def compartment_patients(
    session: AsyncSession, keys: Sequence[tuple[str, str]], *, limit: int
) -> list[str]:
    """The ids of the patients whose compartments hold these resources, at most `limit`, in id
    order. A Patient is its own patient's data: it names itself, with no query (a Patient's
    `link` puts it in the linked patient's compartment too, but the record shown is its own)."""
    rc = resource_compartments
    found = {i for t, i in keys if t == "Patient"}
    wanted = {(t, i) for t, i in keys if t != "Patient"}
    if not wanted:
        return sorted(found)[:limit]
    # Two IN lists, not one of (type, id) pairs: PostgreSQL walks the (type, id) index with them
    # (pairs made it scan); the few rows of another type with one of the ids are dropped below.
    query_ = select(rc.c.resource_type, rc.c.resource_id, rc.c.compartment_id).where(
        rc.c.compartment_type == "Patient",
        rc.c.resource_type.in_({t for t, _ in wanted}),
        rc.c.resource_id.in_({i for _, i in wanted}),
    )
    rows = (await session.execute(query_)).all()
    found |= {row.compartment_id for row in rows if (row.resource_type, row.resource_id) in wanted}
    return sorted(found)[:limit]


async def included(
    session: AsyncSession,
    found: Sequence[tuple[str, str]],
    includes: Sequence[Include],
    *,
    restrict: Restrict | None,
    limit: int,
) -> list[Any]:
    """The rows of `gather_included`, for callers that report no cut."""
    return (await gather_included(session, found, includes, restrict=restrict, limit=limit)).rows


async def gather_included(
    session: AsyncSession,
    found: Sequence[tuple[str, str]],
    includes: Sequence[Include],
    *,
    restrict: Restrict | None,
    limit: int,
) -> Included:
    """Resources that `_include` / `_revinclude` add to the matches `found`: every include on the
    matches, then the `:iterate` ones on what was added, until nothing new comes. At most `limit`
    resources in INCLUDE_ROUNDS rounds: `cut` names the includes that would have added more."""
    seen = set(found)
    out: list[Any] = []
    cut: dict[Include, str] = {}
    frontier = list(found)
    active = list(includes)
    for round_ in range(INCLUDE_ROUNDS + 1):
        fresh: dict[tuple[str, str], Include] = {}  # new keys, each with the include that found it
        for include in active:
            step = _referring if include.reverse else _referenced
            for key in await step(session, include, frontier):
                if key not in seen:
                    seen.add(key)
                    fresh[key] = include
        if not fresh:
            break
        keys = list(fresh)
        room = 0 if round_ == INCLUDE_ROUNDS else limit - len(out)
        rows = await _visible(session, keys, room + 1, restrict=restrict)
        if len(rows) > room:  # a visible resource left out: from there on, all are
            first = keys.index((rows[room].resource_type, rows[room].id))
            reason = "rounds" if round_ == INCLUDE_ROUNDS else "limit"
            for key in keys[first:]:
                cut.setdefault(fresh[key], reason)
            out.extend(rows[:room])
            break
        out.extend(rows)
        frontier = [(row.resource_type, row.id) for row in rows]
        active = [i for i in includes if i.iterate]
        if not active:
            break
    return Included(out, cut)


async def _visible(
    session: AsyncSession,
    keys: Sequence[tuple[str, str]],
    wanted: int,
    *,
    restrict: Restrict | None,
) -> list[Any]:
    """The first `wanted` current resources of `keys` that `restrict` lets through, in order:
    asked for exactly, then (when some were deleted or hidden) a chunk at a time."""
    rows: list[Any] = []
    position = 0
    while position < len(keys) and len(rows) < wanted:
        size = wanted - len(rows) if position == 0 else max(wanted - len(rows), _CHUNK)
        chunk = keys[position : position + size]
        position += len(chunk)
        rows.extend(await fetch_resources(session, chunk, restrict=restrict))
    return rows[:wanted]
