"""The role policy through /fhir over HTTP: every role x type x interaction x own/other patient.

Expectations come from the policy table itself (policy.decide), so the table and the enforcement
layer cannot drift apart; the hand-written tests below pin the leaks other servers had.
"""

from __future__ import annotations

import pytest
from factories import FHIR_JSON, create, observation, patient
from fastapi.testclient import TestClient

from vitasync_fhir.auth import policy
from vitasync_fhir.auth.scopes import Scope
from vitasync_fhir.fhir import validation
from vitasync_fhir.fhir.search import query


def in_compartment(resource_type: str, pid: str) -> dict:
    ref = {"reference": f"Patient/{pid}"}
    shapes = {
        "Observation": observation(patient_ref=f"Patient/{pid}"),
        "MedicationRequest": {
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": {"text": "Amoxicillin"},
            "subject": ref,
        },
        "MedicationDispense": {
            "status": "completed",
            "medicationCodeableConcept": {"text": "Amoxicillin"},
            "subject": ref,
        },
        "Procedure": {"status": "completed", "code": {"text": "Suture"}, "subject": ref},
        "Immunization": {
            "status": "completed",
            "vaccineCode": {"text": "Flu"},
            "patient": ref,
            "occurrenceDateTime": "2026-01-01",
        },
        "Encounter": {
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": ref,
        },
        "Appointment": {"status": "booked", "participant": [{"actor": ref, "status": "accepted"}]},
        "Condition": {"code": {"text": "Cough"}, "subject": ref},
        "AllergyIntolerance": {"code": {"text": "Peanut"}, "patient": ref},
        "Practitioner": {"name": [{"family": f"Doctor-of-{pid[:4]}"}]},
    }
    return {"resourceType": resource_type, **shapes[resource_type]}


TYPES = [
    "Patient",
    "Observation",
    "MedicationRequest",
    "MedicationDispense",
    "Procedure",
    "Immunization",
    "Encounter",
    "Appointment",
    "Condition",
    "AllergyIntolerance",
    "Practitioner",
]


UPDATE = {"language": "en"}  # what each update of the matrix changes


def expected(caller: policy.Caller, resource_type: str, interaction: str, whose: str) -> int:
    """The status the policy table promises for one request."""
    ok = {"read": 200, "search": 200, "create": 201, "update": 200, "delete": 204}[interaction]
    decision = policy.decide(caller, resource_type, interaction)
    if not decision.allowed:
        return 403
    limited = decision.patient_id is not None and policy.in_compartment_types(resource_type)
    if interaction == "update" and policy.changed_beyond(caller, resource_type, {}, UPDATE):
        return 403  # the role may change only some elements (a pharmacist: a status)
    if not limited or whose == "own":
        return ok
    return 403 if interaction == "create" else 404


@pytest.fixture
def people(client: TestClient) -> dict:
    own = create(client, patient(family="Own"))["id"]
    other = create(client, patient(family="Other"))["id"]
    return {"own": own, "other": other}


def make(client: TestClient, resource_type: str, pid: str) -> str:
    if resource_type == "Patient":
        return create(client, patient(family="Extra"))["id"] if pid is None else pid
    return create(client, in_compartment(resource_type, pid))["id"]


