"""The record of a run: the machine it ran on, a JSON file per run, and `results/latest.md`."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime
from pathlib import Path

import orjson

from benchmarks.procs import ROOT

RESULTS = Path(__file__).resolve().parent / "results"
READ_TARGET = 0.60  # authenticated read throughput at least 60% of the floor app
INGEST_TARGET = 1500.0  # resources/s over the whole Synthea archive


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    return 0.0


def _git(*args: str) -> str:
    # Read-only: --no-optional-locks keeps `status` from refreshing the index.
    try:
        run = subprocess.run(["git", "--no-optional-locks", *args], cwd=ROOT, capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return run.stdout.strip() if run.returncode == 0 else ""


def _tool_version(command: list[str]) -> str:
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "absent"
    out = (run.stdout or run.stderr).strip().splitlines()
    return out[0] if out else "?"


def machine(*, postgres_version: str, postgres_settings: dict[str, str], wrk: str) -> dict:
    return {
        "nproc": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "postgresql": postgres_version,
        "postgresql_settings": postgres_settings,
        "python": platform.python_version(),
        "wrk": wrk,
        "pgbench": _tool_version(["pgbench", "--version"]),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_uncommitted_changes": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "load_average_at_start": list(os.getloadavg()),
    }


def write(results: dict, *, stamp: datetime, profiled: bool = False) -> list[Path]:
    """The run's JSON and Markdown; latest.md too, unless py-spy slowed the run down."""
    RESULTS.mkdir(exist_ok=True)
    name = stamp.strftime("%Y-%m-%d-%H%M") + ("-profile" if profiled else "")
    json_path = RESULTS / f"{name}.json"
    json_path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    markdown = render(results)
    written = [json_path, RESULTS / f"{name}.md"]
    written[1].write_text(markdown)
    if not profiled:
        written.append(RESULTS / "latest.md")
        written[2].write_text(markdown)
    return written


# -- Markdown ------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _num(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def cpu_text(cores: dict[str, float] | None, split: dict[str, list[float]] | None = None) -> str:
    """CPU cores each group used, e.g. `ours 1.10 (0.55+0.55) · pg 0.20 · others 0.90`."""
    if not cores:
        return ""
    parts = []
    for name, value in cores.items():
        if value < 0.01:
            continue
        per = (split or {}).get(name) or [] if name in ("ours", "floor") else []
        parts.append(f"{name} {value:.2f}" + (f" ({'+'.join(f'{v:.2f}' for v in per)})"
                                              if len(per) > 1 else ""))
    return " · ".join(parts)


def _split(row: dict) -> str:
    """How the measured service's workers shared the work, round by round."""
    group = "ours" if row["target"] == "vitasync" else row["target"]
    rounds = [s.get(group) or [] for s in row.get("cpu_split_rounds") or []]
    return " / ".join("+".join(f"{v:.2f}" for v in r) for r in rounds if r)


def render(r: dict) -> str:
    m = r["machine"]
    c = r["config"]
    pg_settings = ", ".join(f"{k} {v}" for k, v in m["postgresql_settings"].items())
    out = [f"# VitaSync FHIR benchmark, {r['started']}", ""]
    out += [f"Command: `{r['command']}`", ""]
    commit = m["git_commit"] + (" plus uncommitted changes in the working tree"
                                if m["git_uncommitted_changes"] else "")
    out += _table(["", ""], [
        ["machine", f"{m['nproc']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, "
                    f"kernel {m['kernel']}"],
        ["PostgreSQL", f"{m['postgresql']} ({pg_settings})"],
        ["Python / wrk / pgbench", f"{m['python']} / {m['wrk']} / {m['pgbench']}"],
        ["git commit", commit],
        ["server", f"`vitasync-fhir serve --workers {c['workers']}`, database `{c['database']}`; "
                   f"Redis {c['redis']}"],
        ["floor app", f"benchmarks/floor_app.py under uvicorn, {c['workers']} workers, "
                      f"pool {c['pool_size']}+{c['pool_size']} per worker"],
        ["authentication", c["auth"]],
        ["load generator", f"{c['generator']}, {c['duration_s']:g} s per measurement after "
                           f"{c['warmup_s']:g} s warm-up"],
        ["load average", f"{_loads(m['load_average_at_start'])} at start, "
                         f"{_loads(r.get('load_average_at_end', []))} at end"],
    ])
    out += _targets(r)
    out += _ingest(r.get("ingest"))
    out += _reads(r.get("reads") or [], r.get("pgbench"))
    out += _writes(r.get("writes") or [])
    out += _memory(r.get("rss_kib") or {})
    if r.get("profile"):
        out += _profile(r["profile"])
    if r.get("notes"):
        out += ["## Notes", ""] + [f"- {n}" for n in r["notes"]] + [""]
    return "\n".join(out)


