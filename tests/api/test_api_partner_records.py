"""Synthea records a partner EHR wrote through /fhir, made richer the way partners write them,
then read, listed and edited through /api: the edit changes one element and loses nothing."""

from __future__ import annotations

import copy

import pytest
from factories import FHIR_JSON, create, load_bundle, patient

BUNDLE = "Buster_Hoeger_ad2e3fc5-2b5d-4cb9-8d03-9ea0f4ac8423.json"
PARTNER = {
    "extension": [{"url": "http://partner.example/fhir/note-source", "valueString": "EHR-7"}],
    "identifier": [{"system": "http://partner.example/ids", "value": "P-1"}],
    "contained": [{"resourceType": "Practitioner", "id": "c1", "name": [{"family": "Ward"}]}],
}
# /api name: FHIR type, the code to pick from the bundle, what the partner adds, and the one
# edit made (field, value, and where it lands in the FHIR resource).
CASES = {
    "patients": (
        "Patient",
        None,
        {
            "name": [
                {"use": "official", "family": "Hoeger", "given": ["Buster", "Lee"]},
                {"use": "nickname", "given": ["Bus"]},
            ],
            "telecom": [
                {"system": "phone", "value": "555-0101"},
                {"system": "email", "value": "buster@example.org"},
                {"system": "phone", "value": "555-0102", "use": "mobile"},
            ],
        },
        ("given_name", "Bastian", ("name", 0, "given", 0)),
    ),
    "prescriptions": (
        "MedicationRequest",
        None,
        {"note": [{"text": "first"}, {"text": "second"}]},
        ("notes", "edited", ("note", 0, "text")),
    ),
    "procedures": (
        "Procedure",
        None,
        {"note": [{"text": "first"}, {"text": "second"}]},
        ("notes", "edited", ("note", 0, "text")),
    ),
    "records": (
        "Encounter",
        None,
        {
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"},
            "reasonCode": [{"text": "Sinusitis"}, {"text": "Fever"}],
        },
        ("reason", "Sinusitis, treated", ("reasonCode", 0, "text")),
    ),
    "vaccines": (
        "Immunization",
        None,
        {"note": [{"text": "first"}, {"text": "second"}]},
        ("notes", "edited", ("note", 0, "text")),
    ),
    "vitals": (
        "Observation",
        "8302-2",
        {"interpretation": [{"text": "normal"}]},
        ("value", 190.5, ("valueQuantity", "value")),
    ),
}


def enriched(resource: dict, extra: dict) -> dict:
    resource = copy.deepcopy(resource)
    for key, items in PARTNER.items():
        resource[key] = resource.get(key, []) + copy.deepcopy(items)
    tag = {"system": "http://partner.example/tags", "code": "imported"}
    resource.setdefault("meta", {}).setdefault("tag", []).append(tag)
    resource["meta"]["security"] = [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}
    ]
    if resource["resourceType"] == "Observation":
        resource["code"]["coding"].append({"system": "http://snomed.info/sct", "code": "50373000"})
    return {**resource, **copy.deepcopy(extra)}


def without_version(resource: dict) -> dict:
    meta = {k: v for k, v in resource["meta"].items() if k not in ("versionId", "lastUpdated")}
    return {**resource, "meta": meta}


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_edit_through_api_changes_one_element_of_a_partner_record(client, synthea_dir, name):
    fhir_type, code, extra, (field, value, where) = CASES[name]
    load_bundle(client, synthea_dir / BUNDLE)
    found = client.get(f"/fhir/{fhir_type}", params={"_count": 100}).json()["entry"]
    picked = [
        e["resource"]
        for e in found
        if code is None or e["resource"]["code"]["coding"][0]["code"] == code
    ][0]
    rich = enriched(picked, extra)
    answer = client.put(f"/fhir/{fhir_type}/{rich['id']}", json=rich, headers=FHIR_JSON)
    assert answer.status_code == 200, answer.text
    before = answer.json()

    record = client.get(f"/api/{name}/{rich['id']}")
    assert record.status_code == 200, record.text
    listed = client.get(f"/api/{name}", params={"per_page": 100})
    assert listed.status_code == 200, listed.text
    assert rich["id"] in {item["id"] for item in listed.json()["items"]}
    edited = client.put(f"/api/{name}/{rich['id']}", json={**record.json(), field: value})
    assert edited.status_code == 200, edited.text
    assert edited.json()[field] == value

    after = client.get(f"/fhir/{fhir_type}/{rich['id']}").json()
    expected = copy.deepcopy(before)
    target = expected
    for step in where[:-1]:
        target = target[step]
    target[where[-1]] = value
    assert without_version(after) == without_version(expected)
    checked = client.post(f"/fhir/{fhir_type}/$validate", json=after, headers=FHIR_JSON)
    assert checked.status_code == 200, checked.text


def test_performing_a_procedure_in_progress_ends_its_period_and_keeps_its_performers(client):
    pid = create(client, patient())["id"]
    doctor = create(client, {"resourceType": "Practitioner", "name": [{"family": "Who"}]})
    performers = [
        {"actor": {"reference": f"Practitioner/{doctor['id']}"}, "function": {"text": "surgeon"}},
        {"actor": {"reference": "#c1"}},
    ]
    procedure = create(
        client,
        {
            "resourceType": "Procedure",
            "status": "in-progress",
            "code": {"text": "Suture of wound"},
            "subject": {"reference": f"Patient/{pid}"},
            "performedPeriod": {"start": "2026-01-01T10:00:00Z"},
            "performer": performers,
            "contained": PARTNER["contained"],
        },
    )
    done = client.post(f"/api/procedures/{procedure['id']}/perform")
    assert done.status_code == 200, done.text
    stored = client.get(f"/fhir/Procedure/{procedure['id']}").json()
    assert stored["status"] == "completed"
    assert stored["performedPeriod"]["start"] == "2026-01-01T10:00:00Z"
    assert stored["performedPeriod"]["end"] and "performedDateTime" not in stored
    assert stored["performer"] == performers


def test_a_record_sent_back_as_read_is_accepted(client):
    pid = create(client, patient())["id"]
    made = client.post("/api/records", json={"patient_id": pid, "reason": "Cough"}).json()
    read = client.get(f"/api/records/{made['id']}").json()
    assert "linked" in read
    answer = client.put(f"/api/records/{made['id']}", json={**read, "reason": "Cough, better"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["reason"] == "Cough, better"


def test_the_vitals_list_shows_vital_signs_not_every_observation(client):
    pid = create(client, patient())["id"]
    lab = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2093-3"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "valueQuantity": {"value": 190, "unit": "mg/dL"},
    }
    create(client, lab)
    pulse = client.post(
        "/api/vitals",
        json={
            "kind": "heart_rate",
            "patient_id": pid,
            "value": 72,
            "effective": "2026-01-01T08:00:00Z",
        },
    ).json()
    listed = client.get("/api/vitals", params={"patient": pid}).json()
    assert [item["id"] for item in listed["items"]] == [pulse["id"]]
    assert listed["total"] == 1
