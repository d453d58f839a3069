"""What a role may write, beyond which types: the values it may give (policy.VALUES), the
references it may make only to itself (policy.SELF) and the elements it may change
(policy.CHANGES), on /fhir and /api alike."""

from __future__ import annotations

from factories import FHIR_JSON, create, patient

PATCH_JSON = {"Content-Type": "application/json-patch+json"}


def _prescription(pid: str, status: str = "draft", **extra: object) -> dict:
    return {
        "resourceType": "MedicationRequest",
        "status": status,
        "intent": "order",
        "subject": {"reference": f"Patient/{pid}"},
        "medicationCodeableConcept": {"text": "Amoxicillin 500 mg capsule"},
        **extra,
    }


def _set_status(client, headers: dict, rx_id: str, status: str):  # type: ignore[no-untyped-def]
    return client.patch(
        f"/fhir/MedicationRequest/{rx_id}",
        json=[{"op": "replace", "path": "/status", "value": status}],
        headers={**headers, **PATCH_JSON},
    )


def test_a_pharmacist_may_not_activate_a_prescription(client, signed_in) -> None:  # type: ignore[no-untyped-def]
    pid = create(client, patient())["id"]
    pharmacist = signed_in(role="pharmacist")
    draft = create(client, _prescription(pid))
    refused = _set_status(client, pharmacist, draft["id"], "active")
    assert refused.status_code == 403, refused.text
    assert "status 'active'" in refused.json()["issue"][0]["diagnostics"]
    by_api = client.patch(
        f"/api/prescriptions/{draft['id']}", json={"status": "active"}, headers=pharmacist
    )
    assert by_api.status_code == 403 and by_api.json()["error"] == "forbidden"
    assert client.get(f"/fhir/MedicationRequest/{draft['id']}").json()["status"] == "draft"
    held = create(client, _prescription(pid, "on-hold"))
    assert _set_status(client, pharmacist, held["id"], "active").status_code == 403
    # What a pharmacist does: fill (completed), hold or stop an active one.
    for status in ("on-hold", "stopped"):
        rx = create(client, _prescription(pid, "active"))
        assert _set_status(client, pharmacist, rx["id"], status).status_code == 200
    # Writing the status a prescription already has is no change of it.
    active = create(client, _prescription(pid, "active"))
    note = client.patch(
        f"/fhir/MedicationRequest/{active['id']}",
        json=[{"op": "add", "path": "/statusReason", "value": {"text": "awaiting stock"}}],
        headers={**pharmacist, **PATCH_JSON},
    )
    assert note.status_code == 200, note.text


def test_a_doctor_prescribes_in_their_own_name(client, signed_in) -> None:  # type: ignore[no-untyped-def]
    pid = create(client, patient())["id"]
    doctor = signed_in(role="doctor")
    me = client.get("/api/auth/me", headers=doctor).json()["fhirUser"]
    colleague = create(client, {"resourceType": "Practitioner", "name": [{"family": "Other"}]})[
        "id"
    ]
    forged = _prescription(pid, requester={"reference": f"Practitioner/{colleague}"})
    refused = client.post("/fhir/MedicationRequest", json=forged, headers={**doctor, **FHIR_JSON})
    assert refused.status_code == 403, refused.text
    assert "requester other than yourself" in refused.json()["issue"][0]["diagnostics"]
    by_api = client.post(
        "/api/prescriptions",
        json={"patient_id": pid, "prescriber_id": colleague, "medication": "Oxycodone 5 mg"},
        headers=doctor,
    )
    assert by_api.status_code == 403, by_api.text
    own = client.post(
        "/fhir/MedicationRequest",
        json=_prescription(pid, requester={"reference": me}),
        headers={**doctor, **FHIR_JSON},
    )
    assert own.status_code == 201, own.text
    # Another doctor's prescription may be updated as long as its prescriber stays.
    theirs = create(client, forged)
    kept = client.put(
        f"/fhir/MedicationRequest/{theirs['id']}",
        json={**theirs, "note": [{"text": "checked"}]},
        headers={**doctor, **FHIR_JSON},
    )
    assert kept.status_code == 200, kept.text
    moved = client.put(
        f"/fhir/MedicationRequest/{theirs['id']}",
        json={**theirs, "requester": {"reference": f"Practitioner/{colleague}x"}},
        headers={**doctor, **FHIR_JSON},
    )
    assert moved.status_code == 403
    # An admin (here a backend service) records prescriptions of anyone.
    assert create(client, forged)["requester"]["reference"] == f"Practitioner/{colleague}"


