"""The plain read's lane (fhir/plainread.py) answers exactly what the full application answers,
goes through the same access checks and audit, and hands everything unusual to the application."""

from __future__ import annotations

import asyncio

import httpx
from factories import create, observation, patient
from fastapi import FastAPI
from support import BASE_URL

from vitasync_fhir.auth import recent
from vitasync_fhir.fhir.plainread import PlainReads

VOLATILE = {"date", "server"}


def _shape(answer: httpx.Response) -> tuple:
    headers = sorted((k, v) for k, v in answer.headers.items() if k not in VOLATILE)
    return answer.status_code, headers, answer.content


class Recorder:
    """The application behind the lane in these tests: it records what reached it."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        self.paths.append(
            scope["path"] + ("?" + scope["query_string"].decode() if scope["query_string"] else "")
        )
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"application"})


def lane_alone(app: FastAPI, recorder: Recorder):  # type: ignore[no-untyped-def]
    """The lane in front of `recorder`, with the real app's state (database, audit trail)."""
    lane = PlainReads(recorder)

    async def asgi(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        scope["app"] = app
        await lane(scope, receive, send)

    return asgi


def get(app_like, path: str, headers: dict[str, str]) -> httpx.Response:  # type: ignore[no-untyped-def]
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app_like)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
            return await http.get(path, headers=headers)

    return asyncio.run(run())


def test_the_lane_answers_as_the_application_does(client, anonymous, signed_in) -> None:  # type: ignore[no-untyped-def]
    pid = create(client, patient(family="Lane"))["id"]
    gone = create(client, patient(family="Gone"))["id"]
    assert client.delete(f"/fhir/Patient/{gone}").status_code in (200, 204)
    doctor = signed_in(role="doctor")
    paths = [
        f"/fhir/Patient/{pid}",
        f"/fhir/Patient/{gone}",
        "/fhir/Patient/nobody-here",
        f"/fhir/Patient/{pid}/_history/1",
        f"/fhir/Patient/{pid}/_history/2",
        f"/fhir/Patient/{gone}/_history/2",
    ]
    recent.forget_all()
    full = [_shape(anonymous.get(p, headers=doctor)) for p in paths]  # verifies and caches
    lane = [_shape(anonymous.get(p, headers=doctor)) for p in paths]
    assert [f[0] for f in full] == [200, 410, 404, 200, 404, 410]
    assert lane == full


def test_a_cached_caller_is_answered_by_the_lane_and_the_rest_by_the_application(
    app, client, anonymous, signed_in
) -> None:  # type: ignore[no-untyped-def]
    pid = create(client, patient(family="Lane"))["id"]
    doctor = signed_in(role="doctor")
    recorder = Recorder()
    asgi = lane_alone(app, recorder)
    recent.forget_all()
    assert get(asgi, f"/fhir/Patient/{pid}", doctor).status_code == 299  # not verified lately
    assert anonymous.get(f"/fhir/Patient/{pid}", headers=doctor).status_code == 200  # now it is
    answer = get(asgi, f"/fhir/Patient/{pid}", doctor)
    assert answer.status_code == 200 and answer.json()["id"] == pid
    assert answer.headers["etag"] == 'W/"1"'
    version = get(asgi, f"/fhir/Patient/{pid}/_history/1", doctor)
    assert version.status_code == 200 and version.content == answer.content
    handed_on = [
        (f"/fhir/Patient/{pid}?_pretty=true", doctor),
        (f"/fhir/Patient/{pid}", {**doctor, "If-None-Match": 'W/"1"'}),
        (f"/fhir/Patient/{pid}", {**doctor, "Origin": "https://app.example.org"}),
        (f"/fhir/Patient/{pid}/_history", doctor),
        (f"/fhir/Patient/{pid}/_history/one", doctor),
        ("/fhir/AuditEvent/x", doctor),
        (f"/fhir/Patient/{pid}", {"Authorization": "Bearer not-a-token-we-know"}),
        (f"/fhir/Patient/{pid}", {}),
    ]
    before = len(recorder.paths)
    for path, headers in handed_on:
        assert get(asgi, path, headers).status_code == 299, path
    assert len(recorder.paths) == before + len(handed_on)


def test_the_lane_keeps_the_policy_and_audits(app, client, anonymous, signed_in) -> None:  # type: ignore[no-untyped-def]
    own = create(client, patient(family="Own"))["id"]
    other = create(client, patient(family="Other"))["id"]
    theirs = create(client, observation(patient_ref=f"Patient/{other}"))["id"]
    mine = create(client, observation(patient_ref=f"Patient/{own}"))["id"]
    me = signed_in(role="patient", patient_id=own)
    assert anonymous.get(f"/fhir/Patient/{own}", headers=me).status_code == 200  # cached now
    recorder = Recorder()
    asgi = lane_alone(app, recorder)
    assert get(asgi, f"/fhir/Observation/{mine}", me).status_code == 200
    refused = get(asgi, f"/fhir/Observation/{theirs}", me)
    assert refused.status_code == 404
    assert refused.json()["resourceType"] == "OperationOutcome"
    assert get(asgi, "/fhir/Practitioner/someone", me).status_code in (403, 404)
    assert recorder.paths == []
    events = client.get("/fhir/AuditEvent", params={"entity": f"Observation/{mine}"}).json()
    assert events.get("total", len(events.get("entry", []))) >= 1
    denied = client.get("/fhir/AuditEvent", params={"entity": f"Observation/{theirs}"}).json()
    outcomes = {
        e["resource"]["outcome"] for e in denied.get("entry", []) if "outcome" in e["resource"]
    }
    assert outcomes and outcomes != {"0"}
