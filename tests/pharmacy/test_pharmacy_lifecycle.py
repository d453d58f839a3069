"""The MedicationRequest status table, enforced through /fhir PUT, PATCH, transactions and /api."""

from __future__ import annotations

import pytest
from factories import FHIR_JSON, create
from pharmacy_helpers import (
    JSON_PATCH,
    binary_patch,
    new_patient,
    patch_status,
    prescription,
    put,
)

from vitasync_fhir.pharmacy.lifecycle import TRANSITIONS

STATUSES = sorted(TRANSITIONS)
ALLOWED = [(old, new) for old in STATUSES for new in sorted(TRANSITIONS[old])]
FORBIDDEN = [
    ("draft", "completed"),
    ("draft", "on-hold"),
    ("active", "draft"),
    ("on-hold", "completed"),
    ("completed", "active"),
    ("cancelled", "active"),
    ("stopped", "active"),
    ("completed", "draft"),
    ("entered-in-error", "active"),
    ("entered-in-error", "draft"),
]


def test_the_table_covers_the_r4_value_set():
    value_set = {
        "active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped", "draft",
        "unknown",
    }  # fmt: skip
    assert set(TRANSITIONS) == value_set
    assert all(targets <= value_set for targets in TRANSITIONS.values())
    assert {"completed", "cancelled", "stopped", "on-hold"} <= TRANSITIONS["active"]
    assert "active" in TRANSITIONS["draft"] and "active" in TRANSITIONS["on-hold"]
    assert all(old == new or new in TRANSITIONS[old] for old, new in ALLOWED)


@pytest.mark.parametrize(("old", "new"), ALLOWED)
def test_every_allowed_transition_by_put_is_a_new_version(client, old, new):
    pid = new_patient(client)
    rx = create(client, prescription(patient_id=pid, status=old))
    answer = put(client, {**rx, "status": new})
    assert answer.status_code == 200, answer.text
    history = client.get(f"/fhir/MedicationRequest/{rx['id']}/_history").json()
    assert [e["resource"]["status"] for e in history["entry"]] == [new, old]


@pytest.mark.parametrize(("old", "new"), ALLOWED)
def test_every_allowed_transition_by_patch(client, old, new):
    pid = new_patient(client)
    rx = create(client, prescription(patient_id=pid, status=old))
    answer = client.patch(
        f"/fhir/MedicationRequest/{rx['id']}", json=patch_status(new), headers=JSON_PATCH
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == new


@pytest.mark.parametrize(("old", "new"), FORBIDDEN)
def test_forbidden_transitions_answer_409_and_change_nothing(client, old, new):
    pid = new_patient(client)
    rx = create(client, prescription(patient_id=pid, status=old))
    by_put = put(client, {**rx, "status": new})
    assert by_put.status_code == 409, by_put.text
    issue = by_put.json()["issue"][0]
    assert issue["code"] == "business-rule"
    assert f"A {old} prescription cannot become {new}" in issue["diagnostics"]
    by_patch = client.patch(
        f"/fhir/MedicationRequest/{rx['id']}", json=patch_status(new), headers=JSON_PATCH
    )
    assert by_patch.status_code == 409, by_patch.text
    current = client.get(f"/fhir/MedicationRequest/{rx['id']}").json()
    assert current["status"] == old and current["meta"]["versionId"] == "1"


def test_same_status_edits_and_any_first_status_are_allowed(client):
    pid = new_patient(client)
    rx = create(client, prescription(patient_id=pid, status="completed"))
    edited = put(client, {**rx, "note": [{"text": "picked up"}]})
    assert edited.status_code == 200, edited.text
    created_by_put = put(client, {**prescription(patient_id=pid, status="stopped"), "id": "rx-1"})
    assert created_by_put.status_code == 201, created_by_put.text


def test_transactions_and_conditional_updates_obey_the_table(client):
    pid = new_patient(client)
    rx = create(client, prescription(patient_id=pid, status="completed"))
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {**rx, "status": "active"},
                "request": {"method": "PUT", "url": f"MedicationRequest/{rx['id']}"},
            }
        ],
    }
    answer = client.post("/fhir", json=bundle, headers=FHIR_JSON)
    assert answer.status_code == 409, answer.text
    assert answer.json()["issue"][0]["code"] == "business-rule"
    patched = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "resource": binary_patch(patch_status("draft")),
                "request": {"method": "PATCH", "url": f"MedicationRequest/{rx['id']}"},
            }
        ],
    }
    batch = client.post("/fhir", json=patched, headers=FHIR_JSON).json()
    assert batch["entry"][0]["response"]["status"] == "409"
    conditional = client.put(
        f"/fhir/MedicationRequest?_id={rx['id']}",
        json={**rx, "status": "on-hold"},
        headers=FHIR_JSON,
    )
    assert conditional.status_code == 409, conditional.text
    assert client.get(f"/fhir/MedicationRequest/{rx['id']}").json()["status"] == "completed"


@pytest.mark.parametrize(("old", "new"), ALLOWED)
def test_api_update_follows_the_table(client, old, new):
    pid = new_patient(client)
    rx = client.post(
        "/api/prescriptions", json={"patient_id": pid, "medication": "X", "status": old}
    ).json()
    answer = client.put(
        f"/api/prescriptions/{rx['id']}", json={"patient_id": pid, "medication": "X", "status": new}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == new


@pytest.mark.parametrize(("old", "new"), FORBIDDEN)
def test_api_update_refuses_what_the_table_forbids(client, old, new):
    pid = new_patient(client)
    rx = client.post(
        "/api/prescriptions", json={"patient_id": pid, "medication": "X", "status": old}
    ).json()
    answer = client.put(
        f"/api/prescriptions/{rx['id']}", json={"patient_id": pid, "medication": "X", "status": new}
    )
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"] == "conflict"
    assert f"cannot become {new}" in answer.json()["detail"]
    assert client.get(f"/api/prescriptions/{rx['id']}").json()["status"] == old
