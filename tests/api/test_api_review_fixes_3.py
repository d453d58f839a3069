"""What a third review of the /api face found: a maiden name shown and rewritten as the name a
person goes by, an escort shown as the doctor, Synthea's medications, vaccines and procedures
shown as null and then refused on any edit, and a patient without a name refused a new phone."""

from __future__ import annotations

import pytest
from factories import FHIR_JSON, create, patient

MOMENT = "2026-01-01T09:00:00Z"
SNOMED = "http://snomed.info/sct"


def practitioner(client, family: str = "Who") -> str:  # type: ignore[no-untyped-def]
    return create(client, {"resourceType": "Practitioner", "name": [{"family": family}]})["id"]


def fhir(client, resource_type: str, resource_id: str) -> dict:  # type: ignore[no-untyped-def]
    return client.get(f"/fhir/{resource_type}/{resource_id}").json()


def test_api_reads_and_writes_the_name_a_person_goes_by_not_a_maiden_name(client):
    names = [
        {"use": "old", "family": "Maiden", "given": ["Ann"]},
        {"use": "official", "family": "Married", "given": ["Anna"]},
    ]
    pid = create(client, patient(name=names))["id"]
    shown = client.get(f"/api/patients/{pid}").json()
    assert (shown["family_name"], shown["given_name"]) == ("Married", "Anna")
    answer = client.patch(f"/api/patients/{pid}", json={"family_name": "Newname"})
    assert answer.status_code == 200, answer.text
    assert fhir(client, "Patient", pid)["name"] == [
        names[0],
        {"use": "official", "family": "Newname", "given": ["Anna"]},
    ]


def test_a_patient_known_only_by_an_old_name_gets_a_new_one_beside_it(client):
    old = {"use": "maiden", "family": "Maiden"}
    pid = create(client, patient(name=[old]))["id"]
    assert client.get(f"/api/patients/{pid}").json()["family_name"] is None
    answer = client.patch(f"/api/patients/{pid}", json={"family_name": "Newname"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["family_name"] == "Newname"
    assert fhir(client, "Patient", pid)["name"] == [old, {"family": "Newname"}]


def test_a_visits_doctor_is_its_practitioner_not_an_escort(client):
    pid = create(client, patient())["id"]
    doctor, other = practitioner(client), practitioner(client, "Other")
    escort = create(
        client,
        {
            "resourceType": "RelatedPerson",
            "patient": {"reference": f"Patient/{pid}"},
            "name": [{"family": "Escort"}],
        },
    )["id"]
    participants = [
        {"type": [{"text": "escort"}], "individual": {"reference": f"RelatedPerson/{escort}"}},
        {"individual": {"reference": f"Practitioner/{doctor}"}},
    ]
    visit = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{pid}"},
        "participant": participants,
    }
    eid = create(client, visit)["id"]
    assert client.get(f"/api/records/{eid}").json()["doctor_id"] == doctor
    answer = client.patch(f"/api/records/{eid}", json={"doctor_id": other})
    assert answer.status_code == 200, answer.text
    assert fhir(client, "Encounter", eid)["participant"] == [
        participants[0],
        {"individual": {"reference": f"Practitioner/{other}"}},
    ]


def _performed(pid: str, organization: str, doctor: str) -> dict[str, tuple[str, str, dict]]:
    """Each /api name: its FHIR type, its performer field and a partner's record whose first
    performer is the organization and whose second is the doctor."""
    by = [{"actor": {"reference": organization}}, {"actor": {"reference": doctor}}]
    return {
        "procedures": (
            "Procedure",
            "performer_id",
            {
                "resourceType": "Procedure",
                "status": "completed",
                "code": {"text": "Suture"},
                "subject": {"reference": f"Patient/{pid}"},
                "performer": by,
            },
        ),
        "vaccines": (
            "Immunization",
            "administered_by",
            {
                "resourceType": "Immunization",
                "status": "completed",
                "vaccineCode": {"text": "Influenza"},
                "patient": {"reference": f"Patient/{pid}"},
                "occurrenceDateTime": MOMENT,
                "performer": by,
            },
        ),
        "vitals": (
            "Observation",
            "performer_id",
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": f"Patient/{pid}"},
                "effectiveDateTime": MOMENT,
                "valueQuantity": {"value": 70, "unit": "/min", "code": "/min"},
                "performer": [{"reference": organization}, {"reference": doctor}],
            },
        ),
    }


@pytest.mark.parametrize("name", ["procedures", "vaccines", "vitals"])
def test_the_performer_is_the_practitioner_among_the_performers(client, name):
    pid = create(client, patient())["id"]
    organization = create(client, {"resourceType": "Organization", "name": "Clinic"})["id"]
    doctor, other = practitioner(client), practitioner(client, "Other")
    cases = _performed(pid, f"Organization/{organization}", f"Practitioner/{doctor}")
    fhir_type, field, resource = cases[name]
    rid = create(client, resource)["id"]
    assert client.get(f"/api/{name}/{rid}").json()[field] == doctor
    answer = client.patch(f"/api/{name}/{rid}", json={field: other})
    assert answer.status_code == 200, answer.text
    performers = fhir(client, fhir_type, rid)["performer"]
    assert performers[0] == resource["performer"][0]  # the organization stays as it was
    assert other in str(performers[1]) and doctor not in str(performers)
    assert len(performers) == 2


