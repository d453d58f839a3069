"""R4 rest-hook subscriptions delivered through the real queue and consumer to a real HTTP
endpoint that fails its first attempts: handshake, order, exactly once, the subscriber's access,
and the error status after repeated failures."""

from __future__ import annotations

import time

from factories import FHIR_JSON
from fastapi.testclient import TestClient
from pharmacy_helpers import prescription
from receiver import wait_until
from sqlalchemy import select
from subscription_helpers import (
    events,
    new_patient,
    running,
    status_of,
    subscribe,
    subscription,
)
from support import BASE_URL, auth_headers, service_headers

from vitasync_fhir.app import create_app
from vitasync_fhir.auth import tokens
from vitasync_fhir.config import Settings
from vitasync_fhir.notify import queue as queue_module
from vitasync_fhir.notify.worker import hosted
from vitasync_fhir.subscriptions.tables import subscription_deliveries


def test_handshake_then_notifications_in_order_once(hook_settings, receiver):
    receiver.fail_next(2)  # the handshake fails twice, then succeeds
    with running(hook_settings) as api:
        pharmacist = auth_headers(hook_settings, role="pharmacist")
        sub = subscribe(api, pharmacist, subscription(receiver.url()))
        assert sub["status"] == "requested"
        wait_until(lambda: status_of(api, sub["id"])["status"] == "active", what="the handshake")
        handshake = receiver.accepted()[0]
        assert handshake.body == b"" and handshake.headers["X-Pharmacy"] == "north"
        pid = new_patient(api)
        receiver.fail_next(3)  # the first notification fails three times
        made = []
        for n in range(3):
            rx = prescription(patient_id=pid, repeats=n)
            made.append(api.post("/fhir/MedicationRequest", json=rx, headers=FHIR_JSON).json())
        draft = prescription(patient_id=pid, status="draft")
        api.post("/fhir/MedicationRequest", json=draft, headers=FHIR_JSON)  # not matching
        wait_until(lambda: len(events(receiver)) >= 3, what="three notifications")
        time.sleep(1.5)  # room for a duplicate or a straggler to show up, if one could
    bundles = events(receiver)
    assert [b["entry"][0]["resource"]["id"] for b in bundles] == [r["id"] for r in made]
    assert all(b["type"] == "history" for b in bundles)
    assert bundles[0]["entry"][0]["response"]["etag"] == 'W/"1"'
    sequences = [int(r.headers["X-Subscription-Sequence"]) for r in receiver.accepted()]
    assert sequences == [1, 2, 3, 4]  # the handshake, then each event once, in order
    failed = [r for r in receiver.requests if r.status >= 300]
    assert len(failed) == 5 and all(r.headers["X-Subscription-Sequence"] in "12" for r in failed)


def test_id_only_notifications_are_empty_posts(hook_settings, receiver):
    with running(hook_settings) as api:
        sub = subscribe(api, {}, subscription(receiver.url("/ping"), payload=False))
        wait_until(lambda: status_of(api, sub["id"])["status"] == "active", what="the handshake")
        rx = prescription(patient_id=new_patient(api))
        api.post("/fhir/MedicationRequest", json=rx, headers=FHIR_JSON)
        wait_until(lambda: len(receiver.accepted("/ping")) == 2, what="the notification")
    assert [r.body for r in receiver.accepted("/ping")] == [b"", b""]
    assert "Content-Type" not in receiver.accepted("/ping")[1].headers


