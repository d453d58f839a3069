"""References written with this server's absolute FHIR base are the same references as their
relative form: for criteria, compartments, includes and the access layer's patient limit. Each
test makes its own data on a fresh SQLite or PostgreSQL database."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

from vitasync_fhir.config import Settings
from vitasync_fhir.fhir.search import index, values

JSON = {"Content-Type": "application/fhir+json"}


def create(client: TestClient, resource: dict) -> dict:
    answer = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=JSON)
    assert answer.status_code == 201, answer.text
    return answer.json()


def observation(subject: str, code: str) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "urn:test:codes", "code": code}]},
        "subject": {"reference": subject},
    }


def entries(client: TestClient, path: str, mode: str, **params: str) -> set[str]:
    answer = client.get(f"/fhir/{path}", params=params)
    assert answer.status_code == 200, answer.text
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in answer.json().get("entry", [])
        if e["search"]["mode"] == mode
    }


def test_a_reference_with_our_base_is_the_relative_reference(
    client: TestClient, settings: Settings
) -> None:
    patient = create(client, {"resourceType": "Patient", "name": [{"family": "Absolute"}]})
    pid = patient["id"]
    ours = create(client, observation(f"{settings.fhir_base}/Patient/{pid}", "ours"))
    assert ours["subject"]["reference"] == f"{settings.fhir_base}/Patient/{pid}"  # kept as sent
    mine = f"Observation/{ours['id']}"
    # another server's Patient with the same id is not ours
    create(client, observation(f"http://elsewhere.example/fhir/Patient/{pid}", "theirs"))

    assert entries(client, "Observation", "match", subject=f"Patient/{pid}") == {mine}
    full = f"{settings.fhir_base}/Patient/{pid}"
    assert entries(client, "Observation", "match", subject=full) == {mine}
    assert entries(client, f"Patient/{pid}/Observation", "match") == {mine}
    included = entries(
        client, "Observation", "include", _id=ours["id"], _include="Observation:subject"
    )
    assert included == {f"Patient/{pid}"}
    revincluded = entries(client, "Patient", "include", _id=pid, _revinclude="Observation:subject")
    assert revincluded == {mine}


def test_conditions_with_our_base_match_relative_references(
    client: TestClient, settings: Settings
) -> None:
    patient = create(client, {"resourceType": "Patient", "name": [{"family": "Condition"}]})
    first = create(client, observation(f"Patient/{patient['id']}", "once"))
    again = client.post(
        "/fhir/Observation",
        json=observation(f"Patient/{patient['id']}", "once"),
        headers={
            **JSON,
            "If-None-Exist": f"subject={settings.fhir_base}/Patient/{patient['id']}&code=once",
        },
    )
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first["id"]


def test_a_patient_finds_what_refers_to_them_with_our_base(
    client: TestClient, settings: Settings, signed_in: Callable[..., dict[str, str]]
) -> None:
    patient = create(client, {"resourceType": "Patient", "name": [{"family": "Owner"}]})
    ours = create(client, observation(f"{settings.fhir_base}/Patient/{patient['id']}", "own"))
    me = signed_in(role="patient", patient_id=patient["id"])
    read = client.get(f"/fhir/Observation/{ours['id']}", headers=me)
    assert read.status_code == 200, read.text
    found = client.get("/fhir/Observation", params={"_id": ours["id"]}, headers=me)
    assert found.status_code == 200, found.text
    assert [e["resource"]["id"] for e in found.json().get("entry", [])] == [ours["id"]]


def test_another_servers_patient_with_the_same_id_is_not_ours(
    client: TestClient, signed_in: Callable[..., dict[str, str]]
) -> None:
    """Read by id and search agree: a record about https://elsewhere/.../Patient/<our id> is
    another server's patient's, not in our patient's compartment, and hidden from them."""
    patient = create(client, {"resourceType": "Patient", "name": [{"family": "Owner"}]})
    foreign = f"https://ehr.elsewhere.example/fhir/Patient/{patient['id']}"
    theirs = create(client, observation(foreign, "foreign"))
    me = signed_in(role="patient", patient_id=patient["id"])
    assert client.get(f"/fhir/Observation/{theirs['id']}", headers=me).status_code == 404
    found = client.get("/fhir/Observation", params={"_id": theirs["id"]}, headers=me)
    assert found.json().get("entry", []) == []
    written = client.post(
        "/fhir/Observation",
        json=observation(foreign, "mine?"),
        headers={**me, "Content-Type": "application/fhir+json"},
    )
    assert written.status_code == 403  # a patient writes only into their own compartment


def test_references_are_indexed_without_our_base() -> None:
    base = "http://server.example/fhir"
    assert values.parse_reference(f"{base}/Patient/1", base) == ("Patient", "1", None)
    assert values.parse_reference(f"{base}/Patient/1/_history/2", base) == ("Patient", "1", None)
    assert values.parse_reference(f"{base}x/Patient/1", base) == (None, None, f"{base}x/Patient/1")
    assert values.parse_reference("http://other.example/fhir/Patient/1", base)[2] is not None
    resource = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": f"{base}/Patient/p1"},
    }
    rows = index.extract("Observation", resource, base=base)
    assert ("subject", "Patient", "p1", None) in rows["reference"]
    assert index.compartments("Observation", "o1", rows) == {"p1"}
    # the memo of repeated elements keeps bases apart
    assert ("subject", "Patient", "p1", None) not in index.extract("Observation", resource)[
        "reference"
    ]
