"""Processes and databases the harness owns: servers on free loopback ports, scratch databases,
and what /proc says about them (resident memory, CPU time).

Every process started here runs in its own session (process group) and is stopped by the id of
that group, so nothing outlives the run and nothing that others started is touched.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
START_TIMEOUT_S = 90
STOP_TIMEOUT_S = 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- databases -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Postgres:
    """The PostgreSQL server the benchmarks use; only databases named here are ever touched."""

    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"

    def dsn(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def sqlalchemy_url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn("postgres"), autocommit=True, connect_timeout=5)

    def recreate(self, database: str) -> None:
        with self.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(database)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))

    def drop(self, database: str) -> None:
        with self.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(database)))

    def exists(self, database: str) -> bool:
        with self.admin() as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            return row.fetchone() is not None

    def version(self) -> str:
        with self.admin() as conn:
            return str(conn.execute("SHOW server_version").fetchone()[0])

    def settings(self) -> dict[str, str]:
        names = ("shared_buffers", "max_connections", "synchronous_commit", "fsync", "autovacuum")
        with self.admin() as conn:
            return {n: str(conn.execute(f"SHOW {n}").fetchone()[0]) for n in names}

    def backend_pids(self, database: str) -> list[int]:
        with self.admin() as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,)
            ).fetchall()
        return [int(r[0]) for r in rows]

    def prewarm(self, database: str, tables: tuple[str, ...], *, small_mib: int = 64) -> str:
        """Read `tables`, their indexes and every relation under `small_mib` into the OS page
        cache (pg_prewarm's 'read' mode); what was read, or why nothing was.

        This machine gives idle page cache back (a PostgreSQL left alone for minutes reads its
        tables from disk again), and the floor reads one table where a vread reads another: warm
        both, so a ratio compares code, not which pages happened to be cached.
        """
        query = """
            WITH named AS (
                SELECT oid, reltoastrelid FROM pg_class
                WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'
                  AND relname = ANY(%(tables)s)),
            base AS (SELECT oid FROM named
                     UNION SELECT reltoastrelid FROM named WHERE reltoastrelid <> 0),
            chosen AS (
                SELECT oid FROM base
                UNION SELECT indexrelid FROM pg_index WHERE indrelid IN (SELECT oid FROM base)
                UNION SELECT oid FROM pg_class
                WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'i')
                  AND pg_relation_size(oid) < %(small)s)
            SELECT oid::regclass::text, pg_prewarm(oid, 'read') FROM chosen
        """
        started = time.perf_counter()
        try:
            with psycopg.connect(self.dsn(database), autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
                rows = conn.execute(query, {"tables": list(tables),
                                            "small": small_mib * 2**20}).fetchall()
        except psycopg.Error as error:
            return f"pg_prewarm not run ({error}): the caches are as the load left them"
        pages = sum(int(blocks) for _, blocks in rows)
        return (f"pg_prewarm read {len(rows)} relations ({pages * 8 / 1024:,.0f} MiB: "
                f"{', '.join(tables)} with their TOAST tables and indexes, and every "
                f"relation under {small_mib} MiB) "
                f"into the OS page cache in {time.perf_counter() - started:.1f} s")

    def connections(self) -> int:
        with self.admin() as conn:
            return int(conn.execute("SELECT count(*) FROM pg_stat_activity").fetchone()[0])


# -- /proc -------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name sits in parentheses and may hold spaces; the fields after it are fixed.
    return text[text.rindex(")") + 2:].split()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of one process so far; 0 when it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None and int(fields[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident) of one process, in KiB."""
    values: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    except OSError:
        pass
    return values


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in first[:8])
    busy = user + nice + system + irq + softirq + steal
    return busy / CLOCK_TICKS, (busy + idle + iowait) / CLOCK_TICKS


# -- services ----------------------------------------------------------------------------------


