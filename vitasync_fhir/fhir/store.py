"""All SQL on the resource tables: current versions, history, and the index hand-off.

The store never commits; the unit of work around the request or task does. Writes are
optimistic: an update names the version it replaces and fails if another writer got there
first, so two writers racing on one resource can never both win.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import and_, bindparam, false, func, or_, select, true, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import ColumnElement, FromClause, Select

from vitasync_fhir.db import mark_written
from vitasync_fhir.fhir import bulk
from vitasync_fhir.fhir.search.index import write_indexes, write_new_indexes
from vitasync_fhir.fhir.tables import resource_history, resources

# The access layer's filter on a table with resource_type and id columns (None: no filter).
Restriction = Callable[[FromClause], ColumnElement[bool] | None]
Period = tuple[datetime | None, datetime | None]  # [low, high); None is open


@dataclass(frozen=True, slots=True)
class Version:
    """One version of one resource, as stored."""

    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    deleted: bool
    content: str | None
    method: str = ""

    @property
    def etag(self) -> str:
        return f'W/"{self.version_id}"'


@dataclass(frozen=True, slots=True)
class Write:
    """A new version to store; `resource` is its parsed JSON for indexing (None on delete)."""

    version: Version
    resource: dict | None
    replaces: int | None  # the version this one replaces; None when the resource is new


class VersionConflict(Exception):
    """Another writer changed the resource since it was read."""

    def __init__(self, resource_type: str, resource_id: str) -> None:
        super().__init__(f"{resource_type}/{resource_id} changed concurrently")
        self.resource_type = resource_type
        self.resource_id = resource_id


def _aware(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def _version(row, *, method: str = "") -> Version:  # type: ignore[no-untyped-def]
    return Version(
        resource_type=row.resource_type,
        id=row.id,
        version_id=row.version_id,
        last_updated=_aware(row.last_updated),
        deleted=row.deleted,
        content=row.content,
        method=method or getattr(row, "method", ""),
    )


# The hottest query of the server, built once.
_CURRENT = select(resources).where(
    resources.c.resource_type == bindparam("type"), resources.c.id == bindparam("id")
)
_CURRENT_FOR_UPDATE = _CURRENT.with_for_update()
_VERSION = select(resource_history).where(
    resource_history.c.resource_type == bindparam("type"),
    resource_history.c.id == bindparam("id"),
    resource_history.c.version_id == bindparam("version"),
)
_HISTORY_COLUMNS = (
    "resource_type",
    "id",
    "version_id",
    "last_updated",
    "method",
    "deleted",
    "content",
)
_CURRENT_COLUMNS = ("resource_type", "id", "version_id", "last_updated", "deleted", "content")
# New resources in one statement of fixed text: an array per column (see bulk.py).
_INSERT_FRESH_PG = (
    f"INSERT INTO resources ({', '.join(_CURRENT_COLUMNS)}) "
    "SELECT * FROM unnest(%b::varchar[], %b::varchar[], %b::int[], %b::timestamptz[], "
    "%b::boolean[], %b::text[]) "
    "ON CONFLICT (resource_type, id) DO NOTHING RETURNING resource_type, id"
)
# The same queries as text for the read pool (psycopg on PostgreSQL: `%(type)s` parameters).
_PG_TEXT = {
    query: str(query.compile(dialect=postgresql.dialect())) for query in (_CURRENT, _VERSION)
}


class Store:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self._dialect = session.bind.dialect.name if session.bind else "sqlite"

    async def current(
        self, resource_type: str, resource_id: str, *, for_update: bool = False
    ) -> Version | None:
        """The current version; `for_update` locks the row until commit where the database can."""
        params = {"type": resource_type, "id": resource_id}
        row = await self._first(_CURRENT_FOR_UPDATE if for_update else _CURRENT, params)
        return _version(row) if row else None

    async def _first(self, query: Select, params: dict) -> Row | None:
        """One row of a primary-key query: on the read pool in a read session on PostgreSQL,
        else Core on the session's connection (the ORM adds nothing to a primary-key read)."""
        pool = self.session.info.get("read_pool")
        if pool is not None and query in _PG_TEXT:
            return await pool.fetch_one(_PG_TEXT[query], params)
        connection = await self.session.connection()
        return (await connection.execute(query, params)).first()

    async def lock(self, resource_type: str, resource_id: str) -> Version | None:
        """The current version, with other writers of it held off until this transaction ends.

        PostgreSQL locks the row. SQLite has no row locks: a no-op write takes its one write lock
        first, so what this transaction reads next is the latest committed state.
        """
        if self._dialect == "sqlite":
            await self.session.execute(
                update(resources)
                .where(resources.c.resource_type == resource_type, resources.c.id == resource_id)
                .values(version_id=resources.c.version_id)
            )
        return await self.current(resource_type, resource_id, for_update=True)

    async def hold(self, key: str) -> None:
        """Hold off other transactions that hold the same `key` until this one ends: two
        conditional writes with one condition never both find nothing and both create.

        PostgreSQL: a transaction-level advisory lock on the key's hash. SQLite: its one write
        lock, taken now by a no-op write, so what this transaction reads next is the latest."""
        if self._dialect == "postgresql":
            digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
            number = int.from_bytes(digest, "big", signed=True)
            await self.session.execute(select(func.pg_advisory_xact_lock(number)))
        else:
            await self.session.execute(
                update(resources).where(false()).values(version_id=resources.c.version_id)
            )

    async def current_many(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Version]:
        if not keys:
            return {}
        query = select(resources).where(
            tuple_(resources.c.resource_type, resources.c.id).in_(list(keys))
        )
        rows = (await self.session.execute(query)).all()
        return {(r.resource_type, r.id): _version(r) for r in rows}

    async def types_with_id(self, resource_id: str, types: Sequence[str]) -> list[str]:
        """The types among `types` that have a current, undeleted resource with this id."""
        if not types:
            return []
        # resource_type IN (...) AND id = ?: the primary key (type, id) serves it.
        query = select(resources.c.resource_type).where(
            resources.c.resource_type.in_(list(types)),
            resources.c.id == resource_id,
            resources.c.deleted.is_(False),
        )
        return sorted((await self.session.execute(query)).scalars())

    async def version(
        self, resource_type: str, resource_id: str, version_id: int
    ) -> Version | None:
        params = {"type": resource_type, "id": resource_id, "version": version_id}
        row = await self._first(_VERSION, params)
        return _version(row) if row else None

    async def previous(self, versions: Sequence[Version]) -> dict[tuple[str, str, int], Version]:
        """The version before each of `versions` that has one, keyed by (type, id, version)."""
        h = resource_history
        wanted: dict[tuple[str, int], list[str]] = {}
        for v in versions:
            if v.version_id > 1:
                wanted.setdefault((v.resource_type, v.version_id - 1), []).append(v.id)
        if not wanted:
            return {}
        # `id IN (...)` per type and version: the index takes it as one condition, where
        # PostgreSQL took a row-value IN list as a filter over every version of the type
        # (O(rows x keys): 120 ms for the 500 versions a hidden stretch of history reads).
        query = select(h).where(
            or_(
                *(
                    and_(h.c.resource_type == t, h.c.version_id == n, h.c.id.in_(ids))
                    for (t, n), ids in wanted.items()
                )
            )
        )
        rows = (await self.session.execute(query)).all()
        return {(r.resource_type, r.id, r.version_id + 1): _version(r) for r in rows}

    async def write(self, writes: Sequence[Write]) -> None:
        """Store new versions, their history and index rows, in the caller's transaction."""
        if not writes:
            return
        mark_written(self.session)
        fresh = [w for w in writes if w.replaces is None]
        if fresh:
            await self._insert_fresh(fresh)
        for w in writes:
            if w.replaces is not None:
                await self._replace(w)
        await bulk.copy_columns(
            self.session, resource_history, _HISTORY_COLUMNS, [_history_row(w) for w in writes]
        )
        await write_indexes(
            self.session,
            [(w.version.resource_type, w.version.id, w.resource) for w in writes],
            created={(w.version.resource_type, w.version.id) for w in fresh},
        )

    async def _insert_fresh(self, writes: Sequence[Write]) -> None:
        rows = [_current_row(w.version) for w in writes]
        if self._dialect == "postgresql":
            columns = [[row[name] for row in rows] for name in _CURRENT_COLUMNS]
            inserted = set(await bulk.insert_new_pg(self.session, _INSERT_FRESH_PG, columns))
        else:
            statement = (
                sqlite.insert(resources)
                .on_conflict_do_nothing(index_elements=["resource_type", "id"])
                .returning(resources.c.resource_type, resources.c.id)
            )
            inserted = {tuple(r) for r in (await self.session.execute(statement, rows)).all()}
        for row in rows:
            if (row["resource_type"], row["id"]) not in inserted:
                raise VersionConflict(row["resource_type"], row["id"])

    async def _replace(self, w: Write) -> None:
        v = w.version
        result = await self.session.execute(
            update(resources)
            .where(
                resources.c.resource_type == v.resource_type,
                resources.c.id == v.id,
                resources.c.version_id == w.replaces,
            )
            .values(
                version_id=v.version_id,
                last_updated=v.last_updated,
                deleted=v.deleted,
                content=v.content,
            )
        )
        if result.rowcount != 1:
            raise VersionConflict(v.resource_type, v.id)

    async def history(
        self,
        *,
        resource_type: str | None = None,
        resource_id: str | None = None,
        since: datetime | None = None,
        at: Period | None = None,
        before_seq: int | None = None,
        limit: int,
        restrict: Restriction | None = None,
    ) -> list[tuple[int, Version]]:
        """Versions newest first, keyset-paged by the global write sequence."""
        h = resource_history
        where = _history_filter(resource_type, resource_id, since, at, restrict)
        if before_seq is not None:
            where = and_(where, h.c.seq < before_seq)
        query = select(h).where(where).order_by(h.c.seq.desc()).limit(limit)
        rows = (await self.session.execute(query)).all()
        return [(r.seq, _version(r)) for r in rows]

    async def history_count(
        self,
        *,
        resource_type: str | None = None,
        resource_id: str | None = None,
        since: datetime | None = None,
        at: Period | None = None,
        restrict: Restriction | None = None,
    ) -> int:
        where = _history_filter(resource_type, resource_id, since, at, restrict)
        query = select(func.count()).select_from(resource_history).where(where)
        return int((await self.session.execute(query)).scalar_one())


