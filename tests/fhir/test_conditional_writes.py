"""Conditional create, update and delete as a review against R4 http.html found them: racing
writers with one condition, an update that matches nothing naming a taken id, If-Match on a
conditional delete, the delete right checked first, and the reads they answer audited. Their
transaction forms: a conditional delete's resource changed again, two entries with one
ifNoneExist, versioned urls of writes."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from factories import FHIR_JSON, create, patient
from live import serving
from support import service_headers

RACERS = 8


def _patient(value: str, **extra: object) -> dict:
    return {**patient(), "identifier": [{"system": "urn:t", "value": value}], **extra}


def _ids(client, value: str) -> list[str]:  # type: ignore[no-untyped-def]
    found = client.get("/fhir/Patient", params={"identifier": f"urn:t|{value}"}).json()
    return [e["resource"]["id"] for e in found.get("entry", [])]


@pytest.fixture
def server(database_url, tmp_path):  # type: ignore[no-untyped-def]
    with serving(database_url, tmp_path) as settings:
        with httpx.Client(
            base_url=settings.base_url, headers=service_headers(settings), timeout=60
        ) as admin:
            yield admin


def _race(admin: httpx.Client, send) -> list[int]:  # type: ignore[no-untyped-def]
    async def main() -> list[int]:
        async with httpx.AsyncClient(
            base_url=admin.base_url, headers=admin.headers, timeout=60
        ) as http:
            answers = await asyncio.gather(*(send(http, n) for n in range(RACERS)))
        return [a.status_code for a in answers]

    return asyncio.run(main())


def test_racing_conditional_writes_with_one_condition_make_one_resource(server) -> None:  # type: ignore[no-untyped-def]
    def create_one(http, n):  # type: ignore[no-untyped-def]
        return http.post(
            "/fhir/Patient",
            json=_patient("race-1"),
            headers={**FHIR_JSON, "If-None-Exist": "identifier=urn:t|race-1"},
        )

    statuses = _race(server, create_one)
    assert sorted(statuses) == [200] * (RACERS - 1) + [201], statuses
    assert len(_ids(server, "race-1")) == 1

    def update_one(http, n):  # type: ignore[no-untyped-def]
        return http.put(
            "/fhir/Patient",
            params={"identifier": "urn:t|race-2"},
            json=_patient("race-2", gender=("male", "female")[n % 2]),
            headers=FHIR_JSON,
        )

    statuses = _race(server, update_one)
    assert sorted(statuses) == [200] * (RACERS - 1) + [201], statuses
    assert len(_ids(server, "race-2")) == 1

    def in_transaction(http, n):  # type: ignore[no-untyped-def]
        entry = {
            "resource": _patient("race-3"),
            "request": {
                "method": "POST",
                "url": "Patient",
                "ifNoneExist": "identifier=urn:t|race-3",
            },
        }
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
        return http.post("/fhir", json=bundle, headers=FHIR_JSON)

    statuses = _race(server, in_transaction)
    assert statuses == [200] * RACERS, statuses
    assert len(_ids(server, "race-3")) == 1


def test_an_update_that_matches_nothing_does_not_overwrite_the_id_it_names(client) -> None:  # type: ignore[no-untyped-def]
    victim = create(client, _patient("v", name=[{"family": "Kept"}]))
    answer = client.put(
        "/fhir/Patient",
        params={"identifier": "urn:t|nomatch"},
        json={**_patient("x", name=[{"family": "Overwritten"}]), "id": victim["id"]},
        headers=FHIR_JSON,
    )
    assert answer.status_code == 409, answer.text
    assert "does not match" in answer.json()["issue"][0]["diagnostics"]
    stored = client.get(f"/fhir/Patient/{victim['id']}").json()
    assert stored["name"][0]["family"] == "Kept" and stored["meta"]["versionId"] == "1"
    entry = {
        "resource": {**_patient("x"), "id": victim["id"]},
        "request": {"method": "PUT", "url": "Patient?identifier=urn:t|nomatch"},
    }
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
    assert client.post("/fhir", json=bundle, headers=FHIR_JSON).status_code == 409
    # A free id is still an update as create.
    free = client.put(
        "/fhir/Patient",
        params={"identifier": "urn:t|nomatch"},
        json={**_patient("nomatch"), "id": "chosen-by-client"},
        headers=FHIR_JSON,
    )
    assert free.status_code == 201, free.text


def test_a_conditional_delete_honours_if_match_and_the_delete_right(client, signed_in) -> None:  # type: ignore[no-untyped-def]
    made = create(client, _patient("d"))
    stale = client.delete(
        "/fhir/Patient", params={"identifier": "urn:t|d"}, headers={"If-Match": 'W/"7"'}
    )
    assert stale.status_code == 412, stale.text
    assert client.get(f"/fhir/Patient/{made['id']}").status_code == 200
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "request": {
                    "method": "DELETE",
                    "url": "Patient?identifier=urn:t|d",
                    "ifMatch": 'W/"9"',
                }
            }
        ],
    }
    assert client.post("/fhir", json=bundle, headers=FHIR_JSON).status_code == 412
    assert client.get(f"/fhir/Patient/{made['id']}").status_code == 200
    right = client.delete(
        "/fhir/Patient", params={"identifier": "urn:t|d"}, headers={"If-Match": 'W/"1"'}
    )
    assert right.status_code == 204 and client.get(f"/fhir/Patient/{made['id']}").status_code == 410
    # A role without the delete right is told so before any condition is looked at.
    pharmacist = signed_in(role="pharmacist")
    for params in ({"_id": "nothing"}, {"identifier": "urn:t|none"}):
        refused = client.delete("/fhir/Patient", params=params, headers=pharmacist)
        assert refused.status_code == 403, refused.text
    assert client.delete("/fhir/AuditEvent", params={"_id": "nothing"}).status_code == 403


def test_what_a_conditional_create_or_an_unchanged_update_answers_is_audited(
    client, signed_in
) -> None:  # type: ignore[no-untyped-def]
    made = create(client, _patient("a"))
    doctor = signed_in(role="doctor")
    found = client.post(
        "/fhir/Patient",
        json=_patient("a"),
        headers={**doctor, **FHIR_JSON, "If-None-Exist": "identifier=urn:t|a"},
    )
    assert found.status_code == 200 and found.json()["id"] == made["id"]
    same = client.put(f"/fhir/Patient/{made['id']}", json=made, headers={**doctor, **FHIR_JSON})
    assert same.status_code == 200 and same.json()["meta"]["versionId"] == "1"
    trail = client.get(
        "/fhir/AuditEvent", params={"entity": f"Patient/{made['id']}", "_count": 100}
    ).json()
    actions = [e["resource"]["subtype"][0]["code"] for e in trail.get("entry", [])]
    assert actions.count("read") == 2, actions


def _transaction(*entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def test_transaction_conditional_entries(client) -> None:  # type: ignore[no-untyped-def]
    made = create(client, _patient("o"))
    # A conditional delete's resource may not be changed by another entry.
    again = _transaction(
        {"request": {"method": "DELETE", "url": "Patient?identifier=urn:t|o"}},
        {"resource": made, "request": {"method": "PUT", "url": f"Patient/{made['id']}"}},
    )
    answer = client.post("/fhir", json=again, headers=FHIR_JSON)
    assert answer.status_code == 400, answer.text
    assert client.get(f"/fhir/Patient/{made['id']}").json()["meta"]["versionId"] == "1"
    # Two entries with one ifNoneExist are one resource, whether it is new or stored.
    for value, first in (("twin", "201 Created"), ("o", "200 OK")):
        post = {
            "fullUrl": f"urn:uuid:00000000-0000-4000-8000-00000000000{len(value)}",
            "resource": _patient(value),
            "request": {
                "method": "POST",
                "url": "Patient",
                "ifNoneExist": f"identifier=urn:t|{value}",
            },
        }
        second = {**post, "fullUrl": "urn:uuid:10000000-0000-4000-8000-000000000000"}
        answer = client.post("/fhir", json=_transaction(post, second), headers=FHIR_JSON)
        assert answer.status_code == 200, answer.text
        entries = answer.json()["entry"]
        assert [e["response"]["status"] for e in entries] == [first, "200 OK"]
        assert entries[0]["response"]["location"] == entries[1]["response"]["location"]
        assert len(_ids(client, value)) == 1
    # A write names no version.
    for method in ("PUT", "DELETE"):
        entry = {"request": {"method": method, "url": f"Patient/{made['id']}/_history/1"}}
        if method == "PUT":
            entry["resource"] = made
        answer = client.post("/fhir", json=_transaction(entry), headers=FHIR_JSON)
        assert answer.status_code == 400, answer.text
    assert client.get(f"/fhir/Patient/{made['id']}").json()["meta"]["versionId"] == "1"


def test_batch_entries_the_server_does_not_serve_say_so(client) -> None:  # type: ignore[no-untyped-def]
    for url in ("Patient/_history", "_history", "metadata"):
        batch = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{"request": {"method": "GET", "url": url}}],
        }
        answer = client.post("/fhir", json=batch, headers=FHIR_JSON)
        assert answer.status_code == 200, answer.text
        status = answer.json()["entry"][0]["response"]["status"]
        assert status.startswith("400"), (url, status)


def test_a_batch_entry_with_if_none_exist_anywhere_in_the_batch(client) -> None:  # type: ignore[no-untyped-def]
    """Each batch entry runs alone: a conditional create after other entries is its own, created
    once and found the second time (a twin lookup among the entries found the entry itself)."""
    entries = [
        {
            "resource": _patient(value),
            "request": {
                "method": "POST",
                "url": "Patient",
                "ifNoneExist": f"identifier=urn:t|{value}",
            },
        }
        for value in ("b1", "b2", "b2")
    ]
    batch = {"resourceType": "Bundle", "type": "batch", "entry": entries}
    answer = client.post("/fhir", json=batch, headers=FHIR_JSON)
    assert answer.status_code == 200, answer.text
    statuses = [e["response"]["status"] for e in answer.json()["entry"]]
    assert statuses == ["201 Created", "201 Created", "200 OK"], answer.text
    assert len(_ids(client, "b1")) == len(_ids(client, "b2")) == 1
