"""The /api routes of the VitaSync frontend: one store with /fhir, under the same role policy."""

from __future__ import annotations

import pytest

PATIENT = {
    "family_name": "Doe",
    "given_name": "Jane",
    "gender": "female",
    "birth_date": "1980-04-02",
    "email": "jane@example.org",
}


def make_patient(client, **fields) -> dict:  # type: ignore[no-untyped-def]
    answer = client.post("/api/patients", json={**PATIENT, **fields})
    assert answer.status_code == 201, answer.text
    return answer.json()


def mails(database_url: str, to: str) -> list[str]:
    """The kinds of the e-mails queued for `to`, oldest first (notify's outbox table)."""
    from sqlalchemy import create_engine, select

    from vitasync_fhir.db import sync_url
    from vitasync_fhir.notify.tables import outbox

    engine = create_engine(sync_url(database_url))
    with engine.connect() as conn:
        rows = conn.execute(select(outbox.c.kind, outbox.c.recipient).order_by(outbox.c.id)).all()
    engine.dispose()
    return [kind for kind, recipient in rows if recipient == to]


def slot_of(
    patient_id: str,
    doctor_id: str,
    start: str = "2026-12-05T09:00:00Z",
    end: str = "2026-12-05T09:30:00Z",
) -> dict:
    """An /api appointment body."""
    return {"patient_id": patient_id, "doctor_id": doctor_id, "start": start, "end": end}


def make_doctor(client) -> str:  # type: ignore[no-untyped-def]
    answer = client.post(
        "/fhir/Practitioner",
        json={"resourceType": "Practitioner", "name": [{"family": "House"}]},
        headers={"Content-Type": "application/fhir+json"},
    )
    return answer.json()["id"]


def test_patient_crud_is_the_same_store_as_fhir(client):
    made = make_patient(client)
    assert made["version"] == 1 and made["family_name"] == "Doe"
    fhir = client.get(f"/fhir/Patient/{made['id']}").json()
    assert fhir["name"][0]["family"] == "Doe" and fhir["gender"] == "female"
    assert {"system": "email", "value": "jane@example.org"} in fhir["telecom"]
    updated = client.put(
        f"/api/patients/{made['id']}", json={**PATIENT, "family_name": "Roe", "version": 1}
    )
    assert updated.status_code == 200 and updated.json()["version"] == 2
    assert client.get(f"/fhir/Patient/{made['id']}").json()["name"][0]["family"] == "Roe"
    stale = client.put(f"/api/patients/{made['id']}", json={**PATIENT, "version": 1})
    assert stale.status_code == 409 and stale.json()["error"] == "conflict"
    fhir["birthDate"] = "1981-01-01"
    client.put(
        f"/fhir/Patient/{made['id']}", json=fhir, headers={"Content-Type": "application/fhir+json"}
    )
    assert client.get(f"/api/patients/{made['id']}").json()["birth_date"] == "1981-01-01"
    assert client.delete(f"/api/patients/{made['id']}").status_code == 204
    assert client.get(f"/api/patients/{made['id']}").status_code == 410
    assert client.get("/api/patients/nope").status_code == 404
    assert set(client.get("/api/patients/nope").json()) == {"error", "detail"}


def test_validation_errors_name_each_field(client):
    answer = client.post(
        "/api/patients", json={"gender": "robot", "birth_date": "yesterday", "shoe_size": 9}
    )
    assert answer.status_code == 422
    fields = {item["field"] for item in answer.json()["detail"]}
    assert fields == {"gender", "birth_date", "shoe_size", "family_name"}
    assert (
        client.post(
            "/api/patients", content=b"{nope", headers={"Content-Type": "application/json"}
        ).status_code
        == 400
    )


