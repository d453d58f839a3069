"""What a review of the /api face found on 2026-11-29: a pharmacist rewriting prescriptions,
/api/vitals reaching lab results, fills losing a referenced drug, e-mails misstating an
appointment, and a booking conflict told before the caller's right to book."""

from __future__ import annotations

from test_api_routes import mails, make_doctor, make_patient, slot_of

FHIR_JSON = {"Content-Type": "application/fhir+json"}
MOMENT = "2026-01-01T09:00:00Z"


def test_a_pharmacist_marks_a_prescription_but_cannot_rewrite_it(client, signed_in):
    pid, other = make_patient(client)["id"], make_patient(client, email="b@example.org")["id"]
    rx = client.post(
        "/api/prescriptions",
        json={"patient_id": pid, "medication": "Oxycodone 5 mg", "quantity": 20, "refills": 0},
    ).json()
    pharmacist = signed_in(role="pharmacist")
    path = f"/api/prescriptions/{rx['id']}"
    for change in ({"quantity": 200}, {"refills": 3}, {"patient_id": other}, {"medication": "X"}):
        refused = client.patch(path, json=change, headers=pharmacist)
        assert refused.status_code == 403, change
        assert "may change only status" in refused.json()["detail"]
    fhir = client.get(f"/fhir/MedicationRequest/{rx['id']}").json()
    assert fhir["dispenseRequest"]["quantity"]["value"] == 20
    forged = {**fhir, "dispenseRequest": {"quantity": {"value": 500}}}
    put = client.put(
        f"/fhir/MedicationRequest/{rx['id']}", json=forged, headers={**pharmacist, **FHIR_JSON}
    )
    assert put.status_code == 403
    held = client.patch(path, json={"status": "on-hold"}, headers=pharmacist)
    assert held.status_code == 200 and held.json()["status"] == "on-hold"
    patch = client.patch(
        f"/fhir/MedicationRequest/{rx['id']}",
        json=[{"op": "replace", "path": "/status", "value": "stopped"}],
        headers={**pharmacist, "Content-Type": "application/json-patch+json"},
    )
    assert patch.status_code == 200, patch.text


def test_api_vitals_reaches_only_vital_signs(client):
    pid = make_patient(client)["id"]
    lab = client.post(
        "/fhir/Observation",
        json={
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "7905-3"}]},
            "subject": {"reference": f"Patient/{pid}"},
            "valueString": "positive",
        },
        headers=FHIR_JSON,
    ).json()
    path = f"/api/vitals/{lab['id']}"
    heart = {"patient_id": pid, "kind": "heart_rate", "value": 70, "effective": MOMENT}
    assert client.post("/api/vitals", json=heart).status_code == 201  # the body is a valid one
    assert client.get(path).status_code == 404
    assert client.put(path, json=heart).status_code == 404
    assert client.delete(path).status_code == 404
    kept = client.get(f"/fhir/Observation/{lab['id']}").json()
    assert kept["valueString"] == "positive" and kept["meta"]["versionId"] == "1"


def test_a_fill_keeps_a_referenced_medication_and_refuses_a_bad_quantity(client, signed_in):
    pid = make_patient(client)["id"]
    rx = client.post(
        "/fhir/MedicationRequest",
        json={
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "subject": {"reference": f"Patient/{pid}"},
            "contained": [{"resourceType": "Medication", "id": "m", "code": {"text": "Warfarin"}}],
            "medicationReference": {"reference": "#m"},
        },
        headers=FHIR_JSON,
    ).json()
    pharmacist = signed_in(role="pharmacist")
    path = f"/api/prescriptions/{rx['id']}/fill"
    for bad in ("abc", -5, 0, True):
        assert client.post(path, json={"quantity": bad}, headers=pharmacist).status_code == 422
    filled = client.post(path, json={"quantity": 10}, headers=pharmacist)
    assert filled.status_code == 200, filled.text
    dispense = client.get(f"/fhir/MedicationDispense/{filled.json()['dispense_id']}").json()
    assert dispense["medicationReference"] == {"reference": "#m"}
    assert dispense["contained"][0]["code"]["text"] == "Warfarin"
    assert "medicationCodeableConcept" not in dispense


