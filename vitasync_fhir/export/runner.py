"""Running one export job: claim it, stream each type's stored JSON into an NDJSON file, finish.

Claim: `UPDATE export_jobs SET status='running', claim=<token>, lease_until=now+lease WHERE id=:id
AND (status='queued' OR (status='running' AND lease_until < now))`, committed; only one worker
wins, so a job handed to the queue twice runs once. The worker renews its lease after every page;
a renewal that finds no row with its token (the job was cancelled, or its lease lapsed and another
worker took over) stops the run and removes what it wrote. A crashed worker's job is re-queued by
the sweep once the lease lapses, and runs again from the start (files are rewritten, not appended).

Rows are read in keyset pages by id (bounded memory whatever the size), under the kick-off
caller's role policy (`Access.restriction`), and the stored JSON text is written as it is: it is
already the compact JSON we serve, one line per resource.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import orjson
from sqlalchemy import and_, exists, or_, select, tuple_, update
from sqlalchemy.sql import ColumnElement, FromClause

from vitasync_fhir.auth.access import Access
from vitasync_fhir.config import Settings
from vitasync_fhir.db import Database
from vitasync_fhir.export.request import filter_query
from vitasync_fhir.export.service import (
    aware,
    caller_from,
    expires_after,
    export_dir,
    now_utc,
    remove_files,
)
from vitasync_fhir.export.tables import COMPLETE, FAILED, QUEUED, RUNNING, export_jobs
from vitasync_fhir.fhir.operations.everything import parse_since
from vitasync_fhir.fhir.search import query
from vitasync_fhir.fhir.search.tables import resource_compartments
from vitasync_fhir.fhir.tables import resource_history, resources

log = logging.getLogger(__name__)
PAGE_ROWS = 5000
MAX_ATTEMPTS = 5


class Lost(Exception):
    """The job is no longer ours: cancelled, expired, or taken over after our lease lapsed."""


async def claim(database: Database, job_id: str) -> str | None:
    """Take the job for this worker: its claim token, or None when another has it or it is done."""
    token = uuid.uuid4().hex
    moment = now_utc()
    j = export_jobs.c
    statement = (
        update(export_jobs)
        .where(
            j.id == job_id,
            j.attempts < MAX_ATTEMPTS,
            or_(j.status == QUEUED, and_(j.status == RUNNING, j.lease_until < moment)),
        )
        .values(
            status=RUNNING,
            claim=token,
            lease_until=moment + timedelta(seconds=database.settings.export_lease_seconds),
            attempts=j.attempts + 1,
            started_at=moment,
        )
    )
    async with database.engine.begin() as conn:
        claimed = (await conn.execute(statement)).rowcount == 1
    return token if claimed else None


async def _renew(database: Database, job_id: str, token: str, progress: str) -> None:
    lease = now_utc() + timedelta(seconds=database.settings.export_lease_seconds)
    statement = (
        update(export_jobs)
        .where(export_jobs.c.id == job_id, export_jobs.c.claim == token)
        .values(lease_until=lease, progress=progress)
    )
    async with database.engine.begin() as conn:
        if (await conn.execute(statement)).rowcount != 1:
            raise Lost(job_id)


async def _finish(database: Database, job_id: str, token: str, status: str, output: dict) -> None:
    moment = now_utc()
    statement = (
        update(export_jobs)
        .where(export_jobs.c.id == job_id, export_jobs.c.claim == token)
        .values(
            status=status,
            output=output,
            claim=None,
            lease_until=None,
            progress=None,
            finished_at=moment,
            expires_at=expires_after(database.settings, moment),
        )
    )
    async with database.engine.begin() as conn:
        if (await conn.execute(statement)).rowcount != 1:
            raise Lost(job_id)


async def run(settings: Settings, job_id: str) -> str | None:
    """Run the job if this worker can claim it; the final status, or None when it did not run."""
    database = Database(settings)
    try:
        token = await claim(database, job_id)
        if token is None:
            return None
        try:
            output = await _export(database, job_id, token)
            await _finish(database, job_id, token, COMPLETE, output)
            return COMPLETE
        except Lost:
            log.info("export %s was cancelled or taken over; its files are removed", job_id)
            remove_files(settings, job_id)
            return None
        except Exception as error:
            log.exception("export %s failed", job_id)
            return await _fail(database, job_id, token, error)
    finally:
        await database.dispose()


async def give_up(database: Database, job_id: str) -> bool:
    """Fail a job whose workers died MAX_ATTEMPTS times, so its status stops saying "running"."""
    token = uuid.uuid4().hex
    j = export_jobs.c
    taken = (
        update(export_jobs)
        .where(j.id == job_id, j.status == RUNNING, j.lease_until < now_utc())
        .values(claim=token)
    )
    async with database.engine.begin() as conn:
        if (await conn.execute(taken)).rowcount != 1:
            return False
    text = f"the workers running it stopped {MAX_ATTEMPTS} times"
    return await _fail(database, job_id, token, RuntimeError(text)) == FAILED


async def _fail(database: Database, job_id: str, token: str, error: Exception) -> str | None:
    remove_files(database.settings, job_id)
    folder = export_dir(database.settings, job_id)
    folder.mkdir(parents=True, exist_ok=True)
    log.error("export %s failed: %s", job_id, error)  # the detail (paths, say) stays here
    issue = {
        "severity": "error",
        "code": "exception",
        "diagnostics": f"The export failed; the server log has the cause (export {job_id})",
    }
    _write_outcomes(folder / "OperationOutcome.ndjson", [issue])
    try:
        output = {"output": [], "error": [{"file": "OperationOutcome.ndjson", "count": 1}]}
        await _finish(database, job_id, token, FAILED, output)
    except Lost:
        remove_files(database.settings, job_id)
        return None
    return FAILED


def _write_outcomes(path: Path, issues: list[dict]) -> None:
    with path.open("wb") as out:
        for issue in issues:
            out.write(orjson.dumps({"resourceType": "OperationOutcome", "issue": [issue]}) + b"\n")


async def _export(database: Database, job_id: str, token: str) -> dict:
    async with database.engine.connect() as conn:
        job = (await conn.execute(select(export_jobs).where(export_jobs.c.id == job_id))).one()
    params = job.params
    folder = export_dir(database.settings, job_id)
    remove_files(database.settings, job_id)  # a re-run after a crash starts from a clean folder
    folder.mkdir(parents=True, exist_ok=True)
    restrict = Access(caller_from(job.caller)).restriction("$export")
    cohort = _cohort(job.level, params.get("members") or [])
    since = parse_since(params["since"]) if params.get("since") else None
    moment = aware(job.transaction_time)
    output, total = [], 0
    types = await _present(database, params["types"])
    for number, resource_type in enumerate(types, start=1):
        filters = params["type_filters"].get(resource_type, [])
        where = _where(resource_type, filters, restrict, cohort, since, database.settings)
        where = (where[0], [*where[1], _existed_at(where[0], moment)])

        async def tick(
            count: int, t: str = resource_type, n: int = number, before: int = total
        ) -> None:
            text = f"{t} ({n} of {len(types)} types): {before + count} resources written"
            await _renew(database, job_id, token, text)

        count = await _write_type(database, folder / f"{resource_type}.ndjson", where, tick)
        total += count
        if count:
            output.append(
                {"type": resource_type, "file": f"{resource_type}.ndjson", "count": count}
            )
    deleted = []
    if since is not None and job.level == "system":
        count = await _write_deleted(database, folder / DELETED_FILE, types, since)
        deleted = [{"type": "Bundle", "file": DELETED_FILE, "count": count}] if count else []
    errors = []
    if params.get("warnings"):
        issues = [
            {"severity": "warning", "code": "not-supported", "diagnostics": text}
            for text in params["warnings"]
        ]
        _write_outcomes(folder / "OperationOutcome.ndjson", issues)
        errors.append({"file": "OperationOutcome.ndjson", "count": len(issues)})
    return {"output": output, "error": errors, "deleted": deleted}


DELETED_FILE = "deleted.ndjson"


async def _write_deleted(database: Database, path: Path, types: list[str], since: datetime) -> int:
    """Bulk Data `_since`: the resources deleted since, each a line holding a transaction Bundle
    with its DELETE. System level only: a deleted resource has left the patient compartments a
    Patient or Group export selects by."""
    r = resources
    base = (
        select(r.c.resource_type, r.c.id)
        .where(r.c.deleted, r.c.resource_type.in_(types), r.c.last_updated >= since)
        .order_by(r.c.resource_type, r.c.id)
        .limit(PAGE_ROWS)
    )
    count, last = 0, None
    with path.open("w", encoding="utf-8") as out:
        while True:
            statement = (
                base if last is None else base.where(tuple_(r.c.resource_type, r.c.id) > last)
            )
            async with database.engine.connect() as conn:
                rows = (await conn.execute(statement)).all()
            for row in rows:
                entry = {"request": {"method": "DELETE", "url": f"{row.resource_type}/{row.id}"}}
                bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
                out.write(orjson.dumps(bundle).decode() + "\n")
            count += len(rows)
            if len(rows) < PAGE_ROWS:
                break
            last = (rows[-1].resource_type, rows[-1].id)
    if not count:
        path.unlink()
    return count


Where = tuple[FromClause, list[ColumnElement[bool]]]


async def _present(database: Database, types: list[str]) -> list[str]:
    """`types` less those with no resource at all: a system export names ~150 types, most empty."""
    if len(types) < 10:
        return types
    statement = select(resources.c.resource_type).distinct()
    async with database.engine.connect() as conn:
        stored = set((await conn.execute(statement)).scalars())
    return [t for t in types if t in stored]


def _cohort(level: str, members: list[str]) -> Callable[[FromClause], ColumnElement[bool]] | None:
    """Patient and Group export: only resources in the compartment of (one of) the patients."""
    if level == "system":
        return None
    rc = resource_compartments

    def clause(r: FromClause) -> ColumnElement[bool]:
        conditions = [
            rc.c.resource_type == r.c.resource_type,
            rc.c.resource_id == r.c.id,
            rc.c.compartment_type == "Patient",
        ]
        if level == "group":
            conditions.append(rc.c.compartment_id.in_(members))
        return exists(select(1).where(*conditions))

    return clause


def _where(  # noqa: PLR0913 - one export's selection really has these parts
    resource_type: str,
    filters: list[str],
    restrict,  # type: ignore[no-untyped-def]
    cohort: Callable[[FromClause], ColumnElement[bool]] | None,
    since: datetime | None,
    settings: Settings,
) -> Where:
    types = (resource_type,)
    r, clauses = query.scope(types, restrict=restrict)
    if filters:
        alternatives = []
        for text in filters:
            q = filter_query(resource_type, text, base=settings.fhir_base)
            alternatives.append(and_(*query.where_clauses(q.criteria, r, types, restrict=restrict)))
        clauses.append(or_(*alternatives))
    if cohort is not None:
        clauses.append(cohort(r))
    if since is not None:
        clauses.append(r.c.last_updated >= since)
    return r, clauses


def _existed_at(r: FromClause, moment: datetime) -> ColumnElement[bool]:
    """Resources that existed at transactionTime. The manifest SHALL hold what was modified up to
    then and SHOULD NOT hold what was modified after: one changed since is exported as it is now
    (dropping it would break the SHALL), one made since is left out (a later export with
    `_since` = this transactionTime finds both)."""
    h = resource_history
    made_before = exists().where(
        h.c.resource_type == r.c.resource_type, h.c.id == r.c.id, h.c.last_updated <= moment
    )
    return or_(r.c.last_updated <= moment, made_before)


async def _write_type(
    database: Database, path: Path, where: Where, tick: Callable[[int], object]
) -> int:
    r, clauses = where
    base = select(r.c.id, r.c.content).where(*clauses).order_by(r.c.id).limit(PAGE_ROWS)
    part = path.with_suffix(".part")
    count, last = 0, None
    with part.open("w", encoding="utf-8") as out:
        while True:
            statement = base if last is None else base.where(r.c.id > last)
            async with database.engine.connect() as conn:
                rows = (await conn.execute(statement)).all()
            if rows:
                out.write("\n".join([row.content for row in rows]))
                out.write("\n")
            count += len(rows)
            await tick(count)  # type: ignore[misc]
            if len(rows) < PAGE_ROWS:
                break
            last = rows[-1].id
    if count:
        part.rename(path)
    else:
        part.unlink()
    return count