def test_lists_filter_sort_and_page(client):
    for family, year in (("Adams", "1970"), ("Baker", "1990"), ("Clark", "1980")):
        make_patient(client, family_name=family, birth_date=f"{year}-01-01")
    page = client.get("/api/patients?sort=-birth_date&per_page=2").json()
    assert [p["family_name"] for p in page["items"]] == ["Baker", "Clark"]
    assert page["total"] == 3 and page["page"] == 1 and page["per_page"] == 2
    second = client.get("/api/patients?sort=-birth_date&per_page=2&page=2").json()
    assert [p["family_name"] for p in second["items"]] == ["Adams"]
    assert [
        p["family_name"] for p in client.get("/api/patients?family_name=cla").json()["items"]
    ] == ["Clark"]
    assert client.get("/api/patients?from=1975-01-01&to=1985-12-31").json()["total"] == 1
    assert client.get("/api/patients?colour=red").status_code == 400
    assert client.get("/api/patients?sort=shoe").status_code == 400
    assert client.get("/api/patients?per_page=1000").status_code == 400


def test_list_filter_errors_speak_in_api_terms(client):
    late = client.get("/api/appointments", params={"from": "gege2020"})
    assert late.status_code == 400
    assert late.json() == {
        "error": "bad_request",
        "detail": [
            {
                "field": "from",
                "message": "from: 'gege2020' is not a date like 2024-05-01, "
                "or a date and time like 2024-05-01T09:30:00Z",
            }
        ],
    }
    mrn = client.get("/api/patients", params={"mrn": "|"})
    assert mrn.status_code == 400
    assert mrn.json()["detail"] == [
        {"field": "mrn", "message": "mrn: '|' is not a code, or system|code"}
    ]


def test_prescription_fill_records_a_dispense_once(client, signed_in):
    pid = make_patient(client)["id"]
    made = client.post(
        "/api/prescriptions",
        json={
            "patient_id": pid,
            "medication": "Amoxicillin 500 mg",
            "dosage": "1 capsule",
            "frequency": "tid",
            "duration_days": 7,
            "quantity": 21,
            "refills": 0,
        },
    )
    assert made.status_code == 201, made.text
    rx = made.json()
    fhir = client.get(f"/fhir/MedicationRequest/{rx['id']}").json()
    assert (
        fhir["intent"] == "order"
        and fhir["dispenseRequest"]["expectedSupplyDuration"]["code"] == "d"
    )
    pharmacist = signed_in(role="pharmacist")
    filled = client.post(f"/api/prescriptions/{rx['id']}/fill", json={}, headers=pharmacist)
    assert filled.status_code == 200, filled.text
    assert filled.json()["status"] == "completed"
    dispense = client.get(f"/fhir/MedicationDispense/{filled.json()['dispense_id']}").json()
    assert dispense["authorizingPrescription"] == [{"reference": f"MedicationRequest/{rx['id']}"}]
    assert dispense["performer"][0]["actor"]["reference"].startswith("Practitioner/")
    assert dispense["quantity"]["value"] == 21
    again = client.post(f"/api/prescriptions/{rx['id']}/fill", headers=pharmacist)
    assert again.status_code == 409
    cancelled = client.post(
        "/api/prescriptions", json={"patient_id": pid, "medication": "X", "status": "cancelled"}
    ).json()
    assert (
        client.post(f"/api/prescriptions/{cancelled['id']}/fill", headers=pharmacist).status_code
        == 409
    )
    assert client.post("/api/prescriptions/nope/fill", headers=pharmacist).status_code == 404


