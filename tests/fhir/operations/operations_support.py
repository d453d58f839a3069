"""Helpers of the operation tests: a small population, export kick-off and polling."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import orjson
from factories import FHIR_JSON, create, observation, patient
from fastapi.testclient import TestClient

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
HEART_RATE = "8867-4"
SYSTOLIC = "8480-6"


@dataclass
class Population:
    organization: str
    practitioner: str
    patients: list[str]
    # (type, id) per patient, the Patient included
    records: dict[str, set[tuple[str, str]]] = field(default_factory=dict)


def populate(client: TestClient, *, patients: int = 3) -> Population:
    """Patients, each with two Observations, an Encounter and a Condition; one Practitioner and
    one Organization that every Encounter refers to."""
    org = create(client, {"resourceType": "Organization", "name": "Clinic"})["id"]
    doc = create(client, {"resourceType": "Practitioner", "name": [{"family": "House"}]})["id"]
    people = Population(org, doc, [])
    for number in range(patients):
        pid = create(client, patient(family=f"Family{number}"))["id"]
        ref = f"Patient/{pid}"
        record = {("Patient", pid)}
        for code in (HEART_RATE, SYSTOLIC):
            record.add(
                ("Observation", create(client, observation(patient_ref=ref, code=code))["id"])
            )
        encounter = {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": ref},
            "participant": [{"individual": {"reference": f"Practitioner/{doc}"}}],
            "serviceProvider": {"reference": f"Organization/{org}"},
        }
        record.add(("Encounter", create(client, encounter)["id"]))
        condition = {
            "resourceType": "Condition",
            "subject": {"reference": ref},
            "code": {"text": "Headache"},
        }
        record.add(("Condition", create(client, condition)["id"]))
        people.patients.append(pid)
        people.records[pid] = record
    return people


def kick_off(client: TestClient, path: str, **headers: str) -> str:
    answer = client.get(path, headers={**ASYNC, **headers})
    assert answer.status_code == 202, answer.text
    assert answer.json()["resourceType"] == "OperationOutcome"
    return answer.headers["Content-Location"]


def wait_manifest(client: TestClient, status_url: str, *, timeout: float = 90, **headers: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        answer = client.get(status_url, headers=headers)
        if answer.status_code == 200:
            assert answer.headers["content-type"].startswith("application/json")
            return answer.json()
        assert answer.status_code == 202, answer.text
        assert answer.headers["X-Progress"]
        assert int(answer.headers["Retry-After"]) >= 1
        assert time.monotonic() < deadline, "the export did not finish"
        time.sleep(0.2)


def download(client: TestClient, url: str, **headers: str) -> list[str]:
    answer = client.get(url, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/fhir+ndjson")
    return answer.text.splitlines()


def exported(client: TestClient, manifest: dict, **headers: str) -> dict[str, list[str]]:
    """type -> the NDJSON lines of its file, checked against the manifest's counts."""
    out: dict[str, list[str]] = {}
    for item in manifest["output"]:
        lines = download(client, item["url"], **headers)
        assert len(lines) == item["count"]
        assert item["type"] not in out, "one file per type"
        out[item["type"]] = lines
    return out


def keys(lines_by_type: dict[str, list[str]]) -> set[tuple[str, str]]:
    found = set()
    for resource_type, lines in lines_by_type.items():
        for line in lines:
            data = orjson.loads(line)
            assert data["resourceType"] == resource_type
            found.add((resource_type, data["id"]))
    return found


def search_ids(client: TestClient, resource_type: str) -> set[tuple[str, str]]:
    answer = client.get(f"/fhir/{resource_type}", params={"_count": 1000})
    assert answer.status_code == 200, answer.text
    return {(resource_type, e["resource"]["id"]) for e in answer.json().get("entry", [])}


def post_json(client: TestClient, path: str, body: dict, **headers: str):  # type: ignore[no-untyped-def]
    return client.post(path, json=body, headers={**FHIR_JSON, **headers})
