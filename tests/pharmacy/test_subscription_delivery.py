"""Delivery under stress: a receiver that trickles its answer, a backlog longer than the claim's
lease, an edit while a notification waits for its retry, an owner whose password was reset, and
a subscription whose `end` has come."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

from factories import FHIR_JSON
from fastapi.testclient import TestClient
from pharmacy_helpers import prescription
from receiver import Receiver, wait_until
from sqlalchemy import update
from subscription_helpers import (
    deliveries,
    events,
    new_patient,
    running,
    sequences,
    status_of,
    subscribe,
    subscription,
    tuned,
)
from support import BASE_URL, auth_headers, service_headers

from vitasync_fhir.app import create_app
from vitasync_fhir.auth import tokens
from vitasync_fhir.auth.tables import users
from vitasync_fhir.notify import queue as queue_module
from vitasync_fhir.subscriptions.tables import subscriptions
from vitasync_fhir.subscriptions.tasks import deliver_all, relay_due


def _prescribe(api: TestClient, patient_id: str) -> dict:
    answer = api.post(
        "/fhir/MedicationRequest", json=prescription(patient_id=patient_id), headers=FHIR_JSON
    )
    assert answer.status_code == 201, answer.text
    return answer.json()


def _instant(seconds_from_now: float) -> str:
    moment = datetime.now(UTC) + timedelta(seconds=seconds_from_now)
    return moment.isoformat(timespec="milliseconds")


def test_a_trickling_receiver_is_cut_off_at_the_deadline(hook_settings, receiver):
    slow = Receiver(trickle_seconds=0.25).start()  # its whole answer would take ~10 s
    try:
        with (
            tuned(hook_settings, subscription_timeout_seconds=1.0) as settings,
            running(settings, workers=1) as api,  # one worker: a stalled send holds up the rest
        ):
            stalled = subscribe(api, {}, subscription(slow.url()))
            started = time.monotonic()
            other = subscribe(api, {}, subscription(receiver.url()))
            wait_until(
                lambda: status_of(api, other["id"])["status"] == "active",
                timeout=5,
                what="the next subscription's handshake, behind the trickling one",
            )
            wait_until(
                lambda: deliveries(settings, stalled["id"])[0].last_error is not None,
                timeout=5,
                what="the trickling handshake given up",
            )
            took = time.monotonic() - started
            first = deliveries(settings, stalled["id"])[0]
    finally:
        slow.stop()
    assert first.last_error == "the endpoint did not answer within 1 s"
    assert took < 4


def test_a_deliverer_whose_lease_ran_out_sends_nothing_more(settings, receiver):
    """A backlog outlasting the claim's lease lets a second deliverer (a retry, the relay) claim
    the subscription: the first must see that before its next POST, or both send it."""
    with (
        tuned(settings, notify_relay_grace_seconds=0.0) as tuned_settings,
        TestClient(create_app(tuned_settings), base_url=BASE_URL) as api,  # no consumer: we are
    ):
        api.headers.update(service_headers(tuned_settings))
        queue = queue_module.queue_for(tuned_settings)
        sid = subscribe(api, {}, subscription(receiver.url()))["id"]
        assert deliver_all(queue, sid) == "drained"  # the handshake
        pid = new_patient(api)
        for _ in range(3):
            _prescribe(api, pid)  # notifications 2, 3 and 4
        gates = {3: threading.Event(), 4: threading.Event()}
        receiver.before_answer = lambda r: (
            gates[int(r.headers["X-Subscription-Sequence"])].wait(10)
            if int(r.headers["X-Subscription-Sequence"]) in gates
            else None
        )

        def received(seq: int) -> int:
            return [int(r.headers["X-Subscription-Sequence"]) for r in receiver.requests].count(seq)

        first = threading.Thread(target=deliver_all, args=(queue, sid))
        first.start()
        wait_until(lambda: received(3) == 1, what="notification 3 on its way")
        with queue.engine.begin() as conn:  # the lease runs out, as the clock would make it
            conn.execute(
                update(subscriptions)
                .where(subscriptions.c.id == sid)
                .values(claimed_until=datetime.now(UTC) - timedelta(seconds=1))
            )
        gates[3].set()
        wait_until(lambda: received(4) == 1, what="notification 4 on its way")
        second = threading.Thread(target=deliver_all, args=(queue, sid))
        second.start()
        wait_until(lambda: not second.is_alive() or received(4) > 1, timeout=5, what="either")
        gates[4].set()
        first.join(10)
        second.join(10)
    assert [int(r.headers["X-Subscription-Sequence"]) for r in receiver.requests] == [1, 2, 3, 4]


def test_a_long_backlog_under_a_short_lease_is_sent_once(hook_settings, receiver):
    with (
        tuned(
            hook_settings, subscription_timeout_seconds=1.0, subscription_lease_seconds=0.3
        ) as settings,
        running(settings) as api,
    ):
        sid = subscribe(api, {}, subscription(receiver.url()))["id"]
        wait_until(lambda: status_of(api, sid)["status"] == "active", what="the handshake")
        receiver.before_answer = lambda r: time.sleep(0.4)  # the backlog outlasts the lease
        pid = new_patient(api)
        for _ in range(6):
            _prescribe(api, pid)
        queue = queue_module.queue_for(settings)
        deadline = time.monotonic() + 20
        while len(events(receiver)) < 6 and time.monotonic() < deadline:
            relay_due(queue)  # a second deliverer asks for the subscription all along
            time.sleep(0.1)
        time.sleep(1.0)
    assert sequences(receiver) == [1, 2, 3, 4, 5, 6, 7]


def test_an_edit_keeps_what_was_owed_for_after_the_new_handshake(hook_settings, receiver):
    with (
        tuned(
            hook_settings, subscription_backoff_seconds=5.0, subscription_backoff_max_seconds=5.0
        ) as settings,
        running(settings) as api,
    ):
        sid = subscribe(api, {}, subscription(receiver.url()))["id"]
        wait_until(lambda: status_of(api, sid)["status"] == "active", what="the handshake")
        receiver.always = 503
        made = _prescribe(api, new_patient(api))
        wait_until(lambda: deliveries(settings, sid)[-1].attempts == 1, what="a failed attempt")
        receiver.always = 200
        edited = {**status_of(api, sid), "status": "requested"}
        edited["channel"]["header"] = ["X-Pharmacy: south"]
        answer = api.put(f"/fhir/Subscription/{sid}", json=edited, headers=FHIR_JSON)
        assert answer.status_code == 200, answer.text
        wait_until(lambda: len(events(receiver)) == 1, timeout=10, what="the notification owed")
        assert status_of(api, sid)["status"] == "active"
    accepted = receiver.accepted()
    # The first handshake; the new one; then what was owed, renumbered behind it.
    assert sequences(receiver) == [1, 3, 4]
    assert accepted[1].body == b"" and accepted[2].headers["X-Pharmacy"] == "south"
    assert events(receiver)[0]["entry"][0]["resource"]["id"] == made["id"]
    assert [r.status for r in deliveries(settings, sid)] == ["sent", "sent", "sent"]


def test_after_a_password_reset_the_subscription_errs_until_its_owner_updates_it(
    hook_settings, receiver
):
    with running(hook_settings) as api:
        pharmacist = auth_headers(hook_settings, role="pharmacist")
        bearer = pharmacist["Authorization"].removeprefix("Bearer ")
        claims = tokens.decode_access_token(hook_settings, bearer)
        sid = subscribe(api, pharmacist, subscription(receiver.url()))["id"]
        wait_until(lambda: status_of(api, sid)["status"] == "active", what="the handshake")
        engine = queue_module.queue_for(hook_settings).engine
        with engine.begin() as conn:  # what a password reset does (auth/accounts.py)
            conn.execute(
                update(users)
                .where(users.c.id == claims["sub"])
                .values(tokens_valid_after=datetime.now(UTC))
            )
        pid = new_patient(api)
        _prescribe(api, pid)
        wait_until(lambda: status_of(api, sid)["status"] == "error", timeout=10, what="error")
        failing = status_of(api, sid)
        assert "password" in failing["error"] and "update" in failing["error"]
        time.sleep(0.01)  # a token issued after the reset
        fresh = tokens.issue_access_token(
            hook_settings, subject=claims["sub"], scope=claims["scope"]
        )
        resumed = {**failing, "status": "requested"}
        resumed.pop("error")
        answer = api.put(
            f"/fhir/Subscription/{sid}",
            json=resumed,
            headers={**FHIR_JSON, "Authorization": f"Bearer {fresh.token}"},
        )
        assert answer.status_code == 200, answer.text
        wait_until(lambda: status_of(api, sid)["status"] == "active", what="the new handshake")
        made = _prescribe(api, pid)
        wait_until(lambda: len(events(receiver)) == 1, timeout=10, what="the notification")
    assert events(receiver)[0]["entry"][0]["resource"]["id"] == made["id"]


def test_a_subscription_past_its_end_is_turned_off(hook_settings, receiver):
    with running(hook_settings) as api:
        past = subscribe(api, {}, subscription(receiver.url("/past"), end=_instant(-3600)))
        wait_until(lambda: status_of(api, past["id"])["status"] == "off", what="off at once")
        end, ends = time.monotonic() + 4, _instant(4)  # the same moment, for both
        ending = subscribe(api, {}, subscription(receiver.url("/soon"), end=ends))
        quiet = subscribe(
            api,
            {},
            subscription(receiver.url("/quiet"), criteria="Appointment?status=booked", end=ends),
        )
        for sid in (ending["id"], quiet["id"]):
            wait_until(lambda s=sid: status_of(api, s)["status"] == "active", what="handshakes")
        time.sleep(max(0.0, end - time.monotonic()) + 0.2)
        _prescribe(api, new_patient(api))  # matches, but the end has come: off, not sent
        wait_until(lambda: status_of(api, ending["id"])["status"] == "off", what="off at the event")
        relay_due(queue_module.queue_for(hook_settings))  # nothing happens to it: the relay
        wait_until(lambda: status_of(api, quiet["id"])["status"] == "off", what="off by the relay")
        time.sleep(0.5)
    assert receiver.accepted("/past") == []
    assert len(receiver.accepted("/soon")) == 1 and len(receiver.accepted("/quiet")) == 1