def _loads(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values) if values else "–"


def _targets(r: dict) -> list[str]:
    if not r.get("targets"):
        return []
    rows = [[t["target"], t["measured"], "met" if t["met"] else "**not met**"]
            for t in r["targets"]]
    return ["## Targets", ""] + _table(["target", "measured", ""], rows)


def _ingest(i: dict | None) -> list[str]:
    if not i:
        return []
    b = i["bundle_ms"]
    out = ["## Transaction ingest of the Synthea archive", ""]
    out += _table(
        ["bundles", "resources", "seconds", "resources/s", "bundle p50 / p95 / p99 / max ms",
         "failures", "posters"],
        [[f"{i['bundles']} ({i['info_bundles']} info + {i['patient_bundles']} patients)",
          _num(i["resources_created"]), _num(i["seconds"], 1), _num(i["resources_per_s"]),
          f"{_num(b['p50'])} / {_num(b['p95'])} / {_num(b['p99'])} / {_num(b['max'])}",
          i["failures"], i["posters"]]],
    )
    out += [f"Info bundles first, one at a time: {i['info_seconds']} s. Patient bundles alone: "
            f"{_num(i['patient_phase_resources_per_s'])} resources/s. Median "
            f"{i['ms_per_resource_p50']} ms per resource within a bundle. Reading the archive "
            f"into memory (not timed): {i['archive_read_seconds']} s. Warm-up before the clock: "
            f"{i['warm_up']['bundles']} × the 70-entry bundle, {i['warm_up']['seconds']} s.", ""]
    cpu = cpu_text(i.get("cpu_cores"), i.get("cpu_split"))
    out += [f"CPU during ingest, in cores (of {os.cpu_count()}): {cpu}. CPU per resource: "
            f"{i.get('worker_cpu_ms', 0):.2f} ms in the server's workers, "
            f"{i.get('pg_cpu_ms', 0):.2f} ms in PostgreSQL backends.", ""]
    for example in i["failure_examples"]:
        out.append(f"- failure: {example}")
    return out + ([""] if i["failure_examples"] else [])


def _reads(reads: list[dict], pgbench: dict | None) -> list[str]:
    if not reads and not pgbench:
        return []
    out = ["## Reads and the floor", ""]
    rows = []
    for x in reads:
        ratio = f"{x['ratio_to_floor']:.0%}" if x.get("ratio_to_floor") is not None else ""
        cpu_ratio = f"{x['cpu_ratio_to_floor']:.0%}" if x.get("cpu_ratio_to_floor") else ""
        rows.append([f"{x['target']} {x['name']}", x["concurrency"], _num(x["rps"]),
                     _latency(x), _errors(x), ratio, _cost(x), cpu_ratio,
                     cpu_text(x.get("cpu_cores")), _split(x)])
    if pgbench:
        rows.append([f"pgbench -S (scale {pgbench['scale']}, {pgbench['seconds']} s)",
                     pgbench["clients"], _num(pgbench["tps"]),
                     f"{pgbench['p50_ms']:.2f} / {pgbench['p95_ms']:.2f} / {pgbench['p99_ms']:.2f}",
                     pgbench.get("failed", 0), "", "", "", cpu_text(pgbench.get("cpu_cores")), ""])
    out += _table(["measurement", "clients", "req/s", "p50 / p95 / p99 ms", "errors",
                   "ratio to floor read", "CPU ms per request (workers + pg)",
                   "ratio by CPU per request", "CPU cores (median)",
                   "worker CPU split per round"], rows)
    out += ["Each row is the median of its rounds; a ratio is the median of the ratios of each "
            "round to the floor read measured just before it at the same number of clients "
            "(vread too is compared with the floor's read). The ratio by CPU per request is the "
            "floor's CPU milliseconds per request (its workers plus PostgreSQL) over ours: what "
            "the throughput ratio would be if each had the same CPU to itself, and much less "
            "disturbed by other users of the machine than req/s. CPU groups: ours = the server's "
            "workers, floor = the floor app's workers, pg = PostgreSQL backends of the benchmark "
            "database, harness+loadgen = this harness with wrk, others = everything else on the "
            "machine (other users, PostgreSQL background work, pgbench's backends).", ""]
    return out


