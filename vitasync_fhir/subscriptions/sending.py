"""One notification: what it holds, and the POST that carries it (R4 rest-hook).

- handshake: an empty POST when the subscription is requested; a 2xx makes it `active`.
- payload absent: an empty POST (the subscriber then reads what changed).
- payload `application/fhir+json`: a Bundle of type `history` with one entry, the version that
  matched (fullUrl, resource, request, response with its ETag), as `application/fhir+json`.
  R4 would have the resource PUT to the endpoint's base/Type/id; a history Bundle is our choice
  (README says so): one URL to receive at, and the version's ETag with it.
Each carries the subscription's `channel.header` lines and `X-Subscription-Sequence`.

The POST goes through guard.py (a checked address, one deadline for it all), never follows a
redirect, and ignores proxy variables: the address checked must be the one connected to. What
went wrong is said in general words, since it is stored in the Subscription's `error` for the
subscriber to read: never the OS's error text, which would make a port scanner of the server.
"""

from __future__ import annotations

import base64
import ssl
import time
from datetime import UTC, datetime
from functools import cache
from typing import Any

import httpcore
import httpx
import orjson
from sqlalchemy import and_, select

from vitasync_fhir.fhir.service import instant
from vitasync_fhir.fhir.tables import resource_history
from vitasync_fhir.notify.outbox import now_utc
from vitasync_fhir.notify.queue import Queue
from vitasync_fhir.subscriptions.endpoints import NOT_ALLOWED, is_framing, parse_header
from vitasync_fhir.subscriptions.guard import Guard, Refused
from vitasync_fhir.subscriptions.tables import HANDSHAKE


def notify(queue: Queue, sub: Any, head: Any) -> str | None:
    """POST one notification; None on a 2xx, else what went wrong (in general words)."""
    ours = {"X-Subscription-Sequence": str(head.seq)}
    body = b""
    if head.kind != HANDSHAKE and sub.payload:
        bundle = _bundle(queue, head)
        if bundle is None:
            return None  # the version is gone (history is immutable, so: never); nothing to say
        body = bundle
        ours["Content-Type"] = "application/fhir+json"
    settings = queue.settings
    return post(
        sub.endpoint,
        body,
        request_headers(sub.headers, ours),
        timeout=settings.subscription_timeout_seconds,
        allow_private=settings.subscription_allow_private,
    )


def request_headers(lines: list[str] | None, ours: dict[str, str]) -> dict[str, str]:
    """The channel's headers, then ours: a subscriber's line never replaces or doubles ours."""
    result: dict[str, str] = {}
    taken = {name.lower() for name in ours}
    for line in lines or []:
        parsed = parse_header(line)
        # Registration refuses framing headers; rows stored before it did are filtered here.
        if parsed and not is_framing(parsed[0]) and parsed[0].lower() not in taken:
            result[parsed[0]] = parsed[1]
    return {**result, **ours}


def post(
    endpoint: str, body: bytes, headers: dict[str, str], *, timeout: float, allow_private: bool
) -> str | None:
    guard = Guard(deadline=time.monotonic() + timeout, allow_private=allow_private)
    try:
        url = httpx.URL(endpoint)
    except httpx.InvalidURL:
        return "the endpoint is not a valid URL"
    sent = {"Host": url.netloc.decode("ascii"), **headers}  # netloc: [::1]:8080 keeps its brackets
    if url.userinfo and not any(name.lower() == "authorization" for name in sent):
        # As httpx did before: credentials in the URL are sent as Basic authentication.
        pair = f"{url.username}:{url.password}".encode()
        sent["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    target = httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port,
                          target=url.raw_path)  # fmt: skip
    limits = dict.fromkeys(("connect", "read", "write", "pool"), timeout)
    try:
        with (
            httpcore.ConnectionPool(ssl_context=_tls(), network_backend=guard) as pool,
            pool.stream(
                "POST",
                target,
                headers=list(sent.items()),
                content=body,
                extensions={"timeout": limits},
            ) as answer,  # fmt: skip
        ):
            status = answer.status  # the body is never read: only the status says anything
    except Refused:
        return NOT_ALLOWED
    except httpcore.TimeoutException:
        return f"the endpoint did not answer within {timeout:g} s"
    except httpcore.ConnectError as error:
        if isinstance(error.__context__, ssl.SSLCertVerificationError):
            return "the endpoint's TLS certificate could not be verified"
        return "could not connect to the endpoint"
    except httpcore.ProtocolError:
        return "the endpoint did not answer in HTTP"
    except httpcore.NetworkError:
        return "the connection to the endpoint was lost"
    if 200 <= status < 300:
        return None
    return f"the endpoint did not accept the notification: HTTP {status}"


@cache
def _tls() -> Any:
    """httpx's TLS settings (certifi, SSL_CERT_FILE), loaded once: loading takes milliseconds."""
    return httpx.create_ssl_context()


def _bundle(queue: Queue, head: Any) -> bytes | None:
    h = resource_history
    with queue.engine.connect() as conn:
        version = conn.execute(
            select(h).where(
                and_(
                    h.c.resource_type == head.resource_type,
                    h.c.id == head.resource_id,
                    h.c.version_id == head.version_id,
                )
            )
        ).first()
    if version is None or version.content is None:
        return None
    base = queue.settings.fhir_base
    created = head.version_id == 1
    entry = {
        "fullUrl": f"{base}/{head.resource_type}/{head.resource_id}",
        "resource": orjson.Fragment(version.content),
        "request": {
            "method": "POST" if created else "PUT",
            "url": head.resource_type if created else f"{head.resource_type}/{head.resource_id}",
        },
        "response": {
            "status": "201" if created else "200",
            "etag": f'W/"{head.version_id}"',
            "lastModified": instant(aware(version.last_updated)),
        },
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "history",
        "timestamp": instant(now_utc()),
        "entry": [entry],
    }
    return orjson.dumps(bundle)


def aware(moment: datetime) -> datetime:
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