def _coded_only(pid: str) -> dict[str, tuple[str, str, dict]]:
    """Each /api name: its FHIR type, its name field and a record as Synthea writes it, whose
    concept has a coding with a display and no text."""
    return {
        "prescriptions": (
            "MedicationRequest",
            "medication",
            {
                "resourceType": "MedicationRequest",
                "status": "active",
                "intent": "order",
                "subject": {"reference": f"Patient/{pid}"},
                "medicationCodeableConcept": {
                    "coding": [
                        {
                            "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                            "code": "308182",
                            "display": "Amoxicillin 250 MG Oral Capsule",
                        }
                    ]
                },
            },
        ),
        "vaccines": (
            "Immunization",
            "vaccine",
            {
                "resourceType": "Immunization",
                "status": "completed",
                "patient": {"reference": f"Patient/{pid}"},
                "occurrenceDateTime": MOMENT,
                "vaccineCode": {
                    "coding": [
                        {
                            "system": "http://hl7.org/fhir/sid/cvx",
                            "code": "140",
                            "display": "Influenza, seasonal, injectable, preservative free",
                        }
                    ]
                },
            },
        ),
        "procedures": (
            "Procedure",
            "name",
            {
                "resourceType": "Procedure",
                "status": "completed",
                "subject": {"reference": f"Patient/{pid}"},
                "code": {
                    "coding": [
                        {"system": SNOMED, "code": "288086009", "display": "Suture of wound"}
                    ]
                },
            },
        ),
    }


@pytest.mark.parametrize("name", ["prescriptions", "vaccines", "procedures"])
def test_a_coded_name_without_text_shows_its_display_and_survives_an_edit(client, name):
    pid = create(client, patient())["id"]
    fhir_type, field, resource = _coded_only(pid)[name]
    rid = create(client, resource)["id"]
    stored = fhir(client, fhir_type, rid)
    concept = next(k for k in resource if k in ("medicationCodeableConcept", "vaccineCode", "code"))
    display = resource[concept]["coding"][0]["display"]
    assert client.get(f"/api/{name}/{rid}").json()[field] == display
    answer = client.patch(f"/api/{name}/{rid}", json={"notes": "take with water"})
    assert answer.status_code == 200, answer.text
    assert answer.json()[field] == display
    after = fhir(client, fhir_type, rid)
    assert after[concept] == stored[concept]  # no text added, the coding as it was
    assert after["note"] == [{"text": "take with water"}]
    whole = client.put(f"/api/{name}/{rid}", json=answer.json())
    assert whole.status_code == 200, whole.text
    assert fhir(client, fhir_type, rid)[concept] == stored[concept]


def test_a_patient_without_a_name_can_change_their_phone(client, signed_in):
    nameless = {"resourceType": "Patient", "gender": "female"}
    answer = client.post("/fhir/Patient", json=nameless, headers=FHIR_JSON)
    assert answer.status_code == 201, answer.text
    pid = answer.json()["id"]
    own = signed_in(role="patient", patient_id=pid)
    changed = client.patch(f"/api/patients/{pid}", json={"phone": "+1 555 0100"}, headers=own)
    assert changed.status_code == 200, changed.text
    assert changed.json()["phone"] == "+1 555 0100"
    assert changed.json()["family_name"] is None
    cleared = client.patch(f"/api/patients/{pid}", json={"family_name": None}, headers=own)
    assert cleared.status_code == 422
    assert cleared.json()["detail"] == [{"field": "family_name", "message": "is required"}]
    replaced = client.put(f"/api/patients/{pid}", json={"phone": "+1 555 0101"}, headers=own)
    assert replaced.status_code == 422


def test_a_drugs_name_and_code_change_together(client):
    pid = create(client, patient())["id"]
    rx = client.post(
        "/api/prescriptions",
        json={
            "patient_id": pid,
            "medication": "Amoxicillin 500 mg capsule",
            "medication_code": "308191",
        },
    ).json()
    path = f"/api/prescriptions/{rx['id']}"
    for change, missing in (
        ({"medication": "Penicillin V 250 mg"}, "medication_code"),
        ({"medication_code": "834061"}, "medication"),
    ):
        refused = client.patch(path, json=change)
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"][0]["field"] == missing
    stored = client.get(f"/fhir/MedicationRequest/{rx['id']}").json()["medicationCodeableConcept"]
    assert (
        stored["text"] == "Amoxicillin 500 mg capsule" and stored["coding"][0]["code"] == "308191"
    )
    both = client.patch(
        path, json={"medication": "Penicillin V 250 mg", "medication_code": "834061"}
    )
    assert both.status_code == 200, both.text
    assert (
        both.json()["medication"] == "Penicillin V 250 mg"
        and both.json()["medication_code"] == "834061"
    )
    # Without a code, the name alone may change; a note alone touches neither.
    plain = client.post(
        "/api/prescriptions", json={"patient_id": pid, "medication": "Vitamin D"}
    ).json()
    assert (
        client.patch(
            f"/api/prescriptions/{plain['id']}", json={"medication": "Vitamin D3"}
        ).status_code
        == 200
    )
    assert client.patch(path, json={"notes": "with food"}).status_code == 200