def test_appointment_mails_tell_the_status_it_has(client, database_url):
    pid, doctor = make_patient(client, email="pat@example.org")["id"], make_doctor(client)
    slot = slot_of(pid, doctor)
    for status in ("cancelled", "entered-in-error"):
        made = client.post("/api/appointments", json={**slot, "status": status})
        assert made.status_code == 201, made.text
    done = client.post("/api/appointments", json={**slot, "status": "fulfilled"}).json()
    assert client.post(f"/api/appointments/{done['id']}/cancel").status_code == 409
    assert mails(database_url, "pat@example.org") == []
    booked = client.post("/api/appointments", json=slot)
    assert booked.status_code == 201  # the others held no slot
    assert mails(database_url, "pat@example.org") == ["appointment-created"]


def test_who_may_book_is_asked_before_the_diary(client, signed_in):
    pid, doctor = make_patient(client)["id"], make_doctor(client)
    slot = slot_of(pid, doctor, "2026-12-10T09:00:00Z", "2026-12-10T09:30:00Z")
    assert client.post("/api/appointments", json=slot).status_code == 201
    clash = {**slot, "start": "2026-12-10T09:10:00Z", "end": "2026-12-10T09:40:00Z"}
    pharmacist = client.post("/api/appointments", json=clash, headers=signed_in(role="pharmacist"))
    assert pharmacist.status_code == 403
    assert "2026-12-10T09:00" not in pharmacist.text
    other = make_patient(client, email="c@example.org")["id"]
    patient = signed_in(role="patient", patient_id=other)
    someone_else = client.post("/api/appointments", json=clash, headers=patient)
    assert someone_else.status_code == 403 and "2026-12-10T09:00" not in someone_else.text


def test_errors_of_the_fhir_layer_name_the_api_field_and_numbers_have_bounds(client):
    pid = make_patient(client)["id"]
    base = {"patient_id": pid, "medication": "Amoxicillin"}
    negative = client.post("/api/prescriptions", json={**base, "refills": -5})
    assert negative.status_code == 422
    assert [d["field"] for d in negative.json()["detail"]] == ["refills"]
    for field in ("quantity", "duration_days"):
        answer = client.post("/api/prescriptions", json={**base, field: -5})
        assert answer.status_code == 422, field
        assert answer.json()["detail"] == [{"field": field, "message": "must be greater than 0"}]
    weight = {"patient_id": pid, "kind": "body_weight", "value": -70, "effective": MOMENT}
    refused = client.post("/api/vitals", json=weight)
    assert refused.json()["detail"] == [{"field": "value", "message": "must be greater than 0"}]
    assert client.post("/api/vitals", json={**weight, "value": 70}).status_code == 201


def test_an_id_field_must_name_a_record_that_is_here(client, signed_in):
    pid = make_patient(client)["id"]
    nobody = client.post("/api/prescriptions", json={"patient_id": "nonexist", "medication": "X"})
    assert nobody.status_code == 422
    assert nobody.json()["detail"] == [
        {"field": "patient_id", "message": "names no Patient known here"}
    ]
    rx = client.post("/api/prescriptions", json={"patient_id": pid, "medication": "X"}).json()
    moved = client.patch(f"/api/prescriptions/{rx['id']}", json={"prescriber_id": "ghost"})
    assert moved.status_code == 422 and moved.json()["detail"][0]["field"] == "prescriber_id"
    assert client.patch(f"/api/prescriptions/{rx['id']}", json={"notes": "x"}).status_code == 200
    booking = slot_of(pid, "no-such-doctor")
    assert client.post("/api/appointments", json=booking).status_code == 422
    # A role that may not create the record learns nothing about ids: 403 before any lookup.
    patient = signed_in(role="patient", patient_id=pid)
    for someone in (pid, "nonexist"):
        vital = {"patient_id": someone, "kind": "heart_rate", "value": 70, "effective": MOMENT}
        assert client.post("/api/vitals", json=vital, headers=patient).status_code == 403