def test_patch_changes_only_the_fields_sent_and_put_replaces_the_record(client, signed_in):
    pid = make_patient(client)["id"]
    rx = client.post(
        "/api/prescriptions",
        json={"patient_id": pid, "medication": "Amoxicillin", "notes": "with food", "refills": 2},
    ).json()
    pharmacist = signed_in(role="pharmacist")
    held = client.patch(
        f"/api/prescriptions/{rx['id']}",
        json={"status": "on-hold", "version": rx["version"]},
        headers=pharmacist,
    )
    assert held.status_code == 200, held.text
    assert {k: held.json()[k] for k in ("status", "notes", "refills", "medication")} == {
        "status": "on-hold",
        "notes": "with food",
        "refills": 2,
        "medication": "Amoxicillin",
    }
    stale = client.patch(f"/api/prescriptions/{rx['id']}", json={"refills": 0, "version": 1})
    assert stale.status_code == 409
    cleared = client.patch(f"/api/prescriptions/{rx['id']}", json={"notes": None}).json()
    assert cleared["notes"] is None and cleared["status"] == "on-hold"
    assert "note" not in client.get(f"/fhir/MedicationRequest/{rx['id']}").json()
    wrong = client.patch(f"/api/prescriptions/{rx['id']}", json={"refills": "two", "colour": 1})
    assert wrong.status_code == 422
    assert {e["field"] for e in wrong.json()["detail"]} == {"refills", "colour"}
    assert client.get(f"/api/prescriptions/{rx['id']}").json()["refills"] == 2
    assert client.patch(f"/api/prescriptions/{rx['id']}", content=b"[1]").status_code == 400
    # PUT replaces: what it leaves out is cleared, or takes the field's default.
    replaced = client.put(
        f"/api/prescriptions/{rx['id']}", json={"patient_id": pid, "medication": "Amoxicillin"}
    ).json()
    assert (replaced["status"], replaced["refills"]) == ("active", None)
    appointment = "/api/appointments/x"
    assert client.patch(appointment, json={"reason": "y"}).status_code == 405


def test_procedure_perform(client):
    pid = make_patient(client)["id"]
    proc = client.post("/api/procedures", json={"patient_id": pid, "name": "Suture"}).json()
    assert proc["status"] == "preparation"
    done = client.post(f"/api/procedures/{proc['id']}/perform")
    assert (
        done.status_code == 200
        and done.json()["status"] == "completed"
        and done.json()["performed_at"]
    )
    assert client.get(f"/fhir/Procedure/{proc['id']}").json()["status"] == "completed"
    assert client.post(f"/api/procedures/{proc['id']}/perform").status_code == 409


def test_vitals_blood_pressure_is_found_by_fhir_component_search(client):
    pid = make_patient(client)["id"]
    bp = client.post(
        "/api/vitals",
        json={
            "kind": "blood_pressure",
            "patient_id": pid,
            "effective": "2026-11-01T08:00:00Z",
            "systolic": 150,
            "diastolic": 95,
        },
    )
    assert bp.status_code == 201, bp.text
    rate = client.post(
        "/api/vitals",
        json={
            "kind": "heart_rate",
            "patient_id": pid,
            "effective": "2026-11-01T08:00:00Z",
            "value": 70,
        },
    ).json()
    found = client.get(
        "/fhir/Observation?component-code-value-quantity=http://loinc.org|8480-6$gt140"
    ).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [bp.json()["id"]]
    listed = client.get(f"/api/vitals?patient={pid}&kind=heart_rate").json()["items"]
    assert [v["id"] for v in listed] == [rate["id"]] and listed[0]["value"] == 70
    assert (
        client.post(
            "/api/vitals",
            json={"kind": "mood", "patient_id": pid, "effective": "2026-11-01T08:00:00Z"},
        ).status_code
        == 422
    )