@dataclass
class Service:
    """A server process group on a loopback port, answering `ready_path` once it is up."""

    name: str
    command: list[str]
    port: int
    env: dict[str, str]
    ready_path: str
    log_path: Path = field(init=False)
    process: subprocess.Popen | None = field(default=None, init=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        handle, name = tempfile.mkstemp(prefix=f"vitasync-bench-{self.name}-", suffix=".log")
        os.close(handle)
        self.log_path = Path(name)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise RuntimeError(f"{self.name} exited with {code}:\n{self.log()}")
            try:
                if httpx.get(self.base_url + self.ready_path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer within {START_TIMEOUT_S} s:\n{self.log()}")

    def log(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except (OSError, AttributeError):
            return ""

    def workers(self) -> list[int]:
        """The uvicorn worker processes: spawned children, or the server itself with one worker."""
        if self.process is None or self.process.poll() is not None:
            return []
        spawned = [p for p in children(self.process.pid) if "spawn_main" in cmdline(p)]
        return spawned or [self.process.pid]

    def renderers(self) -> list[int]:
        """The PDF renderer processes the workers spawned (vitasync_fhir/documents/renderer.py)."""
        workers = self.workers()
        return [c for w in workers for c in children(w)
                if c not in workers and "spawn_main" in cmdline(c)]

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT_S)
        # Workers that outlived their supervisor share its process group id.
        _signal_group(process.pid, signal.SIGKILL)
        try:
            self.log_path.unlink()
        except OSError:
            pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def vitasync_server(*, database_url: str, workers: int, pool_size: int,
                    token_seconds: int) -> Service:
    port = free_port()
    env = {"VITASYNC_DATABASE_URL": database_url, "VITASYNC_BASE_URL": f"http://127.0.0.1:{port}",
           "VITASYNC_DB_POOL_SIZE": str(pool_size),
           "VITASYNC_ACCESS_TOKEN_SECONDS": str(token_seconds)}
    command = [sys.executable, "-m", "vitasync_fhir", "serve", "--host", "127.0.0.1",
               "--port", str(port), "--workers", str(workers)]
    return Service("vitasync", command, port, env, "/fhir/metadata")


def floor_server(*, dsn: str, workers: int, pool_size: int) -> Service:
    port = free_port()
    env = {"FLOOR_DATABASE_DSN": dsn, "FLOOR_POOL_SIZE": str(pool_size)}
    command = [sys.executable, "-m", "uvicorn", "benchmarks.floor_app:app", "--host", "127.0.0.1",
               "--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    return Service("floor", command, port, env, "/fhir/metadata")


def migrate(database_url: str) -> None:
    env = {**os.environ, "VITASYNC_DATABASE_URL": database_url}
    subprocess.run([sys.executable, "-m", "vitasync_fhir", "migrate"], cwd=ROOT, env=env,
                   check=True, timeout=300, stdout=subprocess.DEVNULL)


# -- where the CPU went --------------------------------------------------------------------------


class CpuMeter:
    """CPU seconds spent by named groups of processes, and by the rest of the machine, over a span.

    A group is a function giving its pids now; a pid first seen at the end counts from zero, a
    pid gone by the end is lost (the harness's own pools keep their processes for the whole span).
    """

    def __init__(self, groups: dict[str, Callable[[], Iterable[int]]]) -> None:
        self.groups = groups

    def __enter__(self) -> CpuMeter:
        self._start = {
            name: {p: cpu_seconds(p) for p in pids()} for name, pids in self.groups.items()
        }
        self._self = _own_cpu()
        self._machine = machine_cpu()
        self._wall = time.monotonic()
        return self

    def __exit__(self, *_exc: object) -> None:
        wall = time.monotonic() - self._wall
        used: dict[str, float] = {}
        self.split: dict[str, list[float]] = {}
        for name, pids in self.groups.items():
            before = self._start[name]
            per_pid = [max(0.0, cpu_seconds(p) - before.get(p, 0.0)) for p in pids()]
            used[name] = sum(per_pid)
            self.split[name] = [round(s / wall, 2) for s in per_pid]
        used[HARNESS] = _own_cpu() - self._self
        busy = machine_cpu()[0] - self._machine[0]
        used[OTHERS] = max(0.0, busy - sum(used.values()))
        self.wall_s = wall
        self.cores = {name: round(seconds / wall, 2) for name, seconds in used.items()}
        self.machine_busy_cores = round(busy / wall, 2)


HARNESS = "harness+loadgen"
OTHERS = "others"


def settle(
    pids: Callable[[], Iterable[int]], *, below: float = 0.1, timeout_s: float = 90
) -> float:
    """Wait until `pids` use less than `below` cores (work left over from the last load has
    drained, e.g. requests a load generator gave up on); the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        watched = list(pids())
        before = sum(cpu_seconds(p) for p in watched)
        time.sleep(0.5)
        if sum(cpu_seconds(p) for p in watched) - before < below * 0.5:
            break
    return round(time.monotonic() - started, 1)


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system
