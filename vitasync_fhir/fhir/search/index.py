"""What gets indexed on write: every search parameter of a resource's type, extracted by walkers
compiled once per (type, parameter) from the official expressions (fhirpath.py), written into the
tables of tables.py in the writer's transaction.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson
from sqlalchemy import Table, and_, delete, exists, false, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from vitasync_fhir import config
from vitasync_fhir.db import Database, mark_written, unit_of_work
from vitasync_fhir.fhir import bulk
from vitasync_fhir.fhir.search import fhirpath, registry, values
from vitasync_fhir.fhir.search.tables import INDEX_TABLES, resource_compartments
from vitasync_fhir.fhir.tables import resources

Rows = dict[str, set[tuple]]
_COMPONENT_WIDTH = 5  # system, code, value, low, high
_NO_COMPONENT = (None,) * _COMPONENT_WIDTH
_MAX_KEY = 2000  # longer token/uri values cannot be btree keys on PostgreSQL; they are not indexed


@dataclass(frozen=True, slots=True)
class _Plan:
    code: str
    type: str
    walk: Callable[..., list[fhirpath.Node]]
    components: tuple = ()  # composite: ((base walker, ((component type, walker), ...)), ...)
    roots: tuple[str, ...] | None = None  # the top-level elements it reads (None: any)


def _compile(resource_type: str, param: registry.SearchParam) -> _Plan | None:
    elements = registry.elements()
    if param.type == "composite":
        return _compile_composite(resource_type, param)
    compiled = fhirpath.compile_expression(param.expression, resource_type, elements)
    return _Plan(param.code, param.type, compiled.walk, roots=compiled.roots)


def _compile_composite(resource_type: str, param: registry.SearchParam) -> _Plan | None:
    elements = registry.elements()
    definitions = registry.by_url()
    try:
        bases = fhirpath.composite_bases(param.expression, resource_type, elements)
    except fhirpath.Unsupported:
        return None
    parts = []
    for walker, context in bases:
        components = []
        for url, expression in param.components:
            component = definitions.get(url)
            if component is None:
                return None
            compiled = fhirpath.compile_expression(expression, context, elements, relative=True)
            components.append((component.type, compiled.walk))
        parts.append((walker, tuple(components)))
    return _Plan(param.code, "composite", lambda node, resource=None: [], tuple(parts))


@cache
def plans(resource_type: str) -> tuple[_Plan, ...]:
    """The compiled extraction of every indexed parameter of a type."""
    out = []
    for param in registry.params_for(resource_type).values():
        if param.code in registry.COLUMN_PARAMS or param.type == "special":
            continue
        plan = _compile(resource_type, param)
        if plan is not None:
            out.append(plan)
    return tuple(out)


@cache
def _groups(resource_type: str) -> tuple[tuple[tuple[str, ...] | None, tuple[_Plan, ...]], ...]:
    """The plans of a type grouped by the top-level elements they read."""
    groups: dict[tuple[str, ...] | None, list[_Plan]] = {}
    for plan in plans(resource_type):
        groups.setdefault(None if plan.type == "composite" else plan.roots, []).append(plan)
    return tuple((roots, tuple(group)) for roots, group in groups.items())


# Rows of a group of plans by the JSON of the elements they read: resources written together
# repeat most of their elements (every AuditEvent of a caller has the same agent, source and
# type; Observations share codes, categories, subjects), so a repeat costs a lookup. Small
# elements only, and a few thousand of them: 20,000 entries of any size held ~150 MiB per worker
# after the Synthea ingest.
_MEMO: dict[tuple, tuple[tuple[str, tuple], ...]] = {}
_MEMO_SIZE = 4096
_MEMO_KEY_BYTES = 1024


def extract(resource_type: str, resource: dict, *, base: str = "") -> Rows:
    """Index values of one resource: {table name: {row tuple without the key columns}}.

    `base` is the server's FHIR base: a reference written with it is indexed as the relative
    `Type/id` it stands for (values.local_reference)."""
    rows: Rows = {name: set() for name in INDEX_TABLES}
    for roots, group in _groups(resource_type):
        if roots is None:
            _extract(group, resource, rows, base)
            continue
        if len(roots) == 1:
            parts = resource.get(roots[0])
            if parts is None:
                continue  # the walks start at an element the resource does not have
        else:
            parts = [resource.get(root) for root in roots]
            if all(part is None for part in parts):
                continue
        try:
            blob = orjson.dumps(parts)
        except TypeError:  # a value JSON cannot hold (a Decimal, say): walk it
            blob = b""
        if not blob or len(blob) > _MEMO_KEY_BYTES:
            _extract(group, resource, rows, base)
            continue
        key = (resource_type, roots, blob, base)
        found = _MEMO.get(key)
        if found is None:
            alone: Rows = {name: set() for name in INDEX_TABLES}
            _extract(group, resource, alone, base)
            found = tuple((name, row) for name, part in alone.items() for row in part)
            if len(_MEMO) >= _MEMO_SIZE:
                _MEMO.clear()
            _MEMO[key] = found
        for name, row in found:
            rows[name].add(row)
    return rows


def _extract(group: Iterable[_Plan], resource: dict, rows: Rows, base: str = "") -> None:
    for plan in group:
        if plan.type == "composite":
            _composite(plan, resource, rows["composite"], base)
            continue
        found = plan.walk(resource, resource)
        if not found:
            continue
        if plan.type == "reference":
            _add_reference(plan.code, found, rows, base)
        else:
            _ADD[plan.type](plan.code, found, rows)


def _add_string(code: str, found: list, rows: Rows) -> None:
    out = rows["string"]
    for value, kind in found:
        for norm, raw in values.string_rows(value, kind):
            out.add((code, norm, raw))


def _add_token(code: str, found: list, rows: Rows) -> None:
    out = rows["token"]
    for value, kind in found:
        plain, of_type = values.token_rows(value, kind)
        for system, token, text in plain:
            if len(system or "") + len(token or "") < _MAX_KEY:
                out.add((code, system, token, text))
        for system, token, text in of_type:
            if len(system or "") + len(token) < _MAX_KEY:
                out.add((code + ":of-type", system, token, text))


def _add_date(code: str, found: list, rows: Rows) -> None:
    out = rows["date"]
    for value, kind in found:
        for low, high in values.date_rows(value, kind):
            out.add((code, low, high))


def _add_number(code: str, found: list, rows: Rows) -> None:
    out = rows["number"]
    for value, kind in found:
        for (number,) in values.number_rows(value, kind):
            out.add((code, number))


def _add_quantity(code: str, found: list, rows: Rows) -> None:
    out = rows["quantity"]
    for value, kind in found:
        for row in values.quantity_rows(value, kind):
            out.add((code, *row))


def _add_reference(code: str, found: list, rows: Rows, base: str) -> None:
    out, tokens = rows["reference"], rows["token"]
    for value, kind in found:
        refs, identifiers = values.reference_rows(value, kind, base)
        for target_type, target_id, url in refs:
            out.add((code, target_type, target_id, url))
        for system, token, _ in identifiers:
            tokens.add((code + ":identifier", system, token, None))


def _add_uri(code: str, found: list, rows: Rows) -> None:
    out = rows["uri"]
    for value, kind in found:
        for (uri,) in values.uri_rows(value, kind):
            if len(uri) < _MAX_KEY:
                out.add((code, uri))


_ADD: dict[str, Callable[[str, list, Rows], None]] = {
    "string": _add_string,
    "token": _add_token,
    "date": _add_date,
    "number": _add_number,
    "quantity": _add_quantity,
    "uri": _add_uri,
}


def component_values(kind: str, found: list, base: str = "") -> list[tuple]:
    """One composite component's values as (system, code, value, low, high)."""
    out: list[tuple] = []
    for value, type_code in found:
        if kind == "token":
            out.extend(
                (s, c, None, None, None) for s, c, _ in values.token_rows(value, type_code)[0] if c
            )
        elif kind == "quantity":
            out.extend(
                (s, c or u, v, None, None) for v, s, c, u in values.quantity_rows(value, type_code)
            )
        elif kind == "date":
            out.extend(
                (None, None, None, low, high) for low, high in values.date_rows(value, type_code)
            )
        elif kind == "string":
            out.extend(
                (None, norm, None, None, None) for norm, _ in values.string_rows(value, type_code)
            )
        elif kind == "number":
            out.extend((None, None, n, None, None) for (n,) in values.number_rows(value, type_code))
        elif kind == "reference":
            refs = values.reference_rows(value, type_code, base)[0]
            # a contained reference (url "#p1") is there only for `:missing`, of the parameter
            out.extend(
                (t, i or u, None, None, None)
                for t, i, u in refs
                if i or not (u or "").startswith("#")
            )
        elif kind == "uri":
            out.extend((None, u, None, None, None) for (u,) in values.uri_rows(value, type_code))
    return out


