"""A real `vitasync-fhir serve` process on a free loopback port, for tests that need one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(
    *, cwd: Path, env: dict[str, str] | None = None, workers: int = 1
) -> tuple[subprocess.Popen, str]:
    """Start the server in a process group of its own; (process, base URL) once it answers."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    environment = {**os.environ, "VITASYNC_BASE_URL": base, **(env or {})}
    command = [
        sys.executable,
        "-m",
        "vitasync_fhir.cli",
        "serve",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # so that kill_hard reaches the workers too
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            raise RuntimeError(f"server exited with {process.returncode}:\n{output}")
        try:
            if httpx.get(f"{base}/fhir/metadata", timeout=2).status_code == 200:
                return process, base
        except httpx.HTTPError:
            time.sleep(0.2)
    kill_hard(process)
    raise RuntimeError("server did not answer within 60 s")


def kill_hard(process: subprocess.Popen) -> None:
    """SIGKILL the server and its workers at once: no shutdown code runs."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


@contextmanager
def served(*, cwd: Path, env: dict[str, str] | None = None, workers: int = 1) -> Iterator[str]:
    """Run the server until the block ends; yields its base URL."""
    process, base = start(cwd=cwd, env=env, workers=workers)
    try:
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            kill_hard(process)
