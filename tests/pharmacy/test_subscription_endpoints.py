"""Where a Subscription may send: not into the server's own network (loopback, private,
link-local, reserved addresses) unless `subscription_allow_private` says so, with no header that
frames or routes the request, and errors stored in words that tell nothing of that network."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from factories import FHIR_JSON
from live import free_port
from receiver import Receiver, wait_until
from subscription_helpers import deliveries, running, status_of, subscribe, subscription

from vitasync_fhir.config import Settings
from vitasync_fhir.notify import queue as queue_module

PRIVATE = [
    "http://127.0.0.1:{port}/hook",  # the receiver itself
    "http://169.254.169.254/latest/meta-data/",  # a cloud's metadata service
    "http://10.1.2.3/hook",
    "http://172.16.0.1/hook",
    "http://192.168.1.1/hook",
    "http://[::1]:{port}/hook",
    "http://[::ffff:127.0.0.1]:{port}/hook",
    "http://[fe80::1]/hook",
    "http://[fd00::1]/hook",
    "http://0.0.0.0:{port}/hook",
    "http://224.0.0.1/hook",
    "http://240.0.0.1/hook",
    "http://127.1:{port}/hook",  # what the C resolver reads as 127.0.0.1
    "http://2130706433:{port}/hook",  # 127.0.0.1 as one number
]
FRAMING = [
    "Host: internal.example",
    "Content-Length: 0",
    "transfer-encoding: chunked",
    "Connection: close",
    "Upgrade: websocket",
    "TE: trailers",
    "Trailer: X-A",
    "Keep-Alive: timeout=5",
    "Proxy-Authorization: Basic eA==",
    "X-Smuggled: a\r\nHost: internal.example",
    "not a header line",
]


@pytest.fixture
def strict(settings: Settings) -> Iterator[Settings]:
    """The production default: no endpoint on a private address."""
    made = Settings(
        **{
            **settings.model_dump(),
            "subscription_allow_private": False,
            "subscription_backoff_seconds": 0.2,
            "subscription_backoff_max_seconds": 0.5,
            "subscription_max_attempts": 2,
            "queue_name": f"strict-{time.monotonic_ns()}",
        }
    )
    yield made
    queue_module.forget(made)


def _refused(api, resource: dict, expression: str) -> None:  # type: ignore[no-untyped-def]
    answer = api.post("/fhir/Subscription", json=resource, headers=FHIR_JSON)
    assert answer.status_code == 422, (resource["channel"], answer.text)
    issue = answer.json()["issue"][0]
    assert issue["code"] == "invalid"
    assert issue["expression"] == [f"Subscription.{expression}"]


def test_private_addresses_and_framing_headers_are_refused(strict, receiver):
    with running(strict) as api:
        for endpoint in PRIVATE:
            _refused(api, subscription(endpoint.format(port=receiver.port)), "channel.endpoint")
        for line in FRAMING:
            resource = subscription("https://example.org/hook")
            resource["channel"]["header"] = ["Authorization: Bearer x", line]
            _refused(api, resource, "channel.header")
        # A name, not an address: accepted, then refused at sending once it resolves to loopback.
        named = subscribe(api, {}, subscription(f"http://localhost:{receiver.port}/hook"))
        wait_until(lambda: status_of(api, named["id"])["status"] == "error", what="error")
        time.sleep(0.5)
    assert receiver.requests == []  # never contacted
    failing = status_of(api, named["id"])
    assert failing["error"].endswith("the endpoint's address is not allowed")
    assert [r.last_error for r in deliveries(strict, named["id"])] == [
        "the endpoint's address is not allowed"
    ]


def test_allowed_private_endpoints_are_delivered_to(settings, receiver):
    """What the subscription tests rely on: the setting lets loopback through, both checks."""
    assert settings.subscription_allow_private
    with running(settings) as api:
        sub = subscribe(api, {}, subscription(receiver.url()))
        wait_until(lambda: status_of(api, sub["id"])["status"] == "active", what="the handshake")
    assert len(receiver.accepted()) == 1


def test_errors_are_stored_in_general_words(hook_settings):
    closed = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    refusing = Receiver(always=503).start()
    try:
        with running(hook_settings) as api:
            nobody = subscribe(api, {}, subscription(closed))
            unwilling = subscribe(api, {}, subscription(refusing.url()))
            for sid in (nobody["id"], unwilling["id"]):
                wait_until(lambda s=sid: status_of(api, s)["status"] == "error", what="error")
            nobody_error = status_of(api, nobody["id"])["error"]
            unwilling_error = status_of(api, unwilling["id"])["error"]
    finally:
        refusing.stop()
    # No OS error text (errno, "Connection refused"): the stored error is no port scanner.
    assert nobody_error.endswith("failed; the last: could not connect to the endpoint")
    assert "rrno" not in nobody_error and "refused" not in nobody_error
    assert unwilling_error.endswith("the endpoint did not accept the notification: HTTP 503")
    rows = deliveries(hook_settings, nobody["id"])
    assert {r.last_error for r in rows} == {"could not connect to the endpoint"}