def _composite(plan: _Plan, resource: dict, out: set[tuple], base: str) -> None:
    for walker, components in plan.components:
        for node, _kind in walker(resource):
            parts = [
                component_values(kind, walk(node, resource), base) for kind, walk in components
            ]
            if not all(parts):
                continue
            for combination in itertools.product(*parts):
                padded = list(combination) + [_NO_COMPONENT] * (3 - len(combination))
                out.add((plan.code, *itertools.chain.from_iterable(padded[:3])))


def compartments(resource_type: str, resource_id: str, rows: Rows) -> set[str]:
    """The Patient ids whose compartment holds this resource."""
    params = registry.compartment_params(resource_type)
    found = {
        target_id
        for code, target_type, target_id, _url in rows["reference"]
        if target_type == "Patient" and target_id and code in params
    }
    if resource_type == "Patient":
        found.add(resource_id)
    return found


# -- writing ------------------------------------------------------------------------------------


def _owned_by(table: Any, items: Sequence[tuple[str, str, dict | None]]) -> Any:
    """Rows of the (type, id) pairs of `items`: per type, the ids (SQLite plans this well)."""
    by_type: dict[str, list[str]] = {}
    for resource_type, resource_id, _ in items:
        by_type.setdefault(resource_type, []).append(resource_id)
    clauses = [
        and_(
            table.c.resource_type == t,
            table.c.resource_id.in_(ids) if len(ids) > 1 else table.c.resource_id == ids[0],
        )
        for t, ids in by_type.items()
    ]
    return clauses[0] if len(clauses) == 1 else or_(*clauses)


