"""Memory under a long mixed load: VmRSS of every worker (and of the PDF renderers), sampled
while wrk runs for minutes.

    python -m benchmarks.soak [--database vitasync_bench_search] [--minutes 10]

Uses a database that `benchmarks.search load` (or `run ingest --keep-db`) filled. The load is
8 connections of reads by id, vreads, the searches of `benchmarks.search`, `/api/patients/{id}`
and prescription PDFs (one request in about a hundred), in turn, for
`--minutes`; every 30 s the RSS of each worker is recorded. The report gives each worker's RSS
after warm-up, at the end and at its peak, and the growth over the run.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import psycopg

from benchmarks import auth, loadgen, search
from benchmarks.loadgen import Job
from benchmarks.procs import Postgres, memory_kib, migrate
from benchmarks.procs import vitasync_server as start_vitasync

RESULTS = Path(__file__).with_name("results")
SAMPLE_SECONDS = 30
LIMIT_MIB = 300


def paths(pg: Postgres, database: str) -> list[str]:
    with psycopg.connect(pg.dsn(database)) as conn:
        rows = conn.execute(
            "SELECT resource_type, id, version_id FROM resources TABLESAMPLE SYSTEM (1) "
            "WHERE NOT deleted LIMIT 20000").fetchall()
        values = search.pick_values(conn)
        prescriptions = [r[0] for r in conn.execute(
            "SELECT id FROM resources WHERE resource_type = 'MedicationRequest' AND NOT deleted "
            "ORDER BY random() LIMIT 2000").fetchall()]
    reads = [f"/fhir/{t}/{i}" for t, i, _ in rows]
    vreads = [f"/fhir/{t}/{i}/_history/{v}" for t, i, v in rows]
    searches = [q.format(**values) for _, q in search.QUERIES if q != "deep-page"]
    api = [f"/api/patients/{i}" for t, i, _ in rows if t == "Patient"]
    # One PDF per 100 requests: each is a new render (a different prescription), ~0.3 s apiece.
    pdfs = [f"/api/prescriptions/{i}/pdf" for i in prescriptions][: len(reads) // 100]
    mixed = reads + vreads + searches * (len(reads) // 20) + api * 20 + pdfs
    random.shuffle(mixed)
    return mixed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--database", default=search.DATABASE)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    pg = Postgres("127.0.0.1", 5432, "postgres")
    os.environ.setdefault("VITASYNC_DATA_DIR", tempfile.mkdtemp(prefix="vitasync-soak-"))
    url = pg.sqlalchemy_url(args.database)
    migrate(url)
    scratch = Path(tempfile.mkdtemp(prefix="vitasync-soak-"))
    (scratch / "paths.txt").write_text("\n".join(paths(pg, args.database)) + "\n")
    server = start_vitasync(database_url=url, workers=args.workers, pool_size=10,
                            token_seconds=int(args.minutes * 60) + 3600)
    server.start()
    samples: list[dict] = []
    started = datetime.now(UTC)
    try:
        token = auth.admin_token(base_url=server.base_url, database_url=url)
        job = Job("soak", scratch / "paths.txt")
        done = threading.Event()
        result: dict = {}

        def load() -> None:
            outcome = loadgen.run(job, base_url=server.base_url, target="soak",
                                  concurrency=args.connections, duration_s=args.minutes * 60,
                                  token=token, generator="wrk")
            result.update(outcome.as_dict())
            done.set()

        threading.Thread(target=load, daemon=True).start()
        clock = time.monotonic()
        while not done.wait(SAMPLE_SECONDS):
            samples.append({"s": round(time.monotonic() - clock),
                            "rss_mib": [round(memory_kib(p).get("VmRSS", 0) / 1024)
                                        for p in server.workers()],
                            "renderer_rss_mib": [round(memory_kib(p).get("VmRSS", 0) / 1024)
                                                 for p in server.renderers()]})
            print(samples[-1], flush=True)
    finally:
        server.stop()
    record = {"started": started.strftime("%Y-%m-%d %H:%M UTC"), "minutes": args.minutes,
              "connections": args.connections, "load": result, "samples": samples,
              "load_average": list(os.getloadavg())}
    markdown = render(record)
    print(markdown)
    RESULTS.mkdir(exist_ok=True)
    stem = started.strftime("%Y-%m-%d-%H%M") + "-soak"
    (RESULTS / f"{stem}.json").write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2))
    (RESULTS / f"{stem}.md").write_text(markdown)
    return 0


def render(r: dict) -> str:
    samples = r["samples"]
    workers = len(samples[0]["rss_mib"]) if samples else 0
    lines = [f"# Memory soak, {r['started']}", "",
             f"{r['minutes']:g} minutes of wrk with {r['connections']} connections (reads, vreads, "
             f"the search queries, /api gets and prescription PDFs, mixed): "
             f"{r['load'].get('requests', 0):,} requests, "
             f"{r['load'].get('rps', 0):,.0f} req/s, {r['load'].get('errors', 0)} errors. "
             f"Load average at the end: {', '.join(f'{x:.1f}' for x in r['load_average'])}.", "",
             "| worker | RSS after 30 s MiB | at the end MiB | peak MiB | growth after the first "
             "minute MiB | under 300 MiB |", "|---|---|---|---|---|---|"]
    for w in range(workers):
        series = [s["rss_mib"][w] for s in samples if len(s["rss_mib"]) > w]
        after_minute = [s["rss_mib"][w] for s in samples if s["s"] >= 60] or series
        growth = after_minute[-1] - after_minute[0]
        ok = "yes" if max(series) < LIMIT_MIB else "**no**"
        lines.append(
            f"| {w + 1} | {series[0]} | {series[-1]} | {max(series)} | {growth:+} | {ok} |"
        )
    renderers = [s.get("renderer_rss_mib") or [] for s in samples]
    if any(renderers):
        peak = max(max(r) for r in renderers if r)
        lines += ["", f"PDF renderer processes (one per worker, started by the first PDF, "
                  f"replaced after 200 renders): {renderers[-1] or 'none'} MiB at the end, peak "
                  f"{peak} MiB."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