def test_records_link_what_the_visit_produced(client):
    pid = make_patient(client)["id"]
    record = client.post(
        "/api/records",
        json={
            "patient_id": pid,
            "diagnosis": "Bronchitis",
            "notes": "Rest",
            "start": "2026-11-01T08:00:00Z",
        },
    ).json()
    vital = client.post(
        "/api/vitals",
        json={
            "kind": "body_temperature",
            "patient_id": pid,
            "effective": "2026-11-01T08:05:00Z",
            "value": 38.2,
            "record_id": record["id"],
        },
    ).json()
    vaccine = client.post(
        "/api/vaccines",
        json={
            "patient_id": pid,
            "vaccine": "Flu",
            "date": "2026-11-01T08:10:00Z",
            "record_id": record["id"],
        },
    ).json()
    rx = client.post(
        "/api/prescriptions",
        json={"patient_id": pid, "medication": "Rest", "record_id": record["id"]},
    ).json()
    got = client.get(f"/api/records/{record['id']}").json()
    assert got["diagnosis"] == "Bronchitis" and got["notes"] == "Rest"
    assert got["linked"]["vitals"] == [vital["id"]]
    assert got["linked"]["vaccines"] == [vaccine["id"]]
    assert got["linked"]["prescriptions"] == [rx["id"]]
    assert got["linked"]["procedures"] == []


def test_appointments_book_reschedule_cancel_and_no_double_booking(client):
    pid, doctor = make_patient(client)["id"], make_doctor(client)
    slot = {
        "patient_id": pid,
        "doctor_id": doctor,
        "start": "2026-12-01T09:00:00Z",
        "end": "2026-12-01T09:30:00Z",
        "reason": "Check-up",
    }
    booked = client.post("/api/appointments", json=slot)
    assert booked.status_code == 201, booked.text
    appointment = booked.json()
    overlap = client.post(
        "/api/appointments",
        json={**slot, "start": "2026-12-01T09:15:00Z", "end": "2026-12-01T09:45:00Z"},
    )
    assert overlap.status_code == 409
    later = client.post(
        "/api/appointments",
        json={**slot, "start": "2026-12-01T10:00:00Z", "end": "2026-12-01T10:30:00Z"},
    ).json()
    clash = client.post(
        f"/api/appointments/{later['id']}/reschedule",
        json={"start": "2026-12-01T09:10:00Z", "end": "2026-12-01T09:40:00Z"},
    )
    assert clash.status_code == 409
    moved = client.post(
        f"/api/appointments/{appointment['id']}/reschedule",
        json={"start": "2026-12-02T09:00:00Z", "end": "2026-12-02T09:30:00Z"},
    )
    assert moved.status_code == 200 and moved.json()["start"] == "2026-12-02T09:00:00Z"
    assert (
        client.post(
            f"/api/appointments/{appointment['id']}/reschedule", json={"start": "tomorrow"}
        ).status_code
        == 422
    )
    cancelled = client.post(
        f"/api/appointments/{appointment['id']}/cancel", json={"reason": "Feeling better"}
    )
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert (
        client.get(f"/fhir/Appointment/{appointment['id']}").json()["cancelationReason"]["text"]
        == "Feeling better"
    )
    assert client.post(f"/api/appointments/{appointment['id']}/cancel").status_code == 409
    backwards = client.post(
        "/api/appointments",
        json={**slot, "start": "2026-12-03T10:00:00Z", "end": "2026-12-03T09:00:00Z"},
    )
    assert backwards.status_code == 422
    assert client.put(f"/api/appointments/{appointment['id']}", json=slot).status_code == 405


def test_a_partners_appointment_shows_its_patient_and_doctor_whatever_their_order(client):
    pid, doctor = make_patient(client)["id"], make_doctor(client)
    fhir_json = {"Content-Type": "application/fhir+json"}
    room = client.post(
        "/fhir/Location", json={"resourceType": "Location", "name": "Room 4"}, headers=fhir_json
    ).json()["id"]
    participants = [
        {"actor": {"reference": f"Location/{room}"}, "status": "accepted"},
        {"actor": {"reference": f"Practitioner/{doctor}"}, "status": "tentative"},
        {"actor": {"reference": f"Patient/{pid}", "display": "Jane Doe"}, "status": "accepted"},
    ]
    made = client.post(
        "/fhir/Appointment",
        json={
            "resourceType": "Appointment",
            "status": "booked",
            "start": "2026-12-05T09:00:00Z",
            "end": "2026-12-05T09:30:00Z",
            "participant": participants,
        },
        headers=fhir_json,
    )
    assert made.status_code == 201, made.text
    shown = client.get(f"/api/appointments/{made.json()['id']}").json()
    assert (shown["patient_id"], shown["doctor_id"]) == (pid, doctor)
    listed = client.get("/api/appointments", params={"doctor": doctor}).json()
    assert [(a["patient_id"], a["doctor_id"]) for a in listed["items"]] == [(pid, doctor)]
    moved = client.post(
        f"/api/appointments/{shown['id']}/reschedule",
        json={"start": "2026-12-05T10:00:00Z", "end": "2026-12-05T10:30:00Z"},
    )
    assert moved.status_code == 200, moved.text
    assert client.get(f"/fhir/Appointment/{shown['id']}").json()["participant"] == participants