def test_no_one_hears_of_what_they_may_not_read(hook_settings, receiver):
    with running(hook_settings) as api:
        mine, other = new_patient(api), new_patient(api)
        # A pharmacist whose token is limited to one patient's prescriptions (SMART launch).
        account = auth_headers(hook_settings, role="pharmacist")
        claims = tokens.decode_access_token(
            hook_settings, account["Authorization"].removeprefix("Bearer ")
        )
        limited = tokens.issue_access_token(
            hook_settings,
            subject=claims["sub"],
            scope="patient/MedicationRequest.rs user/Subscription.cruds",
            patient=mine,
        )
        headers = {"Authorization": f"Bearer {limited.token}"}
        sub = subscribe(api, headers, subscription(receiver.url("/limited")))
        everything = subscribe(api, {}, subscription(receiver.url("/all")))
        for sid in (sub["id"], everything["id"]):
            wait_until(lambda s=sid: status_of(api, s)["status"] == "active", what="handshakes")
        hidden = api.post(
            "/fhir/MedicationRequest", json=prescription(patient_id=other), headers=FHIR_JSON
        ).json()
        seen = api.post(
            "/fhir/MedicationRequest", json=prescription(patient_id=mine), headers=FHIR_JSON
        ).json()
        wait_until(lambda: len(events(receiver, "/all")) == 2, what="the unrestricted ones")
        wait_until(lambda: len(events(receiver, "/limited")) == 1, what="the visible one")
        time.sleep(1.0)
        # Pharmacists may not read Observations: they cannot even subscribe to them.
        refused = api.post(
            "/fhir/Subscription",
            json=subscription(receiver.url(), criteria="Observation?code=8867-4"),
            headers={**FHIR_JSON, **auth_headers(hook_settings, role="pharmacist")},
        )
        assert refused.status_code == 403, refused.text
    limited_ids = [b["entry"][0]["resource"]["id"] for b in events(receiver, "/limited")]
    assert limited_ids == [seen["id"]]
    all_ids = [b["entry"][0]["resource"]["id"] for b in events(receiver, "/all")]
    assert all_ids == [hidden["id"], seen["id"]]


def test_repeated_failures_set_error_and_stop(hook_settings, receiver):
    with running(hook_settings) as api:
        never = subscribe(api, {}, subscription(receiver.url("/down")))
        receiver.always = 503
        wait_until(lambda: status_of(api, never["id"])["status"] == "error", what="error")
        assert len(receiver.requests) == 4  # subscription_max_attempts
        failing = status_of(api, never["id"])
        assert "4 attempts" in failing["error"]
        assert failing["error"].endswith("the endpoint did not accept the notification: HTTP 503")
        receiver.always = 200
        sub = subscribe(api, {}, subscription(receiver.url("/later")))
        wait_until(lambda: status_of(api, sub["id"])["status"] == "active", what="the handshake")
        receiver.always = 500
        pid = new_patient(api)
        for _ in range(2):
            api.post(
                "/fhir/MedicationRequest", json=prescription(patient_id=pid), headers=FHIR_JSON
            )
        wait_until(lambda: status_of(api, sub["id"])["status"] == "error", what="error")
        time.sleep(1.0)
        queue = queue_module.queue_for(hook_settings)
        with queue.engine.connect() as conn:
            rows = conn.execute(
                select(subscription_deliveries.c.seq, subscription_deliveries.c.status)
                .where(subscription_deliveries.c.subscription_id == sub["id"])
                .order_by(subscription_deliveries.c.seq)
            ).all()
        # The handshake went; the first event was given up; the second was never attempted.
        assert [tuple(r) for r in rows] == [(1, "sent"), (2, "dead"), (3, "dropped")]
        later = [r for r in receiver.requests if r.path == "/later"]
        assert [r.headers["X-Subscription-Sequence"] for r in later] == ["1"] + ["2"] * 4
        history = api.get(f"/fhir/Subscription/{sub['id']}/_history").json()
        assert [e["resource"]["status"] for e in history["entry"]] == [
            "error", "active", "requested",
        ]  # fmt: skip


def test_registration_is_checked(hook_settings, receiver):
    with running(hook_settings) as api:
        cases = [
            (subscription("file:///etc/passwd"), 422),
            (subscription("ftp://example.org/x"), 422),
            (subscription("http://[::1/x"), 422),  # not a URL at all
            (subscription("http://example.org:0/x"), 422),
            (subscription("http://example.org:65536/x"), 422),
            (subscription("http://example.org:99999/x"), 422),
            (subscription("http://example.org:http/x"), 422),
            (subscription(receiver.url(), status="active"), 422),
            (subscription(receiver.url(), criteria="MedicationRequest?bogus=1"), 400),
            (subscription(receiver.url(), criteria="Nope?status=active"), 400),
            (
                {
                    **subscription(receiver.url()),
                    "channel": {"type": "email", "endpoint": "mailto:a@b.org"},
                },
                422,
            ),
        ]
        for resource, status in cases:
            answer = api.post("/fhir/Subscription", json=resource, headers=FHIR_JSON)
            assert answer.status_code == status, (resource, answer.text)
        nurse = auth_headers(hook_settings, role="nurse")
        denied = api.post(
            "/fhir/Subscription",
            json=subscription(receiver.url()),
            headers={**FHIR_JSON, **nurse},
        )
        assert denied.status_code == 403
    assert receiver.requests == []


