"""Sampling the server's workers with py-spy (optional: `pip install py-spy` into the venv) and
turning its raw collapsed stacks into the functions that cost the most."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

RATE_HZ = 50


def executable() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Recorder:
    """py-spy record on a process and its subprocesses until stopped."""

    def __init__(self, pid: int, output: Path) -> None:
        self.pid = pid
        self.output = output
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Recorder:
        tool = executable()
        if tool is None:
            raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
        self.process = subprocess.Popen(
            [tool, "record", "--pid", str(self.pid), "--subprocesses", "--rate", str(RATE_HZ),
             "--format", "raw", "--function", "--nonblocking", "--output", str(self.output)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        return self

    def __exit__(self, *_exc: object) -> None:
        process = self.process
        if process is None:
            return
        process.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


_FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
_PROCESS = re.compile(r'process (\d+):"[^"]*";')
# uvicorn's worker keeps a thread blocked reading the supervisor's health-check pipe, which
# py-spy does not always see as idle.
IDLE_LEAVES = ("multiprocessing/connection.py",)
SCAFFOLD_FILES = ("uvicorn/", "starlette/", "fastapi/", "asyncio/", "multiprocessing/", "anyio/",
                  "contextlib.py", "<string>", "threading.py")


def _function(frame: str) -> tuple[str, str]:
    """(`name (file)`, file) of one frame, line number dropped."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip(), ""
    return f"{match['name']} ({match['file']})", match["file"]


def _module(file: str) -> str:
    """Where a leaf frame's time is charged: our own modules by file, libraries by package."""
    if file.startswith("vitasync_fhir/"):
        return file
    return file.split("/", 1)[0] if "/" in file else file or "?"


def _stacks(raw: Path, exclude_pids: set[int]):  # type: ignore[no-untyped-def]
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        pids = [int(p) for p in _PROCESS.findall(stack)]
        if pids and pids[-1] in exclude_pids:
            continue  # the supervisor, not a worker
        frames = [_function(f) for f in _PROCESS.sub("", stack).split(";") if f]
        if frames and not frames[-1][1].startswith(IDLE_LEAVES):
            yield frames, int(count)


def top(raw: Path, *, exclude_pids: set[int] = frozenset(), limit: int = 20) -> dict:  # type: ignore[assignment]
    """Shares of the workers' samples: by module and function on top of the stack (self), and by
    our own functions anywhere on the stack (inclusive)."""
    self_counts: Counter[str] = Counter()
    modules: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for frames, n in _stacks(raw, exclude_pids):
        total += n
        leaf, leaf_file = frames[-1]
        self_counts[leaf] += n
        modules[_module(leaf_file)] += n
        for function, file in set(frames):
            if not file.startswith(SCAFFOLD_FILES):
                inclusive[function] += n
    if total == 0:
        return {"samples": 0, "by_module": [], "top_inclusive": [], "top_self": []}

    def share(n: int) -> float:
        return round(n / total, 4)

    ours = [(f, n) for f, n in inclusive.most_common() if "vitasync_fhir/" in f]
    return {
        "samples": total,
        "by_module": [{"module": m, "self": share(n)} for m, n in modules.most_common(limit)],
        "top_inclusive": [{"function": f, "inclusive": share(n), "self": share(self_counts[f])}
                          for f, n in ours[:limit]],
        "top_self": [{"function": f, "self": share(n)} for f, n in self_counts.most_common(limit)],
    }