@pytest.mark.parametrize(
    ("role", "path", "allowed"),
    [
        ("pharmacist", "/api/vitals", False),
        ("pharmacist", "/api/prescriptions", True),
        ("pharmacist", "/api/records", False),
        ("nurse", "/api/vitals", True),
        ("nurse", "/api/prescriptions", True),
        ("doctor", "/api/records", True),
        ("patient", "/api/patients", True),
    ],
)
def test_role_policy_applies_to_api_lists(client, anonymous, signed_in, role, path, allowed):
    own = make_patient(client)["id"]
    headers = signed_in(role=role, patient_id=own if role == "patient" else None)
    answer = anonymous.get(path, headers=headers)
    assert answer.status_code == (200 if allowed else 403), answer.text
    assert anonymous.get(path).status_code == 401


def test_a_patient_sees_only_their_own_records_through_api(client, anonymous, signed_in):
    own, other = make_patient(client)["id"], make_patient(client, family_name="Other")["id"]
    mine = client.post(
        "/api/vitals",
        json={
            "kind": "heart_rate",
            "patient_id": own,
            "effective": "2026-11-01T08:00:00Z",
            "value": 60,
        },
    ).json()
    theirs = client.post(
        "/api/vitals",
        json={
            "kind": "heart_rate",
            "patient_id": other,
            "effective": "2026-11-01T08:00:00Z",
            "value": 61,
        },
    ).json()
    me = signed_in(role="patient", patient_id=own)
    assert [v["id"] for v in anonymous.get("/api/vitals", headers=me).json()["items"]] == [
        mine["id"]
    ]
    assert anonymous.get(f"/api/vitals/{theirs['id']}", headers=me).status_code == 404
    assert anonymous.get("/api/patients", headers=me).json()["total"] == 1
    assert (
        anonymous.post(
            "/api/vitals",
            json={
                "kind": "heart_rate",
                "patient_id": own,
                "effective": "2026-11-01T08:00:00Z",
                "value": 1,
            },
            headers=me,
        ).status_code
        == 403
    )


def test_appointment_events_queue_their_emails_in_the_same_transaction(client, database_url):
    pid, doctor = make_patient(client, email="pat@example.org")["id"], make_doctor(client)
    slot = slot_of(pid, doctor)
    appointment = client.post("/api/appointments", json=slot).json()
    client.post(
        f"/api/appointments/{appointment['id']}/reschedule",
        json={"start": "2026-12-06T09:00:00Z", "end": "2026-12-06T09:30:00Z"},
    )
    client.post(f"/api/appointments/{appointment['id']}/cancel", json={"reason": "Away"})
    rejected = client.post(
        "/api/appointments",
        json={
            **slot,
            "start": "2026-12-06T09:10:00Z",
            "end": "2026-12-06T09:20:00Z",
            "status": "booked",
        },
    )
    assert rejected.status_code == 201  # the slot was freed by the cancellation
    assert mails(database_url, "pat@example.org") == [
        "appointment-created",
        "appointment-rescheduled",
        "appointment-cancelled",
        "appointment-created",
    ]