def test_nothing_is_lost_while_the_queue_is_down(settings, receiver):
    from live import free_port

    from vitasync_fhir.subscriptions.tasks import relay_due

    dead = Settings(**{**settings.model_dump(), "redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    alive = Settings(**{**settings.model_dump(), "notify_relay_grace_seconds": 0.0})
    try:
        with TestClient(create_app(dead), base_url=BASE_URL) as api:
            api.headers.update(service_headers(dead))
            sub = subscribe(api, {}, subscription(receiver.url()))  # Redis is down: 201 anyway
            assert receiver.requests == []
            with hosted(alive) as queue:  # a worker starts: it relays what was left behind
                wait_until(lambda: status_of(api, sub["id"])["status"] == "active", what="active")
                rx = prescription(patient_id=new_patient(api))
                made = api.post("/fhir/MedicationRequest", json=rx, headers=FHIR_JSON).json()
                assert len(receiver.accepted()) == 1  # queued nowhere: Redis is still down
                time.sleep(0.1)
                assert relay_due(queue) == 1  # the periodic relay
                wait_until(lambda: len(events(receiver)) == 1, what="the notification")
    finally:
        queue_module.forget(dead)
        queue_module.forget(alive)
    assert events(receiver)[0]["entry"][0]["resource"]["id"] == made["id"]


def test_a_subscription_is_its_owners_alone(client, settings, signed_in, receiver):
    north, south = signed_in(role="pharmacist"), signed_in(role="pharmacist")
    try:
        mine = subscribe(client, north, subscription(receiver.url()))
        path = f"/fhir/Subscription/{mine['id']}"
        assert client.get(path, headers=north).status_code == 200
        assert client.get(path).status_code == 200  # admins see every subscription
        assert client.get(path, headers=south).status_code == 404
        listed = client.get("/fhir/Subscription", headers=south).json()
        assert listed.get("entry", []) == []
        own = client.get("/fhir/Subscription", headers=north).json()
        assert [e["resource"]["id"] for e in own["entry"]] == [mine["id"]]
        changed = {**mine, "status": "off"}
        assert client.put(path, json=changed, headers={**FHIR_JSON, **south}).status_code == 404
        assert client.delete(path, headers=south).status_code == 204  # as if never made
        assert client.get(path, headers=north).status_code == 200  # and not deleted
        assert client.put(path, json=changed, headers={**FHIR_JSON, **north}).status_code == 200
        assert client.delete(path, headers=north).status_code == 204
    finally:
        queue_module.forget(settings)


def test_a_notification_with_the_resource_is_audited_as_the_subscribers_read(
    hook_settings, receiver
):  # type: ignore[no-untyped-def]
    """The payload hands the resource to the subscriber's endpoint: an access to patient data,
    recorded as a read by them, naming the Subscription."""
    with running(hook_settings) as api:
        pharmacist = auth_headers(hook_settings, role="pharmacist")
        token = pharmacist["Authorization"].split()[1]
        fhir_user = tokens.decode_access_token(hook_settings, token)["fhirUser"]
        sub = subscribe(api, pharmacist, subscription(receiver.url()))
        wait_until(lambda: status_of(api, sub["id"])["status"] == "active", what="the handshake")
        rx = prescription(patient_id=new_patient(api))
        made = api.post("/fhir/MedicationRequest", json=rx, headers=FHIR_JSON).json()
        wait_until(lambda: len(events(receiver)) == 1, what="the notification")

        def reads() -> list[dict]:
            entity = f"MedicationRequest/{made['id']}"
            found = api.get("/fhir/AuditEvent", params={"entity": entity, "action": "R"})
            return [e["resource"] for e in found.json().get("entry", [])]

        wait_until(lambda: len(reads()) == 1, what="the AuditEvent of the notification")
        read = reads()[0]
    assert read["agent"][0]["who"] == {"reference": fhir_user}
    assert read["agent"][0]["network"]["address"] == "127.0.0.1"
    assert f"Subscription/{sub['id']}" in read["outcomeDesc"]
