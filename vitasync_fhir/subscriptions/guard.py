"""The network side of one notification: a checked address, and one deadline for everything.

`Guard` is an httpcore network backend made for one request. It resolves the endpoint's host
itself, refuses it if any address is not public (endpoints.py; unless private ones are allowed),
and connects to the address it checked: asking the resolver again, as a plain client would, could
get another answer (DNS rebinding). Every socket operation then waits at most what is left of
one deadline: httpx's timeouts are per read, so a receiver trickling a byte a second could hold a
worker, and every subscription queued behind it, for as long as it liked.
"""

from __future__ import annotations

import socket
import threading
import time
import typing

import httpcore
from httpcore import NetworkStream, SyncBackend

from vitasync_fhir.subscriptions.endpoints import is_public, literal_address


class Refused(Exception):
    """The endpoint resolves to an address notifications may not go to."""


class Guard(httpcore.NetworkBackend):
    def __init__(self, *, deadline: float, allow_private: bool) -> None:
        self.deadline = deadline  # time.monotonic() when the whole notification must be done
        self.allow_private = allow_private
        self._backend = SyncBackend()

    def left(self, timeout: float | None, late: type[Exception]) -> float:
        """What is left of the deadline (and of `timeout`); raises `late` when nothing is."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise late("the deadline has passed")
        return left if timeout is None else min(timeout, left)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> NetworkStream:
        addresses = self._resolve(host, port)
        if not self.allow_private and not all(_public(a) for a in addresses):
            raise Refused(host)  # all or none: a public address beside a private one is a lure
        error: Exception = httpcore.ConnectError(f"{host} has no address")
        for address in addresses:  # in the resolver's order, as socket.create_connection does
            try:
                stream = self._backend.connect_tcp(
                    address,
                    port,
                    timeout=self.left(timeout, httpcore.ConnectTimeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as failed:
                error = failed
                continue
            return _Stream(stream, self)
        raise error

    def _resolve(self, host: str, port: int) -> list[str]:
        """The host's addresses, within the deadline (getaddrinfo itself has no timeout)."""
        found: list[str] = []
        failed: list[OSError] = []

        def lookup() -> None:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as error:
                failed.append(error)
                return
            for info in infos:
                address = str(info[4][0])
                if address not in found:
                    found.append(address)

        # A thread of its own: a resolver that hangs is left behind, not waited for.
        worker = threading.Thread(target=lookup, daemon=True, name="subscription-dns")
        worker.start()
        worker.join(self.left(None, httpcore.ConnectTimeout))
        if worker.is_alive():
            raise httpcore.ConnectTimeout("name resolution took too long")
        if failed or not found:
            raise httpcore.ConnectError("the name did not resolve")
        return found


def _public(address: str) -> bool:
    parsed = literal_address(address.partition("%")[0])  # without an IPv6 zone: fe80::1%eth0
    return parsed is not None and is_public(parsed)


class _Stream(NetworkStream):
    """A connection whose every read and write waits at most what is left of the deadline."""

    CHUNK = 16 * 1024  # a write blocks per chunk at most: a slow reader cannot stretch it

    def __init__(self, stream: NetworkStream, guard: Guard) -> None:
        self._stream = stream
        self._guard = guard

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._guard.left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        for start in range(0, len(buffer), self.CHUNK):
            chunk = buffer[start : start + self.CHUNK]
            self._stream.write(chunk, self._guard.left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: typing.Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> NetworkStream:
        # CPython bounds the whole handshake by the socket's timeout, so this bounds it too.
        left = self._guard.left(timeout, httpcore.ConnectTimeout)
        return _Stream(self._stream.start_tls(ssl_context, server_hostname, left), self._guard)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._stream.get_extra_info(info)
