"""Helpers of the subscription tests: a Subscription to post, the app with a real consumer, and
what the receiver and the delivery table saw."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import orjson
from factories import FHIR_JSON
from fastapi.testclient import TestClient
from receiver import Receiver
from sqlalchemy import select
from support import BASE_URL, service_headers

from vitasync_fhir.app import create_app
from vitasync_fhir.config import Settings
from vitasync_fhir.notify import queue as queue_module
from vitasync_fhir.notify.worker import hosted
from vitasync_fhir.subscriptions.tables import subscription_deliveries


def subscription(endpoint: str, *, payload: bool = True, **extra) -> dict:
    channel: dict = {"type": "rest-hook", "endpoint": endpoint, "header": ["X-Pharmacy: north"]}
    if payload:
        channel["payload"] = "application/fhir+json"
    resource = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "New prescriptions to fill",
        "criteria": "MedicationRequest?status=active",
        "channel": channel,
    }
    resource.update(extra)
    return resource


@contextmanager
def running(settings: Settings, *, workers: int = 2) -> Iterator[TestClient]:
    with (
        hosted(settings, workers=workers),
        TestClient(create_app(settings), base_url=BASE_URL) as api,
    ):
        api.headers.update(service_headers(settings))
        yield api


def subscribe(api: TestClient, headers: dict, resource: dict) -> dict:
    answer = api.post("/fhir/Subscription", json=resource, headers={**FHIR_JSON, **headers})
    assert answer.status_code == 201, answer.text
    return answer.json()


def status_of(api: TestClient, sid: str) -> dict:
    return api.get(f"/fhir/Subscription/{sid}").json()


def events(receiver: Receiver, path: str = "/hook") -> list[dict]:
    return [orjson.loads(r.body) for r in receiver.accepted(path) if r.body]


def new_patient(api: TestClient) -> str:
    body = {"resourceType": "Patient", "name": [{"family": "Doe"}]}
    return api.post("/fhir/Patient", json=body, headers=FHIR_JSON).json()["id"]


def deliveries(settings: Settings, sid: str) -> list:
    """The subscription's notification rows, in sequence order."""
    d = subscription_deliveries
    with queue_module.queue_for(settings).engine.connect() as conn:
        return list(
            conn.execute(select(d).where(d.c.subscription_id == sid).order_by(d.c.seq)).all()
        )


def sequences(receiver: Receiver, path: str = "/hook") -> list[int]:
    """X-Subscription-Sequence of every request the receiver accepted, in arrival order."""
    return [int(r.headers["X-Subscription-Sequence"]) for r in receiver.accepted(path)]


@contextmanager
def tuned(settings: Settings, **changes: object) -> Iterator[Settings]:
    """`settings` with some values changed, and a queue of its own while the block runs."""
    made = Settings(**{**settings.model_dump(), **changes})
    try:
        yield made
    finally:
        queue_module.forget(made)
