"""A real HTTP endpoint for subscription tests: a threaded http.server on a free loopback port
that records every request and answers from a script of status codes (then 200); it can be made
slow (`before_answer` may block) or trickle its answer a byte at a time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from live import free_port


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered


@dataclass
class Receiver:
    port: int = field(default_factory=free_port)
    requests: list[Received] = field(default_factory=list)
    script: list[int] = field(default_factory=list)  # answers to give first, in order
    always: int = 200  # then this
    # Runs, and may block, after a request is recorded and before it is answered.
    before_answer: Callable[[Received], None] | None = None
    trickle_seconds: float = 0.0  # > 0: each byte of the answer this long after the last
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def fail_next(self, count: int, status: int = 500) -> None:
        with self.lock:
            self.script.extend([status] * count)

    def accepted(self, path: str | None = None) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.status < 300 and (path is None or r.path == path)]

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with receiver.lock:
                    status = receiver.script.pop(0) if receiver.script else receiver.always
                    received = Received(self.path, dict(self.headers.items()), body, status)
                    receiver.requests.append(received)
                if receiver.before_answer is not None:
                    receiver.before_answer(received)
                if receiver.trickle_seconds:
                    self._trickle(f"HTTP/1.1 {status} OK\r\nContent-Length: 0\r\n\r\n".encode())
                    return
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _trickle(self, answer: bytes) -> None:
                self.close_connection = True
                try:
                    for byte in answer:
                        time.sleep(receiver.trickle_seconds)
                        self.wfile.write(bytes([byte]))
                except OSError:
                    pass  # the sender gave up

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def wait_until(condition: Callable[[], bool], *, timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
