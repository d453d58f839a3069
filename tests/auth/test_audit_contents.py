"""What a search's AuditEvent says: the query it ran and whose data its page showed."""

from __future__ import annotations

import base64

from factories import create, observation, patient


def _search_events(client, kind: str) -> list[dict]:  # type: ignore[no-untyped-def]
    trail = client.get("/fhir/AuditEvent", params={"_count": 1000}).json().get("entry", [])
    return [e["resource"] for e in trail if e["resource"]["subtype"][0]["code"] == kind]


def test_a_search_names_the_patients_whose_data_it_showed(client, signed_in) -> None:  # type: ignore[no-untyped-def]
    ann, bob, cy = (create(client, patient(family=f))["id"] for f in ("Ann", "Bob", "Cy"))
    for pid in (ann, bob):
        create(client, observation(patient_ref=f"Patient/{pid}", code="8302-2"))
    doctor = signed_in(role="doctor")
    found = client.get(
        "/fhir/Observation",
        params={"code": "8302-2", "_include": "Observation:patient"},
        headers=doctor,
    )
    assert found.status_code == 200 and len(found.json()["entry"]) == 4
    event = _search_events(client, "search-type")[-1]
    named = {e["what"]["reference"] for e in event["entity"] if "reference" in e.get("what", {})}
    assert named == {f"Patient/{ann}", f"Patient/{bob}"}  # not Cy, whom the page did not show
    query = base64.b64decode(event["entity"][0]["query"]).decode()
    assert "code=8302-2" in query
    found = client.get("/fhir", params={"_type": "Patient,Observation", "_id": cy})
    assert found.status_code == 200, found.text
    system = _search_events(client, "search-system")[-1]
    assert any(e.get("what", {}).get("reference") == f"Patient/{cy}" for e in system["entity"])
    assert any("query" in e for e in system["entity"])  # a search of several types keeps it too


def test_an_api_list_names_the_patients_it_showed(client, signed_in) -> None:  # type: ignore[no-untyped-def]
    for family in ("Ann", "Bob", "Cy"):
        create(client, patient(family=family))
    doctor = signed_in(role="doctor")
    listed = client.get("/api/patients", params={"per_page": 2}, headers=doctor)
    assert listed.status_code == 200, listed.text
    shown = {f"Patient/{item['id']}" for item in listed.json()["items"]}
    assert len(shown) == 2
    event = _search_events(client, "search-type")[-1]
    named = {e["what"]["reference"] for e in event["entity"] if "reference" in e.get("what", {})}
    assert named == shown


def test_a_history_names_the_patients_whose_data_it_showed(client, signed_in) -> None:  # type: ignore[no-untyped-def]
    ann, bob, cy = (create(client, patient(family=f))["id"] for f in ("Ann", "Bob", "Cy"))
    create(client, observation(patient_ref=f"Patient/{ann}", code="8302-2"))
    gone = create(client, observation(patient_ref=f"Patient/{bob}", code="8302-2"))
    assert client.delete(f"/fhir/Observation/{gone['id']}").status_code == 204
    doctor = signed_in(role="doctor")
    shown = client.get("/fhir/Observation/_history", headers=doctor)
    assert shown.status_code == 200 and len(shown.json()["entry"]) == 3, shown.text
    event = _search_events(client, "history-type")[-1]
    named = {e["what"]["reference"] for e in event["entity"] if "reference" in e.get("what", {})}
    # Ann's record, and Bob's through its deletion (the version it deleted); not Cy.
    assert named == {f"Patient/{ann}", f"Patient/{bob}"}
    shown = client.get("/fhir/_history", headers=doctor)
    assert shown.status_code == 200, shown.text
    event = _search_events(client, "history-system")[-1]
    named = {e["what"]["reference"] for e in event["entity"] if "reference" in e.get("what", {})}
    assert {f"Patient/{ann}", f"Patient/{bob}", f"Patient/{cy}"} <= named
    assert not any("query" in e for e in event["entity"])  # no query was given