async def _delete_rows(
    session: AsyncSession, items: Sequence[tuple[str, str, dict | None]]
) -> None:
    """Remove the index rows of `items` from every table, one statement per table.

    On PostgreSQL the pairs are joined as two arrays: a list of ORs or IN lists on both columns
    costs far more to plan and run than the nested loop of index probes this gives.
    """
    connection = await session.connection()
    tables = (*INDEX_TABLES.values(), resource_compartments)
    if connection.dialect.name == "postgresql":
        types = [t for t, _, _ in items]
        ids = [i for _, i, _ in items]
        for table in tables:
            await connection.exec_driver_sql(
                f"DELETE FROM {table.name} AS t USING unnest(%(types)s::text[], %(ids)s::text[]) "
                "AS k(resource_type, resource_id) "
                "WHERE t.resource_type = k.resource_type AND t.resource_id = k.resource_id",
                {"types": types, "ids": ids},
            )
        return
    for chunk in _chunks(items, 500):
        for table in tables:
            await session.execute(delete(table).where(_owned_by(table, chunk)))


async def write_indexes(
    session: AsyncSession,
    items: Sequence[tuple[str, str, dict | None]],
    *,
    created: Collection[tuple[str, str]] = (),
) -> None:
    """Replace the index rows of each (type, id, resource or None when deleted): one DELETE per
    table, then one bulk insert per table (COPY on PostgreSQL, executemany on SQLite).

    `created` names (type, id) pairs the caller knows to be new, so without index rows: their
    DELETEs are skipped, which on a bulk import is a third of the work.
    """
    if not items:
        return
    replaced = [item for item in items if (item[0], item[1]) not in created] if created else items
    if replaced:
        await _delete_rows(session, replaced)
    for table, rows in index_rows(items, base=fhir_base(session)):
        await bulk.copy_rows(session, table, rows)


def write_new_indexes(
    connection: Connection, items: Sequence[tuple[str, str, dict | None]]
) -> None:
    """The index rows of new resources, on a synchronous connection (the audit trail's), which
    carries no settings: references are read against the configured FHIR base."""
    for table, rows in index_rows(items, base=config.settings.fhir_base):
        bulk.copy_rows_sync(connection, table, rows)


def fhir_base(session: AsyncSession) -> str:
    """The FHIR base of the app a session belongs to (a Database puts its settings in every
    session's info), else the configured one."""
    found = session.info.get("settings")
    return (found if isinstance(found, config.Settings) else config.settings).fhir_base