@pytest.mark.parametrize("role", policy.ROLES)
def test_role_matrix_through_fhir(role, client, anonymous, signed_in, people):  # type: ignore[no-untyped-def]
    headers = signed_in(role=role, patient_id=people["own"] if role == "patient" else None)
    caller = policy.Caller(
        role=role,
        scopes=(Scope("user", "*", "cruds"),),
        patient_id=people["own"] if role == "patient" else None,
    )
    caller = policy.Caller(
        role=role, scopes=policy.ceiling(role, ["user"]), patient_id=caller.patient_id
    )
    failures = []

    def check(label: str, answer, want: int) -> None:  # type: ignore[no-untyped-def]
        if answer.status_code != want:
            failures.append(
                f"{label}: got {answer.status_code}, policy says {want}: {answer.text[:160]}"
            )

    for resource_type in TYPES:
        ids = {whose: make(client, resource_type, pid) for whose, pid in people.items()}
        for whose, rid in ids.items():
            check(
                f"read {resource_type} {whose}",
                anonymous.get(f"/fhir/{resource_type}/{rid}", headers=headers),
                expected(caller, resource_type, "read", whose),
            )
        search = anonymous.get(
            f"/fhir/{resource_type}?_id={ids['own']},{ids['other']}", headers=headers
        )
        want = expected(caller, resource_type, "search", "own")
        check(f"search {resource_type}", search, want)
        if search.status_code == 200:
            found = {e["resource"]["id"] for e in search.json().get("entry", [])}
            visible = {
                rid
                for whose, rid in ids.items()
                if expected(caller, resource_type, "read", whose) == 200
            }
            if found != visible:
                failures.append(f"search {resource_type}: found {found}, policy shows {visible}")
        for whose, pid in people.items():
            body = (
                in_compartment(resource_type, pid)
                if resource_type != "Patient"
                else patient(family="New")
            )
            if resource_type == "Patient" and whose == "other":
                continue  # a new Patient is in no one's compartment but its own
            check(
                f"create {resource_type} {whose}",
                anonymous.post(
                    f"/fhir/{resource_type}", json=body, headers={**headers, **FHIR_JSON}
                ),
                expected(caller, resource_type, "create", whose),
            )
        for whose, rid in ids.items():
            current = client.get(f"/fhir/{resource_type}/{rid}").json()
            changed = {**current, **UPDATE}
            check(
                f"update {resource_type} {whose}",
                anonymous.put(
                    f"/fhir/{resource_type}/{rid}", json=changed, headers={**headers, **FHIR_JSON}
                ),
                expected(caller, resource_type, "update", whose),
            )
        for whose, rid in ids.items():
            if resource_type == "Patient":
                continue  # deleting the callers' own Patient would end the test's premise
            check(
                f"delete {resource_type} {whose}",
                anonymous.delete(f"/fhir/{resource_type}/{rid}", headers=headers),
                expected(caller, resource_type, "delete", whose),
            )
    assert not failures, "\n".join(failures)


def test_a_patient_cannot_reach_others_through_includes_chains_has_or_history(
    client, anonymous, signed_in, people, monkeypatch
):  # type: ignore[no-untyped-def]
    own, other = people["own"], people["other"]
    mine = create(client, observation(patient_ref=f"Patient/{own}", code="8867-4"))["id"]
    theirs = create(client, observation(patient_ref=f"Patient/{other}", code="8867-4"))["id"]
    me = signed_in(role="patient", patient_id=own)

    def ids(url: str) -> set[str]:
        answer = anonymous.get(url, headers=me)
        assert answer.status_code == 200, answer.text
        return {
            f"{e['resource']['resourceType']}/{e['resource']['id']}"
            for e in answer.json().get("entry", [])
        }

    assert ids("/fhir/Observation?code=8867-4") == {f"Observation/{mine}"}
    assert ids("/fhir/Observation?code=8867-4&_include=Observation:subject") == {
        f"Observation/{mine}",
        f"Patient/{own}",
    }
    assert ids("/fhir/Patient?_revinclude=Observation:subject") == {
        f"Patient/{own}",
        f"Observation/{mine}",
    }
    assert ids("/fhir/Observation?subject.family=Other") == set()
    assert ids("/fhir/Patient?_has:Observation:subject:code=8867-4") == {f"Patient/{own}"}
    monkeypatch.setattr(query, "DENSE_SOURCES", 1)  # the shape for many sources: per target
    monkeypatch.setattr(query, "DENSE_SHARE", 0.0)
    assert ids("/fhir/Patient?_has:Observation:subject:code=8867-4") == {f"Patient/{own}"}
    monkeypatch.undo()
    assert ids(f"/fhir/Patient/{other}/Observation") == set()
    history = {key for key in ids("/fhir/Observation/_history")}
    assert history == {f"Observation/{mine}"}
    assert anonymous.get(f"/fhir/Observation/{theirs}/_history", headers=me).status_code == 404
    assert anonymous.get(f"/fhir/Observation/{theirs}/_history/1", headers=me).status_code == 404
    system = ids("/fhir/_history")
    assert f"Observation/{theirs}" not in system and f"Patient/{other}" not in system


