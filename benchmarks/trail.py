"""What the audit trail costs per event, in-process: the trail's own write (a synchronous
connection, `audit.store_many`) beside the same events through a request's store path
(`audit.record_many` in `Database.run`, which the trail used until session 8).

    .venv/bin/python -m benchmarks.trail [--batches 10,70,500] [--events 3000] [--rounds 3]

On a scratch database `vitasync_bench_trail` (PostgreSQL, migrated afresh, dropped at the end),
for each batch size the two paths take turns, `--rounds` times each, each storing `--events`
events of reads by one signed-in caller (an Observation of a patient, or the Patient). Measured
per event: CPU of this process, CPU of the PostgreSQL backends of the database, wall time.
In the server the batch holds what a worker read in `audit_flush_ms` (100 ms): ~40-70 events at
the read loads of `benchmarks.run`. Writes `results/YYYY-MM-DD-HHMM-trail.{json,md}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from datetime import UTC, datetime

from benchmarks import report
from benchmarks.procs import Postgres, cpu_seconds, migrate
from vitasync_fhir.auth import audit
from vitasync_fhir.auth.policy import Caller
from vitasync_fhir.config import Settings
from vitasync_fhir.db import Database, make_sync_engine

DATABASE = "vitasync_bench_trail"


def _events(count: int) -> list[dict]:
    caller = Caller(role="doctor", scopes=(), user_id="u1", fhir_user="Practitioner/d1",
                    client_id="bench", jti=str(uuid.uuid4()))
    out = []
    for n in range(count):
        patient = str(uuid.uuid4())
        of_patient = n % 2 == 0
        out.append(audit.audit_event(
            caller, action="read", resource_type="Patient" if of_patient else "Observation",
            resource_id=patient if of_patient else str(uuid.uuid4()), outcome="success",
            source_ip="127.0.0.1", patient_id=patient))
    return out


def _batches(events: list[dict], size: int) -> list[list[dict]]:
    return [events[i:i + size] for i in range(0, len(events), size)]


def _by_request_path(settings: Settings, batches: list[list[dict]], *, backends: list) -> None:
    async def run() -> None:
        database = Database(settings)
        try:
            for batch in batches:
                await database.run(lambda session, b=batch: audit.record_many(session, b))
            backends.extend(_backends())  # before the connection closes
        finally:
            await database.dispose()

    asyncio.run(run())


def _by_trail_path(settings: Settings, batches: list[list[dict]], *, backends: list) -> None:
    engine = make_sync_engine(settings)
    try:
        for batch in batches:
            with engine.begin() as connection:
                audit.store_many(connection, batch)
        backends.extend(_backends())
    finally:
        engine.dispose()


PATHS = {"request's store path (async session)": _by_request_path,
         "trail (sync connection)": _by_trail_path}


def _backends() -> list[tuple[int, float]]:
    """CPU seconds of each PostgreSQL backend of the scratch database, now."""
    return [(pid, cpu_seconds(pid)) for pid in Postgres().backend_pids(DATABASE)]


def _measure(settings: Settings, path, size: int, events: int) -> dict:  # type: ignore[no-untyped-def]
    batches = _batches(_events(events), size)
    path(settings, _batches(_events(size * 3), size), backends=[])  # warm: imports, caches
    backends: list[tuple[int, float]] = []
    cpu, wall = time.process_time(), time.perf_counter()
    path(settings, batches, backends=backends)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    # Each run opens its own connection: its backend's CPU is all this run's (the query asking
    # for the backends' pids runs on another connection, the admin's).
    pg = sum(seconds for _, seconds in backends)
    return {"cpu_us": 1e6 * cpu / events, "pg_us": 1e6 * pg / events,
            "wall_us": 1e6 * wall / events}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="10,70,500")
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    stamp = datetime.now(UTC)
    postgres = Postgres()
    postgres.recreate(DATABASE)
    try:
        url = postgres.sqlalchemy_url(DATABASE)
        migrate(url)
        settings = Settings(database_url=url).model_copy(update={"db_pool_size": 1})
        rows = []
        for size in [int(s) for s in args.batches.split(",")]:
            runs: dict[str, list[dict]] = {name: [] for name in PATHS}
            for _ in range(args.rounds):
                for name, path in PATHS.items():
                    runs[name].append(_measure(settings, path, size, args.events))
            for name, measured in runs.items():
                row = {"batch": size, "path": name, "rounds": measured}
                for key in ("cpu_us", "pg_us", "wall_us"):
                    row[key] = statistics.median(m[key] for m in measured)
                rows.append(row)
                print(f"batch {size:>4} {name:<40} process CPU {row['cpu_us']:6.0f} us/event, "
                      f"PostgreSQL CPU {row['pg_us']:5.0f}, wall {row['wall_us']:6.0f}", flush=True)
    finally:
        postgres.drop(DATABASE)
    machine = report.machine(postgres_version=postgres.version(),
                             postgres_settings=postgres.settings(), wrk="")
    results = {"kind": "trail", "started": stamp.isoformat(), "machine": machine,
               "events_per_round": args.events, "rounds": args.rounds, "rows": rows}
    name = stamp.strftime("%Y-%m-%d-%H%M") + "-trail"
    report.RESULTS.mkdir(exist_ok=True)
    (report.RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# Audit trail write, {stamp:%Y-%m-%d %H:%M} UTC (commit {machine['git_commit']}"
             f"{', uncommitted changes' if machine['git_uncommitted_changes'] else ''})", "",
             f"{machine['cpu_model']}, {machine['nproc']} cores, "
             f"PostgreSQL {machine['postgresql']}. "
             f"{args.events} events per round, {args.rounds} rounds per path, the paths in turn; "
             "medians, per event.", "",
             "| batch | path | process CPU us | PostgreSQL CPU us | wall us |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['path']} | {r['cpu_us']:.0f} | {r['pg_us']:.0f} | "
              f"{r['wall_us']:.0f} |" for r in rows]
    (report.RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote results/{name}.md")


if __name__ == "__main__":
    main()