def _cost(x: dict) -> str:
    return f"{x['worker_cpu_ms']:.2f} + {x['pg_cpu_ms']:.2f}" if "worker_cpu_ms" in x else ""


def _latency(x: dict) -> str:
    return f"{x['p50_ms']:.1f} / {x['p95_ms']:.1f} / {x['p99_ms']:.1f}"


def _errors(x: dict) -> str:
    return f"{x['errors']} ({x['error_detail']})" if x["errors"] else "0"


def _writes(writes: list[dict]) -> list[str]:
    if not writes:
        return []
    rows = [[x["name"], x["concurrency"], _num(x["rps"], 1), _num(x["resources_per_s"]),
             _latency(x), _errors(x), _cost(x), cpu_text(x.get("cpu_cores")), _split(x)]
            for x in writes]
    out = ["## Writes", ""]
    out += _table(["operation", "clients", "req/s", "resources/s", "p50 / p95 / p99 ms",
                   "errors", "CPU ms per request (workers + pg)", "CPU cores (median)",
                   "worker CPU split per round"], rows)
    return out + ["Create posts the Patient of the 70-entry bundle; update PUTs it over random "
                  "ingested Patients with a changed multipleBirthInteger, so every update writes "
                  "a version; the transaction is the whole 70-entry Clemente_Kreiger bundle.", ""]


def _memory(rss: dict) -> list[str]:
    if not rss:
        return []
    moments = list(rss)
    names = sorted({f"{service} worker {i + 1}" for m in moments for service, pids in rss[m].items()
                    for i in range(len(pids))})
    rows = []
    for name in names:
        service, _, index = name.rpartition(" worker ")
        row: list[object] = [name]
        for moment in moments:
            pids = rss[moment].get(service, {})
            values = list(pids.values())
            k = int(index) - 1
            row.append(f"{values[k]['VmRSS'] / 1024:.0f}" if k < len(values) else "–")
        rows.append(row)
    out = ["## Resident memory per worker (VmRSS, MiB)", ""]
    return out + _table(["process", *moments], rows)


def _profile(profiles: dict) -> list[str]:
    out: list[str] = []
    for p in profiles.values():
        out += [f"## Where the server's time went: {p['what']} (py-spy)", ""]
        out += [f"{p['samples']:,} samples of the workers at {p['rate']} Hz over about "
                f"{p['seconds']} s. py-spy leaves out time blocked in the event loop but counts "
                f"time runnable and waiting for a CPU, so on a busy 2-core machine a call that "
                f"wakes PostgreSQL (psycopg sending a query) or a long C call (orjson parsing a "
                f"bundle) looks dearer than its own CPU; `python -m benchmarks.profile_ingest` "
                f"measures CPU alone. `asyncio` on top of the stack is time in uvloop and "
                f"httptools (C code run from the event loop).", ""]
        rows = [[f"`{m['module']}`", f"{m['self']:.1%}"] for m in p["by_module"]]
        out += ["By module on top of the stack (our modules by file, libraries by package):", ""]
        out += _table(["module", "share"], rows)
        rows = [[f"`{f['function']}`", f"{f['inclusive']:.1%}", f"{f['self']:.1%}"]
                for f in p["top_inclusive"]]
        out += ["Our functions, with everything they call:", ""]
        out += _table(["function (file)", "inclusive", "self"], rows)
        rows = [[f"`{f['function']}`", f"{f['self']:.1%}"] for f in p["top_self"]]
        out += ["Functions on top of the stack:", ""]
        out += _table(["function (file)", "self"], rows)
    return out
