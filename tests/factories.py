"""Plain keyword-only factories for test data."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def patient(
    *, family: str = "Doe", given: str = "Jane", identifier: str | None = None, **extra
) -> dict:
    resource: dict = {
        "resourceType": "Patient",
        "name": [{"family": family, "given": [given]}],
        "gender": "female",
        "birthDate": "1980-04-02",
    }
    if identifier:
        resource["identifier"] = [{"system": "urn:test:mrn", "value": identifier}]
    resource.update(extra)
    return resource


def observation(*, patient_ref: str, code: str = "8867-4", value: float = 72, **extra) -> dict:
    resource: dict = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": patient_ref},
        "valueQuantity": {
            "value": value,
            "unit": "/min",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
    }
    resource.update(extra)
    return resource


def create(client: TestClient, resource: dict, **headers: str) -> dict:
    answer = client.post(
        f"/fhir/{resource['resourceType']}", json=resource, headers={**FHIR_JSON, **headers}
    )
    assert answer.status_code == 201, answer.text
    return answer.json()


def load_bundle(client: TestClient, path: Path) -> dict:
    """Post a Synthea transaction bundle and return the transaction-response."""
    answer = client.post("/fhir", content=path.read_bytes(), headers=FHIR_JSON)
    assert answer.status_code == 200, answer.text[:2000]
    return answer.json()


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
