"""Export jobs as the HTTP face sees them: start one, report its status, cancel it, find a file.

A job belongs to the caller that started it (the same account, or the same backend-service
client); an admin may see any. To anyone else a job does not exist (404), so ids do not leak.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from vitasync_fhir.auth.policy import Caller, decide
from vitasync_fhir.auth.scopes import parse_scope
from vitasync_fhir.config import Settings
from vitasync_fhir.db import after_commit, mark_written
from vitasync_fhir.export.request import ExportRequest
from vitasync_fhir.export.tables import COMPLETE, FAILED, QUEUED, export_jobs
from vitasync_fhir.fhir.outcomes import FhirError
from vitasync_fhir.fhir.service import instant

log = logging.getLogger(__name__)
FILE_NAME = re.compile(r"^[A-Za-z]{1,64}\.ndjson$")
RETRY_AFTER_SECONDS = 2


def now_utc() -> datetime:
    return datetime.now(UTC)


def aware(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def export_dir(settings: Settings, job_id: str) -> Path:
    return settings.data_dir / "exports" / job_id


def remove_files(settings: Settings, job_id: str) -> None:
    shutil.rmtree(export_dir(settings, job_id), ignore_errors=True)


def caller_json(caller: Caller) -> dict:
    return {
        "role": caller.role,
        "scopes": [str(s) for s in caller.scopes],
        "user_id": caller.user_id,
        "fhir_user": caller.fhir_user,
        "patient_id": caller.patient_id,
        "client_id": caller.client_id,
    }


def caller_from(data: dict) -> Caller:
    scopes = tuple(s for s in (parse_scope(text) for text in data["scopes"]) if s is not None)
    return Caller(
        role=data["role"],
        scopes=scopes,
        user_id=data.get("user_id"),
        fhir_user=data.get("fhir_user"),
        patient_id=data.get("patient_id"),
        client_id=data.get("client_id"),
    )


def _owns(caller: Caller, stored: dict, types: list[str]) -> bool:
    """Status and files are protected as the kick-off was (Bulk Data: "an access token with
    scopes that cover all resources being exported"): the same user, client and patient
    context, whose role and scopes still let it search every exported type."""
    who = (caller.user_id, caller.client_id, caller.patient_id)
    if who != (stored.get("user_id"), stored.get("client_id"), stored.get("patient_id")):
        return False
    return all(decide(caller, resource_type, "search").allowed for resource_type in types)


async def start(
    session: AsyncSession,
    settings: Settings,
    caller: Caller,
    request: ExportRequest,
    *,
    url: str,
    group_id: str | None = None,
) -> str:
    """Store a queued job and hand it to the queue once the request commits; its id."""
    job_id = str(uuid.uuid4())
    moment = now_utc()
    await session.execute(
        insert(export_jobs).values(
            id=job_id,
            status=QUEUED,
            level=request.level,
            group_id=group_id,
            request=url,
            params=request.as_json(),
            caller=caller_json(caller),
            transaction_time=moment,
            attempts=0,
            created_at=moment,
        )
    )
    mark_written(session)

    async def hand_over() -> None:
        from vitasync_fhir.export.tasks import hand_over as queue_job

        try:
            await asyncio.to_thread(queue_job, settings, job_id)
        except Exception as error:  # the sweep finds the queued row; the commit happened
            log.warning("export %s not queued now (%s); the sweep will queue it", job_id, error)

    after_commit(session, hand_over)
    return job_id


async def _job(session: AsyncSession, caller: Caller, job_id: str):  # type: ignore[no-untyped-def]
    row = (await session.execute(select(export_jobs).where(export_jobs.c.id == job_id))).first()
    if row is None or not _owns(caller, row.caller, row.params.get("types") or []):
        raise FhirError(404, "not-found", f"There is no export {job_id}")
    expires = aware(row.expires_at)
    if expires is not None and expires <= now_utc():
        raise FhirError(404, "not-found", f"Export {job_id} has expired")
    return row


@dataclass(frozen=True, slots=True)
class Status:
    done: bool
    progress: str
    manifest: dict | None = None
    expires: datetime | None = None


async def status(session: AsyncSession, settings: Settings, caller: Caller, job_id: str) -> Status:
    row = await _job(session, caller, job_id)
    if row.status not in (COMPLETE, FAILED):
        return Status(False, row.progress or ("queued" if row.status == QUEUED else "running"))
    if row.status == FAILED:  # Bulk Data: a failed export answers 4xx/5xx, not a manifest
        raise FhirError(500, "exception", f"Export {job_id} failed; the server log has the cause")
    base = f"{settings.fhir_base}/_export/{job_id}/"
    output = row.output or {}
    manifest = {
        "transactionTime": instant(aware(row.transaction_time)),
        "request": row.request,
        "requiresAccessToken": True,
        "output": [
            {"type": item["type"], "url": base + item["file"], "count": item["count"]}
            for item in output.get("output", [])
        ],
        "error": [
            {"type": "OperationOutcome", "url": base + item["file"], "count": item["count"]}
            for item in output.get("error", [])
        ],
    }
    if row.params.get("since"):  # Bulk Data: with _since, the resources deleted since
        manifest["deleted"] = [
            {"type": item["type"], "url": base + item["file"], "count": item["count"]}
            for item in output.get("deleted", [])
        ]
    return Status(True, "complete", manifest, aware(row.expires_at))


async def cancel(session: AsyncSession, settings: Settings, caller: Caller, job_id: str) -> None:
    """Delete the job and its files; a worker still running it stops at its next lease renewal."""
    await _job(session, caller, job_id)
    await session.execute(delete(export_jobs).where(export_jobs.c.id == job_id))
    mark_written(session)
    after_commit(session, lambda: remove_files(settings, job_id))


async def file_path(
    session: AsyncSession, settings: Settings, caller: Caller, job_id: str, name: str
) -> Path:
    """The path of one output or error file of a finished job the caller may read."""
    row = await _job(session, caller, job_id)
    listed = {
        item["file"]
        for part in ("output", "error", "deleted")
        for item in (row.output or {}).get(part, [])
    }
    if row.status not in (COMPLETE, FAILED) or not FILE_NAME.match(name) or name not in listed:
        raise FhirError(404, "not-found", f"Export {job_id} has no file {name}")
    path = export_dir(settings, job_id) / name
    if not path.is_file():
        raise FhirError(404, "not-found", f"Export {job_id} has no file {name}")
    return path


def expires_after(settings: Settings, moment: datetime) -> datetime:
    return moment + timedelta(seconds=settings.export_expiry_seconds)