def test_a_patient_keeps_their_demographics_not_the_clinics_identifiers(client, signed_in) -> None:  # type: ignore[no-untyped-def]
    pid = create(
        client,
        {**patient(family="Ann"), "identifier": [{"system": "urn:mrn", "value": "MRN-1"}]},
    )["id"]
    me = signed_in(role="patient", patient_id=pid)
    for field, value in (("mrn", "MRN-2"), ("active", False)):
        refused = client.patch(f"/api/patients/{pid}", json={field: value}, headers=me)
        assert refused.status_code == 403, (field, refused.text)
    stored = client.get(f"/fhir/Patient/{pid}").json()
    assert stored["identifier"][0]["value"] == "MRN-1" and "active" not in stored
    fine = client.patch(f"/api/patients/{pid}", json={"phone": "+44 20 7946 0000"}, headers=me)
    assert fine.status_code == 200, fine.text
    forged = {**stored, "identifier": [{"system": "urn:mrn", "value": "MRN-9"}]}
    put = client.put(f"/fhir/Patient/{pid}", json=forged, headers={**me, **FHIR_JSON})
    assert put.status_code == 403


def test_a_patient_books_and_cancels_but_does_not_mark_attendance(client, signed_in) -> None:  # type: ignore[no-untyped-def]
    pid = create(client, patient(family="Ann"))["id"]
    me = signed_in(role="patient", patient_id=pid)

    def appointment(status: str) -> dict:
        return {
            "resourceType": "Appointment",
            "status": status,
            "start": "2036-03-03T09:00:00Z",
            "end": "2036-03-03T09:30:00Z",
            "participant": [{"actor": {"reference": f"Patient/{pid}"}, "status": "accepted"}],
        }

    for status in ("fulfilled", "noshow", "arrived", "checked-in"):
        refused = client.post(
            "/fhir/Appointment", json=appointment(status), headers={**me, **FHIR_JSON}
        )
        assert refused.status_code == 403, (status, refused.text)
    booked = client.post(
        "/fhir/Appointment", json=appointment("booked"), headers={**me, **FHIR_JSON}
    )
    assert booked.status_code == 201, booked.text
    marked = client.put(
        f"/fhir/Appointment/{booked.json()['id']}",
        json={**booked.json(), "status": "fulfilled"},
        headers={**me, **FHIR_JSON},
    )
    assert marked.status_code == 403
    cancelled = client.put(
        f"/fhir/Appointment/{booked.json()['id']}",
        json={**booked.json(), "status": "cancelled"},
        headers={**me, **FHIR_JSON},
    )
    assert cancelled.status_code == 200, cancelled.text


def test_a_patient_sees_doctors_schedules_and_their_own_not_another_patients(
    client, signed_in
) -> None:  # type: ignore[no-untyped-def]
    ann, bob = (create(client, patient(family=f))["id"] for f in ("Ann", "Bob"))
    doctor = create(client, {"resourceType": "Practitioner", "name": [{"family": "House"}]})["id"]

    def schedule(actor: str, comment: str) -> str:
        made = {"resourceType": "Schedule", "actor": [{"reference": actor}], "comment": comment}
        return create(client, made)["id"]

    clinic = schedule(f"Practitioner/{doctor}", "Dr House's clinic")
    own = schedule(f"Patient/{ann}", "Ann's dialysis")
    theirs = schedule(f"Patient/{bob}", "Bob's HIV clinic")
    me = signed_in(role="patient", patient_id=ann)
    found = client.get("/fhir/Schedule", headers=me).json()
    assert {e["resource"]["id"] for e in found.get("entry", [])} == {clinic, own}
    assert client.get(f"/fhir/Schedule/{clinic}", headers=me).status_code == 200
    assert client.get(f"/fhir/Schedule/{theirs}", headers=me).status_code == 404
    by_actor = client.get("/fhir/Schedule", params={"actor": f"Patient/{bob}"}, headers=me)
    assert by_actor.status_code == 200 and not by_actor.json().get("entry")


def test_only_an_admin_deletes_a_patient(client, signed_in) -> None:  # type: ignore[no-untyped-def]
    pid = create(client, patient(family="Ann"))["id"]
    doctor = signed_in(role="doctor")
    assert client.delete(f"/fhir/Patient/{pid}", headers=doctor).status_code == 403
    assert client.delete(f"/api/patients/{pid}", headers=doctor).status_code == 403
    assert client.get(f"/fhir/Patient/{pid}").status_code == 200
    assert client.delete(f"/fhir/Patient/{pid}").status_code == 204  # the admin service
