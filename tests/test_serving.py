"""`serve --workers 2`: connections opened at once are spread over both workers, and a worker
that dies is replaced while the other keeps answering. Runs the real command on the embedded
SQLite default."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from live import kill_hard, start

CONNECTIONS = 32


def _workers(server_pid: int) -> set[int]:
    """The server's worker processes: its children that are not the multiprocessing helper."""
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
    return {
        int(pid)
        for pid in children
        if "resource_tracker"
        not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    }


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _established_inodes(port: int) -> set[str]:
    """Inodes of the server-side ends of established connections to `port` (/proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
            found.add(fields[9])
    return found


def _held(port: int, workers: set[int]) -> dict[int, int]:
    established = _established_inodes(port)
    return {pid: len(_socket_inodes(pid) & established) for pid in workers}


def _wait_until_both_accept(port: int, workers: set[int]) -> None:
    """`serve` answers once one worker is up; the other may still be loading the app, and then
    the first accepts everything. Open connections until each worker holds one."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        probes = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
        try:
            for sock in probes:
                sock.sendall(b"GET /fhir/metadata HTTP/1.1\r\nHost: x\r\n\r\n")
                assert sock.recv(12).startswith(b"HTTP/1.1 200")
            if min(_held(port, workers).values()) > 0:
                return
        finally:
            for sock in probes:
                sock.close()
        time.sleep(0.5)
    raise AssertionError("the second worker never accepted a connection")


def test_connections_opened_at_once_reach_both_workers_and_a_dead_worker_is_replaced(
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "VITASYNC_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.sqlite3'}",
        "VITASYNC_SIGNING_KEY_FILE": str(tmp_path / "signing.pem"),
        "VITASYNC_DATA_DIR": str(tmp_path / "var"),
    }
    process, base = start(cwd=tmp_path, env=env, workers=2)
    try:
        port = urlsplit(base).port
        assert port is not None
        supervisor = process.pid
        workers = _workers(supervisor)
        assert len(workers) == 2
        _wait_until_both_accept(port, workers)
        sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(CONNECTIONS)]
        try:
            for sock in sockets:
                sock.sendall(b"GET /fhir/metadata HTTP/1.1\r\nHost: x\r\n\r\n")
            for sock in sockets:
                assert sock.recv(12).startswith(b"HTTP/1.1 200")
            held = _held(port, workers)
        finally:
            for sock in sockets:
                sock.close()
        assert sum(held.values()) == CONNECTIONS, held
        # By address hash: each worker holds about half; fewer than 4 of 32 is a 1-in-100,000 draw.
        assert min(held.values()) >= 4, held

        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        for _ in range(20):  # the other worker answers meanwhile
            assert httpx.get(f"{base}/fhir/metadata", timeout=10).status_code == 200
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = _workers(supervisor)
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.2)
        assert len(_workers(supervisor)) == 2 and victim not in _workers(supervisor)
    finally:
        kill_hard(process)