def test_a_denied_transaction_entry_fails_the_whole_transaction(
    client, anonymous, signed_in, people
):  # type: ignore[no-untyped-def]
    me = signed_in(role="pharmacist")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": in_compartment("MedicationDispense", people["own"]),
                "request": {"method": "POST", "url": "MedicationDispense"},
            },
            {
                "resource": observation(patient_ref=f"Patient/{people['own']}"),
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    answer = anonymous.post("/fhir", json=bundle, headers={**me, **FHIR_JSON})
    assert answer.status_code == 403
    assert client.get("/fhir/MedicationDispense").json().get("entry", []) == []


def test_denials_and_reads_are_audited(client, anonymous, signed_in, people):  # type: ignore[no-untyped-def]
    theirs = create(client, observation(patient_ref=f"Patient/{people['other']}"))["id"]
    mine = create(client, observation(patient_ref=f"Patient/{people['own']}"))["id"]
    me = signed_in(role="patient", patient_id=people["own"])
    assert anonymous.get(f"/fhir/Observation/{mine}", headers=me).status_code == 200
    assert anonymous.get(f"/fhir/Observation/{theirs}", headers=me).status_code == 404
    events = client.get("/fhir/AuditEvent?_count=100").json().get("entry", [])
    about = {}
    for entry in events:
        event = entry["resource"]
        for entity in event.get("entity", []):
            about.setdefault(entity.get("what", {}).get("reference"), set()).add(event["outcome"])
    assert "0" in about[f"Observation/{mine}"]
    assert "4" in about[f"Observation/{theirs}"]
    assert anonymous.get("/fhir/AuditEvent", headers=me).status_code in (200, 403)


def test_a_transaction_is_audited_in_a_few_valid_events(client, anonymous, signed_in, people):  # type: ignore[no-untyped-def]
    doctor = signed_in(role="doctor")
    entries = [
        {
            "resource": observation(patient_ref=f"Patient/{people['own']}"),
            "request": {"method": "POST", "url": "Observation"},
        }
        for _ in range(5)
    ]
    answer = anonymous.post(
        "/fhir",
        json={"resourceType": "Bundle", "type": "transaction", "entry": entries},
        headers={**doctor, **FHIR_JSON},
    )
    assert answer.status_code == 200, answer.text
    created = {
        e["response"]["location"].split("/_history")[0].split("/fhir/")[1]
        for e in answer.json()["entry"]
    }
    events = [e["resource"] for e in client.get("/fhir/AuditEvent?_count=200").json()["entry"]]
    creations = [
        e
        for e in events
        if e["action"] == "C" and e["agent"][0].get("role") == [{"text": "doctor"}]
    ]
    assert len(creations) == 1
    assert {x["what"]["reference"] for x in creations[0]["entity"]} == created
    for event in events:
        stored = {k: v for k, v in event.items() if k not in ("id", "meta")}
        assert validation.validate(stored) == [], event


def test_a_denial_after_the_request_wrote_is_still_audited(client, anonymous, signed_in, people):  # type: ignore[no-untyped-def]
    """The denial is recorded after the request's own transaction ends (on SQLite a second writer
    would otherwise wait behind it)."""
    doctor = signed_in(role="doctor")
    doomed = create(client, observation(patient_ref=f"Patient/{people['own']}"))["id"]
    audit_event = {
        "resourceType": "AuditEvent",
        "type": {"code": "rest"},
        "recorded": "2026-01-01T00:00:00Z",
        "agent": [{"requestor": True}],
        "source": {"observer": {"display": "forged"}},
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "DELETE", "url": f"Observation/{doomed}"}},
            {
                "resource": audit_event,
                "request": {"method": "POST", "url": "AuditEvent"},
            },
        ],
    }
    answer = anonymous.post("/fhir", json=bundle, headers={**doctor, **FHIR_JSON})
    assert answer.status_code == 403, answer.text
    assert client.get(f"/fhir/Observation/{doomed}").status_code == 200
    events = [e["resource"] for e in client.get("/fhir/AuditEvent?_count=200").json()["entry"]]
    denied = [
        e for e in events if e["outcome"] == "4" and e["entity"][0]["type"]["code"] == "AuditEvent"
    ]
    assert len(denied) == 1
