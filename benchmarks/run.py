"""One command that measures VitaSync FHIR on PostgreSQL and records the result.

    .venv/bin/python -m benchmarks.run all          # ingest, reads + floor, writes, pgbench
    .venv/bin/python -m benchmarks.run ingest       # or read, write, floor; --help for options

The harness creates and migrates a fresh database, starts `vitasync-fhir serve` (and the floor
app) on free loopback ports, measures, stops everything it started, and writes
benchmarks/results/YYYY-MM-DD-HHMM.json and benchmarks/results/latest.md. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import psycopg

from benchmarks import auth, ingest, loadgen, procs, pyspy, report
from benchmarks import export as bulk_export
from benchmarks.loadgen import Job
from benchmarks.procs import CpuMeter, Postgres, Service, floor_server, memory_kib, migrate
from benchmarks.procs import vitasync_server as start_vitasync

COMMANDS = ("ingest", "read", "write", "floor", "export", "all")
AUTH_SOURCES = {
    "admin sign-in": "an admin account made with `vitasync-fhir create-user`, signed in at "
                     "POST /api/auth/login",
    "--token": "given with --token",
}
EXPORT_TARGET = 20_000  # resources/s of a whole-system $export
# Access tokens must outlive the run; the server is told so (VITASYNC_ACCESS_TOKEN_SECONDS).
TOKEN_SECONDS_MARGIN = 600
# What a read by id or a vread touches: warmed before the reads (procs.Postgres.prewarm).
PREWARMED = ("resources", "resource_history")

# -- Beside the reads: the same loads for searches, the /api face and the prescription PDF --------
# (name, path template); `{Type}` becomes a random id of that type from the ingest.
# The search queries are those of issue 3 that a client sends over and over; the tenfold latencies
# of all of them (and the deep page) are measured one at a time by `python -m benchmarks.search`.
OTHER_READS: list[tuple[str, str]] = [
    # Not patient data, so no AuditEvent: beside `read`, what auditing a read costs.
    ("read Practitioner (not audited)", "/fhir/Practitioner/{Practitioner}"),
    ("search Observation by patient, code, date",
     "/fhir/Observation?patient={Patient}&code=http://loinc.org|8867-4&date=ge2015-01-01"),
    ("search active prescriptions with requester",
     "/fhir/MedicationRequest?patient={Patient}&status=active"
     "&_include=MedicationRequest:requester"),
    ("search Patient by birthdate", "/fhir/Patient?birthdate=ge2000-01-01"),
    ("search Patient _has blood pressure panel",
     "/fhir/Patient?_has:Observation:patient:code=http://loinc.org|55284-4"),
    ("/api get patient", "/api/patients/{Patient}"),
    ("/api list vitals of a patient", "/api/vitals?patient={Patient}&per_page=20"),
    ("prescription PDF", "/api/prescriptions/{MedicationRequest}/pdf"),
]


def parse(argv: list[str] | None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    add = common.add_argument
    add("--workers", type=int, default=2, help="uvicorn workers of the server and the floor app")
    add("--duration", type=float, default=5,
        help="seconds per load measurement (transactions: three times as long)")
    add("--rounds", type=int, default=3,
        help="repeats of each load measurement; the report gives their medians")
    add("--warmup", type=float, default=3, help="seconds of unrecorded load before each series")
    add("--concurrency", default="1,8,32", help="concurrent connections, comma-separated")
    add("--posters", type=int, default=4, help="concurrent bundle posters during ingest")
    add("--limit", type=int, default=None, help="post only the first N patient bundles")
    add("--archive", type=Path, default=ingest.ARCHIVE, help="the Synthea .tar.xz")
    add("--database", default="vitasync_bench", help="database to (re)create for the run")
    add("--pg-host", default="127.0.0.1")
    add("--pg-port", type=int, default=5432)
    add("--pg-user", default="postgres")
    add("--pool-size", type=int, default=10,
        help="database connections per worker, server (VITASYNC_DB_POOL_SIZE) and floor alike")
    add("--token", default=os.environ.get("VITASYNC_BENCH_TOKEN"),
        help="bearer token sent on every request (default: $VITASYNC_BENCH_TOKEN)")
    add("--token-factory", default=None, metavar="MODULE:FUNCTION",
        help="callable(base_url=..., database_url=...) -> token, called once the server is up")
    add("--no-auth", action="store_true",
        help="send no token even when the server asks for one (by default the harness makes an "
             "admin account and signs in when the server refuses anonymous reads)")
    add("--generator", choices=("auto", "wrk", "httpx"), default="auto",
        help="load generator for reads and writes (auto: wrk when installed)")
    add("--reuse-db", action="store_true",
        help="keep the database's data (from an earlier --keep-db run) and skip the ingest")
    add("--keep-db", action="store_true", help="do not drop the database at the end")
    add("--only", default="", metavar="WORDS",
        help="reads: only the loads whose name holds one of these comma-separated words "
             "(the floor read always runs); for a quick A/B of one change")
    add("--profile", action="store_true",
        help="sample the server with py-spy during ingest (slows it; a separate run)")
    add("--pgbench-seconds", type=int, default=10)
    add("--pgbench-scale", type=int, default=10)
    add("--max-minutes", type=float, default=60, help="stop everything after this long")
    add("--no-record", action="store_true", help="print the report but write no results file")
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    helps = {
        "ingest": "post every Synthea bundle as a transaction; resources/s and bundle latency",
        "read": "read and vread by id at each concurrency, next to the floor app",
        "write": "create, update and the 70-entry transaction at each concurrency",
        "floor": "the floor app's read at each concurrency, and pgbench -S",
        "export": "a whole-system Bulk Data $export of the ingested data; resources/s",
        "all": "ingest, read (with the floor app), write, export and pgbench, in that order",
    }
    for name in COMMANDS:
        sub.add_parser(name, parents=[common], help=helps[name])
    return parser.parse_args(argv)


class Bench:
    """One run: owns the database, the servers and the results; stops everything on exit."""

    def __init__(self, args: argparse.Namespace, argv: list[str]) -> None:
        self.args = args
        self.pg = Postgres(args.pg_host, args.pg_port, args.pg_user)
        self.url = self.pg.sqlalchemy_url(args.database)
        self.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
        self.generator = _generator(args.generator)
        self.tmp = Path(tempfile.mkdtemp(prefix="vitasync-bench-"))
        # Keys, queues and outboxes of this run's server stay in the run's scratch folder,
        # never in the working tree's ./var (inherited by every process the harness starts).
        os.environ["VITASYNC_DATA_DIR"] = str(self.tmp / "data")
        self.server: Service | None = None
        self.floor: Service | None = None
        self.token: str | None = None
        self.locations: list[str] = []
        self.failed = False
        self.started = datetime.now(UTC)
        command = "python -m benchmarks.run " + shlex.join(argv)
        self.results: dict = {
            "started": self.started.strftime("%Y-%m-%d %H:%M UTC"),
            "command": command.strip(),
            "machine": report.machine(postgres_version=self.pg.version(),
                                      postgres_settings=self.pg.settings(),
                                      wrk=loadgen.wrk_version()),
            "config": {},
            "rss_kib": {},
            "notes": [],
        }

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._prepare()
            steps: dict[str, list[Callable[[], None]]] = {
                "ingest": [self.ingest],
                "read": [self.ensure_data, self.reads],
                "write": [self.ensure_data, self.writes],
                "floor": [self.ensure_data, self.floor_reads, self.pgbench],
                "export": [self.ensure_data, self.export],
                "all": [self.ingest, self.reads, self.writes, self.export, self.pgbench],
            }
            for step in steps[self.args.command]:
                step()
        finally:
            self.close()

    def _prepare(self) -> None:
        a = self.args
        if a.reuse_db:
            if not self.pg.exists(a.database):
                raise SystemExit(f"--reuse-db: database {a.database} does not exist")
        else:
            self.pg.recreate(a.database)
        migrate(self.url)
        self.server = start_vitasync(database_url=self.url, workers=a.workers,
                                     pool_size=a.pool_size,
                                     token_seconds=int(a.max_minutes * 60) + TOKEN_SECONDS_MARGIN)
        self.server.start()
        self.token, source = _token(a, self.server.base_url, self.url)
        self.results["config"] = {
            "workers": a.workers, "database": a.database, "pool_size": a.pool_size,
            "duration_s": a.duration, "rounds": a.rounds, "warmup_s": a.warmup,
            "concurrency": self.concurrency,
            "generator": self.generator, "posters": a.posters, "limit": a.limit,
            "auth": f"bearer token on every request ({AUTH_SOURCES.get(source, source)})"
            if self.token else "none: no token given and the server answers anonymous reads",
            "redis": _redis(), "postgres_connections_at_start": self.pg.connections(),
        }
        self.snapshot("after start")

    def close(self) -> None:
        if self.server is not None:
            # Past its start line the server logs warnings and errors only: each 5xx (500 with
            # its traceback, 503 with its cause). A status error with no line here was a 4xx.
            lines = [line for line in self.server.log(200_000).splitlines()
                     if line.strip() and not line.startswith("VitaSync FHIR on ")]
            self.results["notes"].append(
                f"server log: {len(lines)} lines of warnings and errors"
                + ("; the last: " + " | ".join(lines[-5:])[:1500] if lines else ""))
        for service in (self.floor, self.server):
            if service is not None:
                service.stop()
        self.floor = self.server = None
        if not self.args.keep_db and not self.args.reuse_db:
            try:
                self.pg.drop(self.args.database)
            except psycopg.Error as error:
                self.results["notes"].append(f"could not drop {self.args.database}: {error}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.results["load_average_at_end"] = list(os.getloadavg())
        self.results["finished"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")

    def snapshot(self, moment: str) -> None:
        """VmRSS/VmHWM of every worker of every running service."""
        taken: dict[str, dict[str, dict[str, int]]] = {}
        for service in (self.server, self.floor):
            if service is not None:
                taken[service.name] = {str(p): memory_kib(p) for p in service.workers()}
                renderers = service.renderers()
                if renderers:
                    taken[f"{service.name} PDF renderer"] = {str(p): memory_kib(p)
                                                             for p in renderers}
        self.results["rss_kib"][moment] = taken

    def cpu_groups(self) -> dict[str, Callable[[], list[int]]]:
        groups: dict[str, Callable[[], list[int]]] = {}
        if self.server is not None:
            server = self.server
            groups["ours"] = lambda: server.workers() + server.renderers()
        if self.floor is not None:
            groups["floor"] = self.floor.workers
        groups["pg"] = lambda: self.pg.backend_pids(self.args.database)
        return groups

    def settle(self) -> None:
        """Let the servers and PostgreSQL finish what the last load left in flight."""
        groups = self.cpu_groups()
        procs.settle(lambda: [p for pids in groups.values() for p in pids()])

    # -- ingest ------------------------------------------------------------------------------

    def ingest(self) -> None:
        assert self.server is not None
        a = self.args
        print(f"reading {a.archive} into memory ...", flush=True)
        started = time.perf_counter()
        info, patients = ingest.load_archive(a.archive, limit=a.limit)
        read_seconds = round(time.perf_counter() - started, 1)
        warm = asyncio.run(ingest.warm_up(self.server.base_url, self.token, workers=a.workers))
        print(f"posting {len(info)} info + {len(patients)} patient bundles "
              f"with {a.posters} posters ...", flush=True)
        with CpuMeter(self.cpu_groups()) as meter, self.profiling("ingest") as profile:
            results, info_seconds, total = asyncio.run(ingest.post_all(
                self.server.base_url, self.token, info, patients, posters=a.posters))
        profile["what"] = f"transaction ingest of {len(results)} bundles"
        summary = ingest.summary(results, info_seconds=info_seconds, total_seconds=total,
                                 info_count=len(info))
        summary.update(posters=a.posters, archive=str(a.archive), archive_read_seconds=read_seconds,
                       warm_up=warm, cpu_cores=meter.cores, cpu_split=meter.split,
                       profiled=a.profile,
                       **cpu_cost(meter.cores.get("ours", 0), meter.cores.get("pg", 0),
                                  seconds=meter.wall_s, requests=summary["resources_created"]))
        # What autovacuum does some time after a bulk load (this machine's PostgreSQL runs with
        # autovacuum off): without statistics the planner takes a 5,660-row code for one row.
        with psycopg.connect(self.pg.dsn(a.database), autocommit=True) as conn:
            conn.execute("ANALYZE")
        self.results["ingest"] = summary
        if a.profile:
            self.results["notes"].append("py-spy sampled the workers during this ingest, which "
                                         "slows it: its ingest numbers are not the benchmark's.")
        self.locations = [loc for p in results if not p.error for loc in p.locations]
        self.failed |= summary["failures"] > 0
        self.snapshot("after ingest")
        print(f"ingest: {summary['resources_created']} resources in {summary['seconds']} s = "
              f"{summary['resources_per_s']} resources/s, {summary['failures']} failures",
              flush=True)

    def ensure_data(self) -> None:
        """Ids to read and update: from this run's ingest, or from the reused database."""
        if self.locations:
            return
        if not self.args.reuse_db:
            self.ingest()
            return
        with psycopg.connect(self.pg.dsn(self.args.database)) as conn:
            # Not the AuditEvents earlier runs left: reading one first waits for the audit trail
            # to be written, and they are not the patient data a read load is about.
            rows = conn.execute(
                "SELECT resource_type, id, version_id FROM resources WHERE NOT deleted"
                " AND resource_type <> 'AuditEvent'").fetchall()
        self.locations = [f"{t}/{i}/_history/{v}" for t, i, v in rows]
        if not self.locations:
            raise SystemExit("--reuse-db: the database holds no resources; run an ingest first")

    # -- load ----------------------------------------------------------------------------------

    def paths_file(self, name: str, paths: list[str]) -> Path:
        path = self.tmp / f"{name}.txt"
        path.write_text("\n".join(paths) + "\n")
        return path

    def measure(self, job: Job, service: Service, concurrency: int, *,
                duration: float | None = None, quiet: bool = False) -> dict:
        """One fixed-duration load; its numbers plus the CPU each group of processes used."""
        self.settle()
        seconds = duration or self.args.duration * job.duration_factor
        with CpuMeter(self.cpu_groups()) as meter:
            result = loadgen.run(job, base_url=service.base_url, target=service.name,
                                 concurrency=concurrency, duration_s=seconds,
                                 token=self.token, generator=self.generator)
        if not quiet:
            print(f"  {service.name:8} {job.name:16} c={concurrency:<3} {result.rps:>9,.1f} "
                  f"req/s  p50 {result.p50_ms:.1f} p95 {result.p95_ms:.1f} "
                  f"p99 {result.p99_ms:.1f} ms  errors {result.errors}  "
                  f"cpu {report.cpu_text(meter.cores, meter.split)}", flush=True)
        group = "ours" if service is self.server else "floor"
        return {**result.as_dict(), "cpu_cores": meter.cores, "cpu_split": meter.split,
                **cpu_cost(meter.cores.get(group, 0), meter.cores.get("pg", 0),
                           seconds=meter.wall_s, requests=result.requests)}

    def warm(self, job: Job, service: Service) -> None:
        self.measure(job, service, 8, duration=self.args.warmup, quiet=True)

    def start_floor(self) -> Service:
        if self.floor is None:
            self.floor = floor_server(dsn=self.pg.dsn(self.args.database),
                                      workers=self.args.workers, pool_size=self.args.pool_size)
            self.floor.start()
        return self.floor

    def stop_floor(self) -> None:
        if self.floor is not None:
            self.snapshot("after read")
            self.floor.stop()
            self.floor = None

    def read_jobs(self) -> tuple[Job, list[Job]]:
        current = [f"/fhir/{loc.split('/_history/')[0]}" for loc in self.locations]
        versions = [f"/fhir/{loc}" for loc in self.locations]
        read = Job("read", self.paths_file("read", current))
        jobs = [read, Job("vread", self.paths_file("vread", versions))]
        ids: dict[str, list[str]] = {}
        for path in current:
            _, resource_type, resource_id = path.split("/", 3)[1:]
            ids.setdefault(resource_type, []).append(resource_id)
        for name, template in OTHER_READS:
            kind = re.search(r"\{(\w+)\}", template)
            pool = ids.get(kind[1], [])[:1000] if kind else [""]
            expanded = [template.replace(kind[0], i) if kind else template for i in pool]
            jobs.append(Job(name, self.paths_file(name.replace(" ", "-").replace("/", ""),
                                                  expanded)))
        return read, jobs

    def reads(self) -> None:
        """Floor read, our read and our vread, interleaved, `--rounds` times per concurrency;
        each of ours is paired with the floor measurement just before it."""
        assert self.server is not None
        self.ensure_data()
        self.prewarm()
        floor = self.start_floor()
        floor_job, ours = self.read_jobs()
        words = [w.strip() for w in self.args.only.split(",") if w.strip()]
        if words:
            ours = [j for j in ours if any(w in j.name for w in words)]
        print(f"reads of {len(self.locations):,} ids, {self.args.rounds} rounds of "
              f"{self.args.duration:g} s:", flush=True)
        for job, service in [(floor_job, floor), *((j, self.server) for j in ours)]:
            self.warm(job, service)
        self.snapshot("before read load")
        recorded: list[dict] = []
        for c in self.concurrency:
            rounds: dict[str, list[dict]] = {"floor": [], **{j.name: [] for j in ours}}
            for _ in range(self.args.rounds):
                base = self.measure(floor_job, floor, c)
                rounds["floor"].append(base)
                for job in ours:
                    mine = self.measure(job, self.server, c)
                    ratio = mine["rps"] / base["rps"] if base["rps"] else 0
                    mine["ratio_to_floor"] = round(ratio, 3)
                    mine["cpu_ratio_to_floor"] = _cpu_ratio(base, mine)
                    rounds[job.name].append(mine)
            recorded += [combine(r) for r in rounds.values()]
        self.results["reads"] = recorded
        if self.args.profile:
            self.profile_reads(ours[0])
        self.stop_floor()

    def profile_reads(self, job: Job) -> None:
        """An extra, unrecorded read load under py-spy (the recorded ones run without it)."""
        assert self.server is not None
        with self.profiling("read") as profile:
            self.measure(job, self.server, 8, quiet=True)
        profile["what"] = f"read by id, 8 clients, {self.args.duration:g} s"

    @contextlib.contextmanager
    def profiling(self, name: str) -> Iterator[dict]:
        """py-spy on the server's workers for the block, when --profile is given."""
        profile: dict = {}
        if not self.args.profile:
            yield profile
            return
        assert self.server is not None and self.server.process is not None
        supervisor = self.server.process.pid
        raw = self.tmp / f"pyspy-{name}.raw"
        started = time.perf_counter()
        with pyspy.Recorder(supervisor, raw):
            yield profile
        profile.update(pyspy.top(raw, exclude_pids={supervisor}), rate=pyspy.RATE_HZ,
                       seconds=round(time.perf_counter() - started, 1))
        self.results.setdefault("profile", {})[name] = profile

    def prewarm(self) -> None:
        text = self.pg.prewarm(self.args.database, PREWARMED)
        print(text, flush=True)
        self.results["notes"].append(f"before the reads, {text}.")

    def floor_reads(self) -> None:
        self.prewarm()
        floor = self.start_floor()
        floor_job, _ = self.read_jobs()
        self.warm(floor_job, floor)
        self.results["reads"] = [
            combine([self.measure(floor_job, floor, c) for _ in range(self.args.rounds)])
            for c in self.concurrency
        ]
        self.stop_floor()

    def write_jobs(self) -> list[Job]:
        bundle = orjson.loads(ingest.SEVENTY.read_bytes())
        patient = next(e["resource"] for e in bundle["entry"]
                       if e["resource"]["resourceType"] == "Patient")
        create = {k: v for k, v in patient.items() if k != "id"}
        update = {**patient, "id": "__ID__", "multipleBirthInteger": "__N__"}
        update_text = orjson.dumps(update).decode().replace('"__N__"', "__N__")
        patients = [f"/fhir/{loc.split('/_history/')[0]}" for loc in self.locations
                    if loc.startswith("Patient/")]
        create_body = self.tmp / "create.json"
        create_body.write_bytes(orjson.dumps(create))
        update_body = self.tmp / "update.json"
        update_body.write_text(update_text)
        entries = len(bundle["entry"])
        return [
            Job("create Patient", self.paths_file("create", ["/fhir/Patient"]), "POST",
                create_body),
            Job("update Patient", self.paths_file("update", patients), "PUT", update_body),
            # A transaction takes seconds at 32 clients: give it long enough to finish several.
            Job(f"transaction ({entries})", self.paths_file("tx", ["/fhir"]), "POST",
                ingest.SEVENTY, entries_per_request=entries, duration_factor=3),
        ]

    def writes(self) -> None:
        assert self.server is not None
        self.ensure_data()
        print(f"writes, {self.args.rounds} rounds of {self.args.duration:g} s:", flush=True)
        recorded: list[dict] = []
        for job in self.write_jobs():
            self.warm(job, self.server)
            for c in self.concurrency:
                recorded.append(combine([self.measure(job, self.server, c)
                                         for _ in range(self.args.rounds)]))
        self.results["writes"] = recorded
        self.snapshot("after write")

    # -- export ------------------------------------------------------------------------------

    def export(self) -> None:
        assert self.server is not None
        self.settle()
        print("whole-system $export ...", flush=True)
        with CpuMeter(self.cpu_groups()) as meter:
            result = asyncio.run(bulk_export.measure(self.server.base_url, self.token))
        with psycopg.connect(self.pg.dsn(self.args.database)) as conn:
            stored = conn.execute(
                "SELECT count(*) FROM resources WHERE NOT deleted AND last_updated <= %s",
                (result["transaction_time"],)).fetchone()[0]
            job = result["status_url"].rsplit("/", 1)[1]
            started, finished = conn.execute(
                "SELECT started_at, finished_at FROM export_jobs WHERE id = %s", (job,)).fetchone()
        job_seconds = (finished - started).total_seconds()
        result.update(stored_resources=stored, cpu_cores=meter.cores, cpu_split=meter.split,
                      job_seconds=round(job_seconds, 3),
                      job_resources_per_s=round(result["resources"] / job_seconds, 1))
        self.results["export"] = result
        self.failed |= result["resources"] != stored or result["lines_downloaded"] != stored
        print(f"  export: {result['resources']:,} resources in {result['export_seconds']} s = "
              f"{result['resources_per_s']:,.0f} resources/s (store: {stored:,}); the job alone "
              f"{result['job_seconds']} s = {result['job_resources_per_s']:,.0f}/s; download "
              f"{result['download_resources_per_s']:,.0f} resources/s", flush=True)

    # -- pgbench -----------------------------------------------------------------------------

    def pgbench(self) -> None:
        if shutil.which("pgbench") is None:
            self.results["notes"].append("pgbench is not installed (apt-get install "
                                         "postgresql-client): no pgbench floor in this run.")
            return
        a = self.args
        scratch = f"{a.database}_pgbench"
        conn = ["-h", a.pg_host, "-p", str(a.pg_port), "-U", a.pg_user]
        self.pg.recreate(scratch)
        try:
            print(f"pgbench -S -c 8 -T {a.pgbench_seconds} on {scratch} ...", flush=True)
            subprocess.run(["pgbench", "-i", "-q", "-s", str(a.pgbench_scale), *conn, scratch],
                           check=True, capture_output=True, timeout=600)
            logs = self.tmp / "pgbench"
            logs.mkdir()
            # pgbench's own backends come and go with it, so their CPU lands in "others".
            with CpuMeter({}) as meter:
                run = subprocess.run(
                    ["pgbench", "-S", "-c", "8", "-T", str(a.pgbench_seconds), "-l",
                     f"--log-prefix={logs}/pgbench", *conn, scratch],
                    check=True, capture_output=True, text=True, timeout=a.pgbench_seconds + 120)
            self.results["pgbench"] = {**_pgbench_numbers(run.stdout, logs),
                                       "scale": a.pgbench_scale, "clients": 8,
                                       "seconds": a.pgbench_seconds, "cpu_cores": meter.cores}
            p = self.results["pgbench"]
            print(f"  pgbench -S c=8 {p['tps']:,.0f} tps p50 {p['p50_ms']:.2f} ms", flush=True)
        finally:
            self.pg.drop(scratch)

    # -- targets -------------------------------------------------------------------------------

    def targets(self) -> None:
        targets = []
        authed = "authenticated" if self.token else "unauthenticated"
        reads = self.results.get("reads") or []
        for r in reads:
            ours = r["target"] == "vitasync" and r["name"] == "read"
            if ours and r.get("ratio_to_floor") is not None:
                floor = next(f for f in reads if f["target"] == "floor"
                             and f["concurrency"] == r["concurrency"])
                targets.append({
                    "target": f"read ≥ {report.READ_TARGET:.0%} of the floor app, "
                              f"{r['concurrency']} clients ({authed})",
                    "measured": f"{r['ratio_to_floor']:.0%} ({r['rps']:,.0f} vs "
                                f"{floor['rps']:,.0f} req/s); by CPU per request "
                                f"{r['cpu_ratio_to_floor']:.0%}",
                    "met": r["ratio_to_floor"] >= report.READ_TARGET,
                })
        i = self.results.get("ingest")
        if i:
            whole = i["patient_bundles"] >= 615
            targets.append({
                "target": f"transaction ingest ≥ {report.INGEST_TARGET:,.0f} resources/s"
                          + ("" if whole else f" (only {i['patient_bundles']} patient bundles)"),
                "measured": f"{i['resources_per_s']:,.0f} resources/s "
                            f"({i['resources_created']:,} in {i['seconds']:,.1f} s, "
                            f"{i['failures']} failures); by CPU per resource at most "
                            f"{_ceiling(i):,.0f}/s with both cores",
                "met": i["resources_per_s"] >= report.INGEST_TARGET and i["failures"] == 0,
            })
        e = self.results.get("export")
        if e:
            targets.append({
                "target": f"whole-system $export ≥ {EXPORT_TARGET:,} resources/s",
                "measured": f"{e['resources_per_s']:,.0f} resources/s ({e['resources']:,} "
                            f"resources in {e['export_seconds']:,.1f} s; store held "
                            f"{e['stored_resources']:,})",
                "met": e["resources_per_s"] >= EXPORT_TARGET
                and e["resources"] == e["stored_resources"],
            })
        self.results["targets"] = targets


