"""The export tasks on the configuration's Huey queue: run one job, and the sweep every minute.

The sweep removes expired jobs (row and files), and hands to the queue again every job the queue
lost (queued for longer than a minute) or whose worker died (running with a lapsed lease). Handing
a job over twice is harmless: the run claims the job first, and only one claim can win.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from datetime import timedelta

from huey import crontab
from huey.api import TaskWrapper
from sqlalchemy import and_, delete, or_, select

from vitasync_fhir.config import Settings
from vitasync_fhir.db import Database
from vitasync_fhir.export import runner
from vitasync_fhir.export.service import now_utc, remove_files
from vitasync_fhir.export.tables import QUEUED, RUNNING, export_jobs
from vitasync_fhir.notify.queue import Queue, queue_for

log = logging.getLogger(__name__)
QUEUE_GRACE = timedelta(seconds=60)
_tasks: weakref.WeakKeyDictionary[Queue, TaskWrapper] = weakref.WeakKeyDictionary()


def install(queue: Queue) -> None:
    """Register the export tasks on this configuration's Huey instance."""
    huey = queue.huey
    settings = queue.settings

    @huey.task(name="export.run")
    def run_export(job_id: str) -> None:
        asyncio.run(runner.run(settings, job_id))

    @huey.periodic_task(crontab(minute="*"), name="export.sweep")
    def sweep_exports() -> None:
        asyncio.run(sweep(settings))

    _tasks[queue] = run_export


async def _give_up(settings: Settings, job_id: str) -> None:
    database = Database(settings)
    try:
        await runner.give_up(database, job_id)
    finally:
        await database.dispose()


def hand_over(settings: Settings, job_id: str) -> None:
    """Queue a run of the job; raises if the queue is unreachable."""
    queue = queue_for(settings)
    _tasks[queue](job_id)


async def sweep(settings: Settings) -> tuple[int, int]:
    """(expired jobs removed, jobs handed over again)."""
    moment = now_utc()
    j = export_jobs.c
    database = Database(settings)
    try:
        async with database.engine.begin() as conn:
            expired = list(
                (await conn.execute(select(j.id).where(j.expires_at <= moment))).scalars()
            )
            if expired:
                await conn.execute(delete(export_jobs).where(j.id.in_(expired)))
            lost = or_(
                and_(j.status == QUEUED, j.created_at <= moment - QUEUE_GRACE),
                and_(j.status == RUNNING, j.lease_until < moment),
            )
            stuck = [tuple(row) for row in await conn.execute(select(j.id, j.attempts).where(lost))]
    finally:
        await database.dispose()
    for job_id in expired:
        remove_files(settings, job_id)
    for job_id, attempts in stuck:
        if attempts >= runner.MAX_ATTEMPTS:
            await _give_up(settings, job_id)
        else:
            hand_over(settings, job_id)
    if expired or stuck:
        log.info("export sweep: %d expired, %d handed over again", len(expired), len(stuck))
    return len(expired), len(stuck)
