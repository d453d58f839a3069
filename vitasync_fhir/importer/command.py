"""`vitasync-fhir import PATH...`: load Bundles and NDJSON files, folders and archives of them."""

from __future__ import annotations

import asyncio
import time
from asyncio import FIRST_COMPLETED
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from vitasync_fhir import migrations
from vitasync_fhir.config import Settings
from vitasync_fhir.db import Database, is_sqlite
from vitasync_fhir.importer import inputs, sources
from vitasync_fhir.importer.load import Loader, Tally

MAX_PASSES = 5
LOG_EVERY_SECONDS = 10.0


@dataclass(frozen=True)
class _Options:
    batch_size: int
    jobs: int


def import_command(
    paths: Annotated[list[Path], typer.Argument(help="Files (.json, .ndjson), folders, archives")],
    batch_size: Annotated[int, typer.Option(min=1, help="NDJSON lines per transaction")] = 200,
    jobs: Annotated[int, typer.Option(min=1, help="Transactions running at once")] = 2,
    quiet: Annotated[bool, typer.Option(help="No progress bar, only the summary")] = False,
) -> None:
    """Load transaction/batch Bundles and NDJSON (files, folders, .tar.xz/.tar.gz); resumable."""
    console = Console(stderr=True, soft_wrap=True)
    settings = Settings()
    if is_sqlite(settings.database_url):
        migrations.upgrade(settings.database_url)
    found = inputs.expand(paths)
    tally = Tally(files=len(found.files))
    for problem in found.problems:
        tally.fail(problem)
    for note in found.notes:
        tally.note(note)
    started = time.perf_counter()
    options = _Options(batch_size=batch_size, jobs=jobs)
    asyncio.run(_run(settings, found.files, options, tally, console, quiet=quiet))
    _summary(console, tally, time.perf_counter() - started)
    if tally.failures:
        raise typer.Exit(1)


async def _run(
    settings: Settings,
    files: list[Path],
    options: _Options,
    tally: Tally,
    console: Console,
    *,
    quiet: bool,
) -> None:
    database = Database(settings)
    columns = (
        TextColumn("[bold]import"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[resources]:,} resources  {task.fields[rate]:,.0f}/s"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, disable=quiet, refresh_per_second=4) as bar:
        task = bar.add_task("import", total=None, resources=0, rate=0.0)
        clock = last_line = time.perf_counter()

        def loaded(count: int) -> None:
            nonlocal last_line
            moment = time.perf_counter()
            rate = tally.resources / max(moment - clock, 1e-6)
            bar.update(task, resources=tally.resources, rate=rate)
            # Without a terminal (a log file, CI) the bar is not drawn: a line now and then instead.
            if not quiet and not console.is_terminal and moment - last_line >= LOG_EVERY_SECONDS:
                last_line = moment
                console.print(f"{tally.resources:,} resources, {rate:,.0f}/s")

        loader = Loader(database, on_loaded=loaded)
        try:
            wanted: set | None = None
            for number in range(1, MAX_PASSES + 1):
                before = tally.units
                tally.deferred = {}
                final = number == MAX_PASSES
                await _pass(loader, files, options, tally, bar, task, wanted, final=final)
                if not tally.deferred:
                    break
                if tally.units == before:
                    # Nothing new loaded, so another pass cannot resolve them either.
                    for (place, key), reason in tally.deferred.items():
                        tally.fail(sources.Problem(place, key, reason))
                    break
                wanted = set(tally.deferred)
            if tally.resources:
                await _analyze(database)
        finally:
            await database.dispose()


async def _analyze(database: Database) -> None:
    """Fresh planner statistics after a bulk load, as autovacuum would gather some time later
    (where it runs at all): searches planned on the statistics of a near-empty table can take a
    code on thousands of resources for one on a single row and pick a plan to match."""
    async with database.engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.exec_driver_sql("ANALYZE")


async def _pass(  # type: ignore[no-untyped-def]
    loader: Loader, files, options: _Options, tally: Tally, bar, task, wanted, *, final: bool
) -> None:
    """One read of the input; `wanted`: only these (place, key) units (a deferred retry).

    Up to `jobs` units load at once, so one transaction's database round trips overlap another's
    validation; a unit with conditional writes or references waits until it runs alone.
    """
    progress = sources.Progress()
    running: set[asyncio.Task] = set()

    async def settle(below: int) -> None:
        nonlocal running
        while len(running) > below:
            finished, running = await asyncio.wait(running, return_when=FIRST_COMPLETED)
            for done in finished:
                done.result()

    retried = None if wanted is None else {place.source for place, _ in wanted}
    for item in sources.read(files, batch_size=options.batch_size, progress=progress):
        bar.update(task, total=progress.total, completed=progress.done)
        if isinstance(item, sources.Note):
            tally.note(item)
            continue
        if isinstance(item, sources.Problem):
            # A retry pass reports what keeps it from its units (a file gone since), not again
            # the problems of files it has no business with.
            if retried is None or item.place.source in retried:
                tally.fail(item)
            continue
        if wanted is not None and not _wanted(item, wanted):
            continue
        done = await loader.done_here(item.place)
        await settle(0 if item.exclusive else options.jobs - 1)
        running.add(asyncio.create_task(loader.load(item, done, tally, final=final)))
        if item.exclusive:
            await settle(0)
    await settle(0)
    bar.update(task, completed=progress.total)


def _wanted(unit: sources.Unit, wanted: set) -> bool:
    if (unit.place, unit.key) in wanted:
        return True
    # A line deferred on its own comes back inside its run; the loader passes over the lines this
    # run has counted already.
    return bool(unit.lines) and any(
        place == unit.place and key.startswith("line ") for place, key in wanted
    )


def _summary(console: Console, tally: Tally, seconds: float) -> None:
    rate = tally.resources / seconds if seconds else 0.0
    console.print(
        f"imported {tally.resources:,} resources in {tally.units:,} units "
        f"({tally.bundles:,} transaction Bundles) from {tally.files:,} files "
        f"in {seconds:,.1f} s: {rate:,.0f} resources/s"
    )
    if tally.skipped_units:
        console.print(
            f"skipped {tally.skipped_units:,} units ({tally.skipped_resources:,} resources) "
            "imported before"
        )
    for note in tally.notes:
        console.print(f"note: {note.place}: {note.text}", markup=False, highlight=False)
    if tally.failures:
        console.print(f"[red]{len(tally.failures):,} failed:[/red]")
        for problem in tally.failures.values():
            where = f"{problem.place} {problem.key}".strip()
            console.print(f"  {where}: {problem.reason}", markup=False, highlight=False)
    else:
        console.print("no failures")
