"""How `serve` runs uvicorn: one process, or several workers that each listen on a socket of
their own.

uvicorn's own workers share one listening socket, and whichever worker wakes first accepts every
connection waiting on it: under a burst of new keep-alive connections (32 clients connecting at
once) one worker took all of them and the other sat idle. Here each worker binds its own socket
with SO_REUSEPORT, and the kernel spreads new connections across them by address hash. The parent
supervises: it restarts a worker that dies, and on SIGINT or SIGTERM stops them all (each finishes
its requests first, as uvicorn does). Where SO_REUSEPORT does not exist, uvicorn's workers run.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import time
from multiprocessing.process import BaseProcess
from typing import Any

import uvicorn

log = logging.getLogger("vitasync_fhir")

APP = "vitasync_fhir.app:create_app"
BACKLOG = 2048
RESTART_PAUSE = 1.0  # seconds before a dead worker is replaced (a crash loop stays slow)
STOP_WAIT = 30.0  # seconds a worker has to finish its requests on shutdown


def uvicorn_options(host: str, port: int) -> dict[str, Any]:
    return {
        "app": APP,
        "factory": True,
        "host": host,
        "port": port,
        "log_level": "warning",
        "proxy_headers": True,
    }


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket of its own on (host, port), sharing the port with the other workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


class _Worker(uvicorn.Server):
    """A uvicorn server that opens its socket only once the app has started: a socket listening
    earlier would be handed connections by the kernel that nobody accepts yet."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[listening_socket(self.config.host, self.config.port)])


def _worker(host: str, port: int) -> None:
    _Worker(uvicorn.Config(**uvicorn_options(host, port))).run()


def serve(host: str, port: int, workers: int) -> None:
    if workers <= 1 or not hasattr(socket, "SO_REUSEPORT"):
        uvicorn.run(**uvicorn_options(host, port), workers=workers)
        return
    Supervisor(host, port, workers).run()


class Supervisor:
    def __init__(self, host: str, port: int, workers: int) -> None:
        self.host, self.port, self.count = host, port, workers
        self.context = multiprocessing.get_context("spawn")
        self.workers: list[BaseProcess] = []
        self.stopping = False

    def _start_one(self) -> BaseProcess:
        process = self.context.Process(target=_worker, args=(self.host, self.port), daemon=False)
        process.start()
        return process

    def _stop(self, signum: int, _frame: object) -> None:
        self.stopping = True

    def run(self) -> None:
        # Fail at once, with uvicorn's message, when the port is taken by something else.
        listening_socket(self.host, self.port).close()
        previous = {s: signal.signal(s, self._stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.workers = [self._start_one() for _ in range(self.count)]
            while not self.stopping:
                time.sleep(0.2)
                for n, process in enumerate(self.workers):
                    if not process.is_alive() and not self.stopping:
                        log.warning(
                            "worker %s exited with %s; starting another",
                            process.pid,
                            process.exitcode,
                        )
                        time.sleep(RESTART_PAUSE)
                        self.workers[n] = self._start_one()
        finally:
            for process in self.workers:
                if process.is_alive() and process.pid is not None:
                    process.terminate()  # SIGTERM: uvicorn finishes open requests
            deadline = time.monotonic() + STOP_WAIT
            for process in self.workers:
                process.join(max(deadline - time.monotonic(), 0.1))
                if process.is_alive():
                    process.kill()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