def index_rows(
    items: Sequence[tuple[str, str, dict | None]], *, base: str
) -> list[tuple[Table, list[tuple]]]:
    """Each index table (and the compartment table) with the rows of `items`, keys included."""
    inserts: dict[str, list[tuple]] = {name: [] for name in INDEX_TABLES}
    compartment_rows: list[tuple] = []
    for resource_type, resource_id, resource in items:
        if resource is None:
            continue
        rows = extract(resource_type, resource, base=base)
        key = (resource_type, resource_id)
        for name, found in rows.items():
            if found:
                inserts[name].extend(key + row for row in found)
        compartment_rows.extend(
            (resource_type, resource_id, "Patient", patient_id)
            for patient_id in compartments(resource_type, resource_id, rows)
        )
    out = [(table, inserts[name]) for name, table in INDEX_TABLES.items() if inserts[name]]
    if compartment_rows:
        out.append((resource_compartments, compartment_rows))
    return out


def _chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def reindex(
    database: Database, *, resource_types: Iterable[str] | None = None, batch: int = 500
) -> int:
    """Rebuild the index rows of every current resource (of `resource_types`, default all), then
    remove the rows of resources deleted or gone, which the batches never visit."""
    wanted = sorted(set(resource_types)) if resource_types is not None else None
    count = 0
    last: tuple[str, str] = ("", "")
    while True:
        query = (
            select(resources.c.resource_type, resources.c.id, resources.c.content)
            .where(~resources.c.deleted, _after(last))
            .order_by(resources.c.resource_type, resources.c.id)
            .limit(batch)
            .with_for_update()
        )
        if wanted is not None:
            query = query.where(resources.c.resource_type.in_(wanted))
        done = await _rebuild_batch(database, query)
        if not done:
            break
        count += len(done)
        last = max(done)
    await _remove_orphans(database, wanted)
    return count


# SQLite has no row locks: a write that matches nothing takes its one write lock, so the batch is
# read after every write committed before it, and none commits until the batch is rewritten.
_SQLITE_WRITE_LOCK = update(resources).where(false()).values(version_id=resources.c.version_id)
_DEADLOCK = "40P01"
_DEADLOCK_RETRIES = 5


async def _rebuild_batch(database: Database, query: Any) -> list[tuple[str, str]]:
    """Read a batch and replace its index rows in one transaction that holds the resources'
    writers off (FOR UPDATE, as the write path locks them), so the rows are those of the content
    as it stands at commit; a writer waiting on a row replaces them after us. The (type, id)
    pairs done.

    The write path locks in its Bundle's order and the batch in key order, so PostgreSQL may
    break a deadlock by aborting the batch: it is run again."""
    attempts = 0
    while True:
        attempts += 1
        try:
            async with database.sessions() as session:
                async with unit_of_work(session):
                    mark_written(session)
                    if database.sqlite:
                        await session.execute(_SQLITE_WRITE_LOCK)
                    found = (await session.execute(query)).all()
                    items = [(t, i, orjson.loads(content)) for t, i, content in found]
                    await write_indexes(session, items)
            return [(t, i) for t, i, _ in items]
        except DBAPIError as error:
            deadlock = getattr(error.orig, "sqlstate", None) == _DEADLOCK
            if not deadlock or attempts == _DEADLOCK_RETRIES:
                raise


async def _remove_orphans(database: Database, wanted: list[str] | None) -> None:
    """Delete the index rows (compartments too) whose resource is deleted or missing: a write
    that raced an older reindex could leave them. A table per transaction; rows a writer is
    adding are committed with their resource, so they are never taken for orphans."""
    for table in (*INDEX_TABLES.values(), resource_compartments):
        current = exists().where(
            resources.c.resource_type == table.c.resource_type,
            resources.c.id == table.c.resource_id,
            ~resources.c.deleted,
        )
        statement = delete(table).where(~current)
        if wanted is not None:
            statement = statement.where(table.c.resource_type.in_(wanted))
        async with database.sessions() as session:
            async with unit_of_work(session):
                mark_written(session)
                await session.execute(statement)


def _after(last: tuple[str, str]) -> Any:
    resource_type, resource_id = last
    return or_(
        resources.c.resource_type > resource_type,
        and_(resources.c.resource_type == resource_type, resources.c.id > resource_id),
    )
