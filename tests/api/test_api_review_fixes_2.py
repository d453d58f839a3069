"""What a second review of the /api face found: a doctor double-booked by ten nurses at once,
long appointments the diary did not see, prescriptions linked to another patient's visit, a
stale version told 412 when it raced, temperatures in Fahrenheit shown as Celsius, a heart rate
turned into a weight, and prescriptions with no prescriber or date."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import orjson
from factories import create, observation
from live import live_app
from support import auth_headers, service_headers
from test_api_routes import make_doctor, make_patient, slot_of

from vitasync_fhir.api.service import ApiResources
from vitasync_fhir.auth import tokens
from vitasync_fhir.db import Database
from vitasync_fhir.fhir.service import Resources

FHIR_JSON = {"Content-Type": "application/fhir+json"}
MOMENT = "2026-01-01T09:00:00Z"
RACERS = 10


async def _book_at_once(base: str, headers: dict, slot: dict) -> list[int]:
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http:
        answers = await asyncio.gather(
            *(http.post("/api/appointments", json=slot) for _ in range(RACERS))
        )
    return [a.status_code for a in answers]


def test_ten_nurses_booking_one_slot_at_once_book_it_once(settings):
    with live_app(settings) as served:
        admin = httpx.Client(base_url=served.base_url, headers=service_headers(served))
        with admin:
            pid = admin.post("/api/patients", json={"family_name": "Race"}).json()["id"]
            doctor = make_doctor(admin)
            slot = slot_of(pid, doctor)
            statuses = asyncio.run(
                _book_at_once(served.base_url, auth_headers(served, role="nurse"), slot)
            )
            assert sorted(statuses) == [201] + [409] * (RACERS - 1), statuses
            booked = admin.get("/api/appointments", params={"doctor": doctor}).json()
            assert booked["total"] == 1


def test_an_appointment_of_days_holds_every_day_of_it(client):
    pid, doctor = make_patient(client)["id"], make_doctor(client)
    stay = slot_of(pid, doctor, "2026-12-01T09:00:00Z", "2026-12-04T09:00:00Z")
    assert client.post("/api/appointments", json=stay).status_code == 201
    inside = slot_of(pid, doctor, "2026-12-03T10:00:00Z", "2026-12-03T10:30:00Z")
    clash = client.post("/api/appointments", json=inside)
    assert clash.status_code == 409 and "2026-12-01T09:00:00Z" in clash.json()["detail"]
    later = slot_of(pid, doctor, "2026-12-04T09:00:00Z", "2026-12-04T09:30:00Z")
    moved = client.post("/api/appointments", json=later)
    assert moved.status_code == 201
    onto = {"start": "2026-12-02T09:00:00Z", "end": "2026-12-02T09:30:00Z"}
    rescheduled = client.post(f"/api/appointments/{moved.json()['id']}/reschedule", json=onto)
    assert rescheduled.status_code == 409
    week = slot_of(pid, doctor, "2027-01-01T09:00:00Z", "2027-01-08T09:00:00Z")
    assert client.post("/api/appointments", json=week).status_code == 201  # the longest
    longer = slot_of(pid, doctor, "2027-02-01T09:00:00Z", "2027-02-08T09:00:01Z")
    refused = client.post("/api/appointments", json=longer)
    assert refused.status_code == 422
    assert refused.json()["detail"] == [
        {"field": "end", "message": "must be at most 7 days after start"}
    ]


LINKED = {
    "prescriptions": {"medication": "Amoxicillin"},
    "vitals": {"kind": "heart_rate", "value": 70, "effective": MOMENT},
    "procedures": {"name": "Suture"},
    "vaccines": {"vaccine": "Influenza", "date": MOMENT},
}


def test_a_link_to_a_visit_names_one_of_the_same_patient(client, settings):
    mine, theirs = make_patient(client)["id"], make_patient(client, email="t@example.org")["id"]
    own = client.post("/api/records", json={"patient_id": mine}).json()["id"]
    other = client.post("/api/records", json={"patient_id": theirs}).json()["id"]
    for name, body in LINKED.items():
        linked = {**body, "patient_id": mine}
        wrong = client.post(f"/api/{name}", json={**linked, "record_id": other})
        assert wrong.status_code == 422, (name, wrong.text)
        assert wrong.json()["detail"] == [
            {"field": "record_id", "message": "belongs to another patient"}
        ]
        made = client.post(f"/api/{name}", json={**linked, "record_id": own})
        assert made.status_code == 201, (name, made.text)
        moved = client.patch(f"/api/{name}/{made.json()['id']}", json={"patient_id": theirs})
        assert moved.status_code == 422 and moved.json()["detail"][0]["field"] == "record_id"
        both = {"patient_id": theirs, "record_id": other}
        assert client.patch(f"/api/{name}/{made.json()['id']}", json=both).status_code == 200
    # A doctor limited to one patient (SMART launch) hears of another's visit as of none.
    account = auth_headers(settings, role="doctor")
    claims = tokens.decode_access_token(settings, account["Authorization"].split()[1])
    limited = tokens.issue_access_token(
        settings, subject=claims["sub"], scope="patient/*.cruds", patient=mine
    )
    doctor = {"Authorization": f"Bearer {limited.token}"}
    rx = {"patient_id": mine, "medication": "X"}
    answers = [
        client.post("/api/prescriptions", json={**rx, "record_id": record}, headers=doctor)
        for record in (other, "no-such-record")
    ]
    assert [a.status_code for a in answers] == [422, 422]
    assert answers[0].json() == answers[1].json()
    assert answers[0].json()["detail"][0]["message"] == "names no Encounter known here"
    assert client.post(
        "/api/prescriptions", json=rx | {"record_id": own}, headers=doctor
    ).is_success


def test_a_change_made_meanwhile_answers_409_as_a_stale_version_does(client, settings, monkeypatch):
    pid = make_patient(client)["id"]
    rx = client.post("/api/prescriptions", json={"patient_id": pid, "medication": "X"}).json()
    save = ApiResources.save

    async def after_another_request(self, resource_id, resource, current, **options):  # type: ignore[no-untyped-def]
        async def change(session):  # type: ignore[no-untyped-def]
            stored = await Resources(session).read("MedicationRequest", resource_id)
            fhir = {**orjson.loads(stored.content or "{}"), "note": [{"text": "meanwhile"}]}
            await Resources(session).update("MedicationRequest", resource_id, fhir)

        database = Database(settings)
        try:
            await database.run(change)
        finally:
            await database.dispose()
        return await save(self, resource_id, resource, current, **options)

    monkeypatch.setattr(ApiResources, "save", after_another_request)
    raced = client.patch(f"/api/prescriptions/{rx['id']}", json={"refills": 1, "version": 1})
    assert raced.status_code == 409, raced.text
    assert raced.json()["error"] == "conflict" and "read it again" in raced.json()["detail"]
    monkeypatch.setattr(ApiResources, "save", save)
    now = client.get(f"/api/prescriptions/{rx['id']}").json()
    assert now["notes"] == "meanwhile" and now["refills"] is None and now["version"] == 2


VITAL_SIGNS = "http://terminology.hl7.org/CodeSystem/observation-category"


def _vital(client, pid: str, code: str, quantity: dict) -> str:  # type: ignore[no-untyped-def]
    category = [{"coding": [{"system": VITAL_SIGNS, "code": "vital-signs"}]}]
    made = observation(
        patient_ref=f"Patient/{pid}",
        code=code,
        category=category,
        effectiveDateTime=MOMENT,
        valueQuantity=quantity,
    )
    return create(client, made)["id"]


def test_a_unit_without_a_code_is_shown_only_when_it_is_the_api_unit(client):
    pid = make_patient(client)["id"]
    fahrenheit = _vital(client, pid, "8310-5", {"value": 98.6, "unit": "degF"})
    coded = _vital(
        client,
        pid,
        "8310-5",
        {"value": 98.6, "unit": "degF", "system": "http://unitsofmeasure.org", "code": "[degF]"},
    )
    for vital in (fahrenheit, coded):
        shown = client.get(f"/api/vitals/{vital}").json()
        assert shown["kind"] == "body_temperature" and shown["value"] is None
    read = client.get(f"/api/vitals/{fahrenheit}").json()
    assert client.put(f"/api/vitals/{fahrenheit}", json=read).status_code == 200
    kept = client.get(f"/fhir/Observation/{fahrenheit}").json()
    assert kept["valueQuantity"] == {"value": 98.6, "unit": "degF"}
    for unit in ("°C", "Cel"):
        celsius = _vital(client, pid, "8310-5", {"value": 37.2, "unit": unit})
        assert client.get(f"/api/vitals/{celsius}").json()["value"] == 37.2


def test_a_new_kind_takes_a_new_value(client):
    pid = make_patient(client)["id"]
    heart = {"patient_id": pid, "kind": "heart_rate", "value": 81, "effective": MOMENT}
    vital = client.post("/api/vitals", json=heart).json()
    path = f"/api/vitals/{vital['id']}"
    weight = client.patch(path, json={"kind": "body_weight"})
    assert weight.status_code == 422
    assert weight.json()["detail"] == [{"field": "value", "message": "is required for this kind"}]
    assert client.get(path).json()["kind"] == "heart_rate"
    assert client.patch(path, json={"notes": "resting"}).json()["value"] == 81  # same kind: kept
    pressure = {"kind": "blood_pressure", "systolic": 110, "diastolic": 70}
    changed = client.patch(path, json=pressure)
    assert changed.status_code == 200, changed.text
    shown = changed.json()
    assert (shown["value"], shown["systolic"], shown["diastolic"]) == (None, 110, 70)
    fhir = client.get(f"/fhir/Observation/{vital['id']}").json()
    assert "valueQuantity" not in fhir and len(fhir["component"]) == 2
    back = client.patch(path, json={"kind": "body_weight", "value": 70})
    assert back.status_code == 200 and back.json()["value"] == 70
    assert "component" not in client.get(f"/fhir/Observation/{vital['id']}").json()


def test_a_doctors_prescription_is_theirs_and_dated_now(client, signed_in, settings):
    pid = make_patient(client)["id"]
    doctor = signed_in(role="doctor")
    claims = tokens.decode_access_token(settings, doctor["Authorization"].split()[1])
    practitioner = claims["fhirUser"].removeprefix("Practitioner/")
    before = datetime.now(UTC) - timedelta(seconds=1)
    rx = client.post(
        "/api/prescriptions", json={"patient_id": pid, "medication": "X"}, headers=doctor
    )
    assert rx.status_code == 201, rx.text
    made = rx.json()
    assert made["prescriber_id"] == practitioner
    authored = datetime.fromisoformat(made["authored_on"])
    assert authored.tzinfo is not None and before <= authored <= datetime.now(UTC)
    fhir = client.get(f"/fhir/MedicationRequest/{made['id']}").json()
    assert fhir["requester"] == {"reference": f"Practitioner/{practitioner}"}
    # Sent values stay; a caller who is no Practitioner (a backend service) names none.
    given = {"patient_id": pid, "medication": "X", "authored_on": MOMENT}
    service = client.post("/api/prescriptions", json=given).json()
    assert service["prescriber_id"] is None and service["authored_on"] == MOMENT
    other = make_doctor(client)
    named = client.post("/api/prescriptions", json={**given, "prescriber_id": other}).json()
    assert named["prescriber_id"] == other
