"""Where one worker's time goes while it ingests transaction bundles, measured in-process.

    .venv/bin/python -m benchmarks.profile_ingest --bundles 30

Runs the app in this process (httpx's ASGI transport, no HTTP server) on a scratch database
`vitasync_bench_profile`, signs in as a new admin, posts a warm-up bundle, then posts patient
bundles one at a time under cProfile with a CPU-time clock, while SQLAlchemy events count every
statement and the time spent waiting for PostgreSQL (not the COPYs and array inserts of
`vitasync_fhir/fhir/bulk.py`, which go to psycopg directly). Prints: CPU seconds vs wall
seconds, SQL statements per bundle by kind, and the functions that cost the most CPU.
Complements `run --profile` (py-spy on the real server), whose samples also count time spent
waiting for a CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import re
import time
from collections import Counter

import httpx
import orjson
from sqlalchemy import event

from benchmarks import auth, ingest
from benchmarks.procs import Postgres, migrate

DATABASE = "vitasync_bench_profile"


class SqlCounter:
    """Statements, parameter sets and seconds waiting on the database, by statement kind."""

    def __init__(self) -> None:
        self.statements: Counter[str] = Counter()
        self.rows: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()
        self._started: dict[int, float] = {}

    def attach(self, engine) -> None:  # type: ignore[no-untyped-def]
        event.listen(engine, "before_cursor_execute", self.before)
        event.listen(engine, "after_cursor_execute", self.after)

    @staticmethod
    def kind(statement: str) -> str:
        words = statement.split()
        verb = words[0].upper() if words else "?"
        table = re.search(r"\b(?:INTO|FROM|UPDATE)\s+\"?(\w+)", statement, re.IGNORECASE)
        return f"{verb} {table.group(1) if table else ''}".strip()

    def before(self, conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        kind = self.kind(statement)
        self.statements[kind] += 1
        many = executemany and isinstance(parameters, list | tuple)
        self.rows[kind] += len(parameters) if many else 1
        self._started[id(cursor)] = time.perf_counter()

    def after(self, conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        started = self._started.pop(id(cursor), None)
        if started is not None:
            self.seconds[self.kind(statement)] += time.perf_counter() - started


async def post_bundles(bundles: list[ingest.Bundle], warm: ingest.Bundle, database_url: str,
                       profiler: cProfile.Profile) -> tuple[SqlCounter, float, int]:
    from vitasync_fhir.app import create_app
    from vitasync_fhir.config import Settings

    app = create_app(Settings(database_url=database_url, base_url="http://bench"))
    counter = SqlCounter()
    transport = httpx.ASGITransport(app=app)
    headers = {"Content-Type": ingest.FHIR_JSON}
    async with httpx.AsyncClient(transport=transport, base_url="http://bench",
                                 headers=headers, timeout=600) as http:
        email, password = auth.make_admin(base_url="http://bench", database_url=database_url)
        login = await http.post("/api/auth/login", json={"email": email, "password": password})
        http.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
        warmed = await ingest.post(http, warm)
        if warmed.error:
            raise SystemExit(f"the warm-up bundle failed: {warmed.error}")
        counter.attach(app.state.db.engine.sync_engine)
        started = time.perf_counter()
        profiler.enable()
        posted = [await ingest.post(http, b) for b in bundles]
        profiler.disable()
        wall = time.perf_counter() - started
    await app.state.db.dispose()
    failed = [p for p in posted if p.error]
    if failed:
        raise SystemExit(f"{len(failed)} bundles failed, e.g. {failed[0].error}")
    return counter, wall, sum(p.entries for p in posted)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_ingest",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", type=int, default=30, help="patient bundles to post")
    parser.add_argument("--top", type=int, default=30, help="functions to list")
    args = parser.parse_args(argv)
    pg = Postgres()
    _, patients = ingest.load_archive(limit=args.bundles)
    warm_body = ingest.SEVENTY.read_bytes()
    warm = ingest.Bundle(ingest.SEVENTY.name, warm_body, len(orjson.loads(warm_body)["entry"]))
    pg.recreate(DATABASE)
    try:
        url = pg.sqlalchemy_url(DATABASE)
        migrate(url)
        profiler = cProfile.Profile(time.process_time)
        counter, wall, resources = asyncio.run(post_bundles(patients, warm, url, profiler))
    finally:
        pg.drop(DATABASE)
    report(profiler, counter, wall=wall, bundles=len(patients), resources=resources, top=args.top)


def report(profiler: cProfile.Profile, sql: SqlCounter, *, wall: float, bundles: int,
           resources: int, top: int) -> None:
    stats = pstats.Stats(profiler)
    cpu = stats.total_tt  # type: ignore[attr-defined]
    waited = sum(sql.seconds.values())
    print(f"{bundles} bundles, {resources} resources, one at a time, in process")
    print(f"wall {wall:.1f} s = {resources / wall:.0f} resources/s; CPU of this process "
          f"{cpu:.1f} s (profiler overhead included); waiting on PostgreSQL {waited:.1f} s\n")
    print(f"{'statement kind':40} {'per bundle':>10} {'rows/bundle':>12} {'seconds':>8}")
    for kind, n in sql.statements.most_common():
        print(f"{kind[:40]:40} {n / bundles:10.1f} {sql.rows[kind] / bundles:12.1f} "
              f"{sql.seconds[kind]:8.2f}")
    print(f"\n-- our functions by CPU with everything they call, share of {cpu:.1f} s --")
    print("(only plain functions: a coroutine's cumulative time is counted per resumption)")
    ours = [(key, row) for key, row in stats.stats.items()  # type: ignore[attr-defined]
            if "vitasync_fhir" in key[0]]
    for (file, line, name), (_, calls, _, cumulative, _) in sorted(
            ours, key=lambda item: -item[1][3])[:top]:
        short = file[file.find("vitasync_fhir"):]
        print(f"{cumulative / cpu:6.1%} {cumulative:7.2f} s {calls:>8} calls  "
              f"{name} ({short}:{line})")
    buffer = io.StringIO()
    pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(top)
    body = buffer.getvalue()
    print(f"\n-- top {top} by own CPU time (tottime) --")
    print(body[body.find("   ncalls"):])


if __name__ == "__main__":
    main()
