"""Fixed-duration load at a given concurrency: wrk with benchmarks/wrk/fhir.lua, or, where wrk is
missing, an asyncio + httpx client with the same behaviour (which costs far more CPU, and on a
2-core machine takes it from the server, so its numbers are lower bounds).
"""

from __future__ import annotations

import asyncio
import math
import random
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import orjson

LUA = Path(__file__).resolve().parent / "wrk" / "fhir.lua"
WRK_TIMEOUT = "60s"


@dataclass
class Job:
    """What to send: a random path from `paths_file` each time, with an optional body template."""

    name: str
    paths_file: Path
    method: str = "GET"
    body_file: Path | None = None
    entries_per_request: int = 1  # resources written by one request (a transaction has many)
    duration_factor: float = 1.0  # slow requests get a longer measurement


@dataclass
class Result:
    name: str
    target: str
    concurrency: int
    duration_s: float
    requests: int
    errors: int
    rps: float
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    generator: str
    resources_per_s: float = 0.0
    error_detail: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def wrk_version() -> str:
    if not have_wrk():
        return "absent"
    run = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=10)
    return (run.stdout or run.stderr).splitlines()[0].strip() if (run.stdout or run.stderr) else "?"


def run(job: Job, *, base_url: str, target: str, concurrency: int, duration_s: float,
        token: str | None, generator: str) -> Result:
    if generator == "wrk":
        result = _wrk(job, base_url, target, concurrency, duration_s, token)
    else:
        result = asyncio.run(_httpx(job, base_url, target, concurrency, duration_s, token))
    result.resources_per_s = round(result.rps * job.entries_per_request, 1)
    return result


# -- wrk ---------------------------------------------------------------------------------------


def _wrk(job: Job, base_url: str, target: str, concurrency: int, duration_s: float,
         token: str | None) -> Result:
    # One wrk thread drives tens of thousands of requests a second; a second would take CPU
    # from the server on a 2-core machine.
    command = [
        "wrk", "-t1", f"-c{concurrency}", f"-d{duration_s:g}s", f"--timeout={WRK_TIMEOUT}",
        "-s", str(LUA), base_url, "--",
        str(job.paths_file), job.method, str(job.body_file or "-"), token or "-",
    ]
    completed = subprocess.run(command, capture_output=True, text=True,
                               timeout=duration_s + 120)
    line = next((x for x in completed.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stderr[-2000:]}")
    data = orjson.loads(line[len("WRK_JSON "):])
    seconds = data["duration_us"] / 1e6
    errors = sum(data[k] for k in ("connect_errors", "read_errors", "write_errors",
                                   "status_errors", "timeout_errors"))
    detail = ", ".join(f"{k.removesuffix('_errors')} {data[k]}" for k in
                       ("connect_errors", "read_errors", "write_errors", "status_errors",
                        "timeout_errors") if data[k])
    return Result(
        name=job.name, target=target, concurrency=concurrency, duration_s=round(seconds, 2),
        requests=data["requests"], errors=errors, rps=round(data["requests"] / seconds, 1),
        mean_ms=round(data["mean_us"] / 1000, 2), p50_ms=round(data["p50_us"] / 1000, 2),
        p95_ms=round(data["p95_us"] / 1000, 2), p99_ms=round(data["p99_us"] / 1000, 2),
        max_ms=round(data["max_us"] / 1000, 2), generator="wrk", error_detail=detail,
    )


# -- asyncio + httpx fallback --------------------------------------------------------------------


async def _httpx(job: Job, base_url: str, target: str, concurrency: int, duration_s: float,
                 token: str | None) -> Result:
    paths = [p for p in job.paths_file.read_text().splitlines() if p]
    template = job.body_file.read_text() if job.body_file else None
    headers = {"Accept": "application/fhir+json"}
    if template is not None:
        headers["Content-Type"] = "application/fhir+json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    counter = iter(range(1, 1 << 62))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    started = time.perf_counter()
    deadline = started + duration_s

    async def client_loop(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            path = random.choice(paths)
            body = None
            if template is not None:
                body = template.replace("__ID__", path.rsplit("/", 1)[-1]).replace(
                    "__N__", str(next(counter)))
            sent = time.perf_counter()
            try:
                response = await client.request(job.method, path, content=body)
                status = str(response.status_code) if response.status_code >= 400 else ""
            except httpx.HTTPError as error:
                status = type(error).__name__
            if status:
                statuses[status] = statuses.get(status, 0) + 1
            else:
                latencies.append(time.perf_counter() - sent)

    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits,
                                 timeout=60) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    errors = sum(statuses.values())
    requests = len(latencies) + errors
    ms = sorted(x * 1000 for x in latencies) or [0.0]
    return Result(
        name=job.name, target=target, concurrency=concurrency, duration_s=round(seconds, 2),
        requests=requests, errors=errors, rps=round(requests / seconds, 1),
        mean_ms=round(sum(ms) / len(ms), 2), p50_ms=round(percentile(ms, 50), 2),
        p95_ms=round(percentile(ms, 95), 2), p99_ms=round(percentile(ms, 99), 2),
        max_ms=round(ms[-1], 2), generator="httpx",
        error_detail=", ".join(f"{k} {v}" for k, v in sorted(statuses.items())),
    )


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
