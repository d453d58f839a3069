"""Real servers and a real browser for the tests that need them: `vitasync-fhir serve` in a process
of its own (`start`, `served`), an app under uvicorn in a thread (`threaded`), and Debian's Chromium
(`chromium_path`, `CHROMIUM_ARGS`) for Playwright."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI
from support import unavailable

from vitasync_fhir.config import Settings


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


@contextmanager
def serving(database_url: str, folder: Path, *, workers: int = 2) -> Iterator[Settings]:
    """`served` on `database_url` with its keys and data under `folder`; settings that reach it."""
    key = folder / "signing.pem"
    env = {
        **os.environ,
        "VITASYNC_DATABASE_URL": database_url,
        "VITASYNC_SIGNING_KEY_FILE": str(key),
        "VITASYNC_DATA_DIR": str(folder / "var"),
    }
    with served(cwd=folder, env=env, workers=workers) as base:
        yield Settings(database_url=database_url, base_url=base, signing_key_file=key)


CHROMIUM = Path(os.environ.get("VITASYNC_CHROMIUM", "/usr/bin/chromium"))
# Without the background-networking flags Chromium keeps calling out, and this machine's closed
# network refuses it many times at each start.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> Path:
    if not CHROMIUM.exists():
        unavailable(f"Chromium is not installed at {CHROMIUM} (apt-get install -y chromium)")
    return CHROMIUM


@contextmanager
def threaded(app: FastAPI, port: int) -> Iterator[None]:
    """Uvicorn serving `app` on loopback `port` in a thread, until the block ends."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@contextmanager
def live_app(settings: Settings) -> Iterator[Settings]:
    """The app of `settings` under uvicorn on a free loopback port; yields its settings, whose
    base_url is where it listens (links it makes point there)."""
    from vitasync_fhir.app import create_app

    port = free_port()
    served = settings.model_copy(update={"base_url": f"http://127.0.0.1:{port}"})
    with threaded(create_app(served), port):
        yield served
