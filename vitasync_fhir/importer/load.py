"""Loading units through the server's own transaction processing (fhir/bundles.py) as the system.

Each unit commits with its `import_progress` row in one transaction. A run of NDJSON lines that
fails is retried line by line, so one bad line is reported and its neighbours still load. A unit
whose conditional reference finds nothing yet (a Synthea patient before the practitioner bundle
it points at) is deferred to another pass over the input. A retry pass meets units it has no
business with as well (a deferred line comes back inside its run): what this run has counted
already (loaded, skipped or failed) is passed over, so each unit is counted and each problem
reported once, and only units an earlier run recorded count as imported before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from vitasync_fhir.auth.access import Access
from vitasync_fhir.db import Database, mark_written, unit_of_work
from vitasync_fhir.fhir import bundles
from vitasync_fhir.fhir.bundle_entries import parse_entries
from vitasync_fhir.fhir.outcomes import FhirError, Issue
from vitasync_fhir.importer.sources import Note, Place, Problem, Unit, lines_unit, transaction_of
from vitasync_fhir.importer.tables import import_progress

UNRESOLVED = "matches no resource"
CONFLICT_RETRIES = 5
ALREADY_DONE = "already imported"


@dataclass
class Tally:
    files: int = 0
    bundles: int = 0
    units: int = 0
    resources: int = 0
    skipped_units: int = 0  # recorded by an earlier run
    skipped_resources: int = 0
    failures: dict[tuple[Place, str], Problem] = field(default_factory=dict)
    notes: dict[Note, None] = field(default_factory=dict)  # an ordered set
    deferred: dict[tuple[Place, str], str] = field(default_factory=dict)

    def fail(self, problem: Problem) -> None:
        """Record a failure once, however many passes over the input meet it."""
        self.failures.setdefault((problem.place, problem.key), problem)

    def note(self, note: Note) -> None:
        self.notes[note] = None


class Loader:
    """Loads units into one database; `done_here` says which units of a place are already in."""

    def __init__(
        self, database: Database, *, on_loaded: Callable[[int], None] = lambda n: None
    ) -> None:
        self.database = database
        self.base = database.settings.fhir_base
        self.access = Access.system()
        self.on_loaded = on_loaded
        self._place: Place | None = None
        self._done: set[tuple[str, str]] = set()
        self._counted: set[tuple[Place, str, str]] = set()  # units this run has tallied

    async def done_here(self, place: Place) -> set[tuple[str, str]]:
        """(key, sha256) of the units of `place` recorded as loaded; read once per place."""
        if place != self._place:
            async with self.database.sessions() as session:
                rows = await session.execute(
                    select(import_progress.c.unit, import_progress.c.sha256).where(
                        import_progress.c.source == place.source,
                        import_progress.c.member == place.member,
                    )
                )
                self._done = {(r.unit, r.sha256) for r in rows}
            self._place = place
        return self._done

    async def load(
        self, unit: Unit, done: set[tuple[str, str]], tally: Tally, *, final: bool
    ) -> None:
        """Load `unit` unless done; `final`: this pass is the last, so nothing is deferred."""
        if self._was_counted(unit):
            return
        if (unit.key, unit.sha256) in done:
            self._skipped(unit, done, tally)
            return
        several = len(unit.lines) > 1
        if several and _partly_done(unit, done):
            await self._line_by_line(unit, done, tally, final=final)
            return
        error = await self._commit(unit)
        if error is None:
            self._loaded(unit, done, tally)
        elif error == ALREADY_DONE:
            self._skipped(unit, done, tally)
        elif several:
            await self._line_by_line(unit, done, tally, final=final)
        else:
            self._failed(unit, error, tally, final=final)

    async def _line_by_line(
        self, unit: Unit, done: set[tuple[str, str]], tally: Tally, *, final: bool
    ) -> None:
        for line in unit.lines:
            single = lines_unit(unit.place, [line])
            if self._was_counted(single):
                continue
            if (single.key, single.sha256) in done:
                self._skipped(single, done, tally)
                continue
            error = await self._commit(single)
            if error is None:
                self._loaded(single, done, tally)
            elif error == ALREADY_DONE:
                self._skipped(single, done, tally)
            else:
                self._failed(single, error, tally, final=final)

    def _was_counted(self, unit: Unit) -> bool:
        return (unit.place, unit.key, unit.sha256) in self._counted

    def _count(self, unit: Unit) -> None:
        self._counted.add((unit.place, unit.key, unit.sha256))

    def _loaded(self, unit: Unit, done: set[tuple[str, str]], tally: Tally) -> None:
        self._count(unit)
        done.add((unit.key, unit.sha256))
        tally.units += 1
        if unit.key == "bundle":
            tally.bundles += 1
        tally.resources += unit.resources
        self.on_loaded(unit.resources)

    def _skipped(self, unit: Unit, done: set[tuple[str, str]], tally: Tally) -> None:
        self._count(unit)
        done.add((unit.key, unit.sha256))
        tally.skipped_units += 1
        tally.skipped_resources += unit.resources

    def _failed(self, unit: Unit, error: str, tally: Tally, *, final: bool) -> None:
        if UNRESOLVED in error and not final:
            tally.deferred[(unit.place, unit.key)] = error
        else:
            self._count(unit)
            tally.fail(Problem(unit.place, unit.key, error))

    async def _commit(self, unit: Unit) -> str | None:
        """Load the unit and record it in one transaction; the reason when it fails."""
        for _ in range(CONFLICT_RETRIES):
            try:
                bundle = unit.bundle if unit.bundle is not None else _lines_bundle(unit)
                async with self.database.sessions() as session:
                    async with unit_of_work(session):
                        _, entries = parse_entries(bundle, self.base)
                        await bundles.transaction(
                            session, self.database.settings, entries, self.access
                        )
                        await _record(session, unit)
            except FhirError as error:
                reason = "; ".join(_in_input_terms(unit, i) for i in error.issues) or error.code
                if error.status == 409:  # a unit running beside this one wrote the same resource
                    continue
                return reason
            except _BadLine as error:
                return str(error)
            except IntegrityError as error:
                if "import_progress" not in str(error):
                    raise
                # Another import of the same input recorded this unit first; this one rolled back.
                return ALREADY_DONE
            return None
        return reason


_WRAPPED = "Bundle.entry[0]"


def _in_input_terms(unit: Unit, issue: Issue) -> str:
    """An issue as the input would name it: the Bundle around an NDJSON line, a lone resource or
    a batch entry is the importer's own, so its `Bundle.entry[0]` would only mislead."""
    text = issue.diagnostics
    if unit.entry is None or not text.startswith(f"{_WRAPPED}: "):
        return text
    if unit.entry:
        return unit.entry + text[len(_WRAPPED) :]
    text = text[len(_WRAPPED) + 2 :]
    inside = f"{_WRAPPED}.resource."
    expression = issue.expression or ""
    return f"{expression[len(inside) :]}: {text}" if expression.startswith(inside) else text


def _partly_done(unit: Unit, done: set[tuple[str, str]]) -> bool:
    keys = {key for key, _ in done}
    return any(f"line {number}" in keys for number, _ in unit.lines)


class _BadLine(Exception):
    pass


def _lines_bundle(unit: Unit) -> dict:
    resources = []
    for number, text in unit.lines:
        try:
            resource = orjson.loads(text)
        except orjson.JSONDecodeError as error:
            raise _BadLine(f"line {number} is not valid JSON: {error}") from None
        if not isinstance(resource, dict):
            raise _BadLine(f"line {number} is not a JSON object")
        resources.append(resource)
    return transaction_of(resources)


async def _record(session: AsyncSession, unit: Unit) -> None:
    mark_written(session)
    await session.execute(
        import_progress.insert().values(
            source=unit.place.source,
            member=unit.place.member,
            unit=unit.key,
            sha256=unit.sha256,
            resources=unit.resources,
            finished_at=datetime.now(UTC),
        )
    )