def cpu_cost(workers: float, pg: float, *, seconds: float, requests: int) -> dict:
    """CPU milliseconds per request in the service's workers and in PostgreSQL: the numbers the
    other users of the machine disturb least (they take CPU time away, not add to it)."""
    per = seconds * 1000 / requests if requests else 0.0
    return {"worker_cpu_ms": round(workers * per, 3), "pg_cpu_ms": round(pg * per, 3)}


def combine(rounds: list[dict]) -> dict:
    """The rounds of one measurement as one row: medians of each number, sums of counts."""
    first = rounds[0]

    def median(key: str) -> float:
        return round(statistics.median(r[key] for r in rounds), 3)

    row = {
        "name": first["name"], "target": first["target"], "concurrency": first["concurrency"],
        "generator": first["generator"], "rounds": len(rounds),
        "duration_s": round(sum(r["duration_s"] for r in rounds), 1),
        "requests": sum(r["requests"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
        "error_detail": "; ".join(sorted({r["error_detail"] for r in rounds if r["error_detail"]})),
        "max_ms": max(r["max_ms"] for r in rounds),
        **{k: median(k) for k in ("rps", "resources_per_s", "mean_ms", "p50_ms", "p95_ms",
                                  "p99_ms", "worker_cpu_ms", "pg_cpu_ms")},
        "rps_rounds": [r["rps"] for r in rounds],
        "cpu_cores": {k: round(statistics.median(r["cpu_cores"].get(k, 0) for r in rounds), 2)
                      for k in first["cpu_cores"]},
        "cpu_split_rounds": [r["cpu_split"] for r in rounds],
    }
    if "ratio_to_floor" in first:
        row["ratio_to_floor"] = median("ratio_to_floor")
        row["ratio_rounds"] = [r["ratio_to_floor"] for r in rounds]
        row["cpu_ratio_to_floor"] = median("cpu_ratio_to_floor")
    return row


def _ceiling(row: dict) -> float:
    """Requests (or resources) per second if the server's workers and its PostgreSQL backends
    had every core of the machine to themselves at the CPU cost measured."""
    cost = row["worker_cpu_ms"] + row["pg_cpu_ms"]
    return (os.cpu_count() or 1) * 1000 / cost if cost else 0.0


def _cpu_ratio(floor: dict, ours: dict) -> float:
    """The floor's CPU per request over ours (workers + PostgreSQL): the throughput ratio the two
    would have if each had the same CPU to itself."""
    mine = ours["worker_cpu_ms"] + ours["pg_cpu_ms"]
    return round((floor["worker_cpu_ms"] + floor["pg_cpu_ms"]) / mine, 3) if mine else 0.0


def _generator(choice: str) -> str:
    if choice == "auto":
        return "wrk" if loadgen.have_wrk() else "httpx"
    if choice == "wrk" and not loadgen.have_wrk():
        raise SystemExit("wrk is not installed: apt-get install wrk (or --generator httpx)")
    return choice


def _token(args: argparse.Namespace, base_url: str, database_url: str) -> tuple[str | None, str]:
    """(the bearer token to send, where it came from)."""
    if args.token_factory:
        module, _, name = args.token_factory.partition(":")
        factory = getattr(importlib.import_module(module), name)
        return str(factory(base_url=base_url, database_url=database_url)), args.token_factory
    if args.token:
        return args.token, "--token"
    if args.no_auth or not auth.requires_token(base_url):
        return None, "none"
    return auth.admin_token(base_url=base_url, database_url=database_url), "admin sign-in"


def _redis() -> str:
    try:
        import redis

        ok = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2).ping()
        return "answering at 127.0.0.1:6379 (not used by the server yet)" if ok else "no answer"
    except Exception as error:  # noqa: BLE001 - any failure just means "not there"
        return f"not reachable ({type(error).__name__})"


def _pgbench_numbers(stdout: str, logs: Path) -> dict:
    tps = 0.0
    failed = 0
    for line in stdout.splitlines():
        if line.startswith("tps =") and "without" in line:
            tps = float(line.split("=")[1].split()[0])
        if line.startswith("number of failed transactions"):
            failed = int(line.split(":")[1].split()[0])
    latencies = []
    for log in logs.iterdir():
        for line in log.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[2].isdigit():
                latencies.append(int(fields[2]) / 1000)
    latencies.sort()
    return {"tps": tps, "failed": failed, "transactions": len(latencies),
            **{f"p{p}_ms": round(loadgen.percentile(latencies, p), 3) for p in (50, 95, 99)}}


def _interrupt(signum: int, _frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGALRM, _interrupt)
    signal.alarm(int(args.max_minutes * 60))
    bench = Bench(args, argv)
    try:
        bench.run()
    except Exception as error:  # noqa: BLE001 - record what was measured, then fail
        traceback.print_exc()
        bench.results["notes"].append(f"the run stopped early: {type(error).__name__}: {error}")
        bench.failed = True
    finally:
        signal.alarm(0)
    bench.targets()
    markdown = report.render(bench.results)
    if args.no_record:
        print(markdown)
    else:
        paths = report.write(bench.results, stamp=bench.started, profiled=args.profile)
        print("\nrecorded " + ", ".join(str(p) for p in paths))
    return 1 if bench.failed else 0


if __name__ == "__main__":
    sys.exit(main())