def _history_filter(  # type: ignore[no-untyped-def]
    resource_type: str | None,
    resource_id: str | None,
    since: datetime | None,
    at: Period | None,
    restrict: Restriction | None,
):
    h = resource_history
    conditions = [true()]
    if resource_type is not None:
        conditions.append(h.c.resource_type == resource_type)
    if resource_id is not None:
        conditions.append(h.c.id == resource_id)
    if since is not None:
        conditions.append(h.c.last_updated >= since)
    if at is not None:
        conditions.extend(_current_during(*at))
    if restrict is not None:
        clause = restrict(h)
        if clause is not None:
            conditions.append(clause)
    return and_(*conditions)


def _current_during(low: datetime | None, high: datetime | None) -> list[ColumnElement[bool]]:
    """A version is current from its lastUpdated until the next version's: it was current at
    some moment of [low, high) when it began before `high` and the next began after `low`."""
    h, later = resource_history, resource_history.alias("later")
    conditions = []
    if high is not None:
        conditions.append(h.c.last_updated < high)
    if low is not None:
        ended = (
            select(later.c.last_updated)
            .where(
                later.c.resource_type == h.c.resource_type,
                later.c.id == h.c.id,
                later.c.version_id == h.c.version_id + 1,
            )
            .scalar_subquery()
        )
        conditions.append(or_(ended.is_(None), ended > low))
    return conditions


def write_new(connection: Connection, writes: Sequence[Write]) -> None:
    """Store first versions of new resources on a synchronous connection, in its transaction:
    the audit trail's thread writes its AuditEvents so. Their ids are new, so the rows are
    copied without a conflict check; an id stored already fails the whole transaction."""
    if not writes:
        return
    current = [tuple(_current_row(w.version)[name] for name in _CURRENT_COLUMNS) for w in writes]
    bulk.copy_columns_sync(connection, resources, _CURRENT_COLUMNS, current)
    history = [_history_row(w) for w in writes]
    bulk.copy_columns_sync(connection, resource_history, _HISTORY_COLUMNS, history)
    items = [(w.version.resource_type, w.version.id, w.resource) for w in writes]
    write_new_indexes(connection, items)


def _history_row(w: Write) -> tuple:
    v = w.version
    return (v.resource_type, v.id, v.version_id, v.last_updated, v.method, v.deleted, v.content)


def _current_row(v: Version) -> dict:
    return {
        "resource_type": v.resource_type,
        "id": v.id,
        "version_id": v.version_id,
        "last_updated": v.last_updated,
        "deleted": v.deleted,
        "content": v.content,
    }
