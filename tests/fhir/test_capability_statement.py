"""The CapabilityStatement claims what the server does, type by type, and no more."""

from __future__ import annotations

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def _entry(client, resource_type: str) -> dict:  # type: ignore[no-untyped-def]
    rest = client.get("/fhir/metadata").json()["rest"][0]
    return next(r for r in rest["resource"] if r["type"] == resource_type)


def test_audit_events_are_offered_for_reading_only_as_the_policy_allows(client):
    audit = _entry(client, "AuditEvent")
    codes = {i["code"] for i in audit["interaction"]}
    assert codes == {"read", "vread", "history-instance", "history-type", "search-type"}
    assert not audit["conditionalCreate"] and not audit["conditionalUpdate"]
    assert not audit["updateCreate"] and audit["conditionalDelete"] == "not-supported"
    assert audit["versioning"] == "versioned"  # no update, so no versioned update
    assert _entry(client, "Patient")["versioning"] == "versioned-update"
    refused = client.post(
        "/fhir/AuditEvent", json={"resourceType": "AuditEvent"}, headers=FHIR_JSON
    )
    assert refused.status_code == 403  # what the statement now says: no create, even for admin


def test_conditional_read_is_claimed_and_answers_304(client):
    assert _entry(client, "Patient")["conditionalRead"] == "full-support"
    made = client.post(
        "/fhir/Patient", json={"resourceType": "Patient", "gender": "other"}, headers=FHIR_JSON
    )
    path = f"/fhir/Patient/{made.json()['id']}"
    assert client.get(path, headers={"If-None-Match": made.headers["ETag"]}).status_code == 304
    since = {"If-Modified-Since": made.headers["Last-Modified"]}
    assert client.get(path, headers=since).status_code == 304


def test_includes_compartment_and_system_search_are_claimed_and_work(client):
    rest = client.get("/fhir/metadata").json()["rest"][0]
    assert rest["compartment"] == ["http://hl7.org/fhir/CompartmentDefinition/patient"]
    assert {"_id", "_lastUpdated"} <= {p["name"] for p in rest["searchParam"]}
    observation = _entry(client, "Observation")
    assert "Observation:patient" in observation["searchInclude"]
    assert "Observation:subject" in _entry(client, "Patient")["searchRevInclude"]
    assert observation["referencePolicy"] == ["literal", "logical", "local"]
    pid = client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=FHIR_JSON).json()[
        "id"
    ]
    client.post(
        "/fhir/Observation",
        json={
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": f"Patient/{pid}"},
        },
        headers=FHIR_JSON,
    )
    for claimed in observation["searchInclude"][:4]:  # what is claimed is served
        answer = client.get("/fhir/Observation", params={"_include": claimed})
        assert answer.status_code == 200, (claimed, answer.text)
    found = client.get("/fhir/Patient", params={"_id": pid, "_revinclude": "Observation:subject"})
    assert len(found.json()["entry"]) == 2
    # Bundle's composition and message select a whole resource: not offered, a clear 400.
    bundle = {p["name"] for p in _entry(client, "Bundle")["searchParam"]}
    assert not {"composition", "message"} & bundle
    assert client.get("/fhir/Bundle", params={"composition.type": "x"}).status_code == 400


def test_metadata_modes(client):
    assert client.get("/fhir/metadata", params={"mode": "full"}).status_code == 200
    terminology = client.get("/fhir/metadata", params={"mode": "terminology"})
    assert terminology.status_code == 400
    assert terminology.json()["issue"][0]["code"] == "not-supported"
    assert client.get("/fhir/metadata", params={"mode": "bogus"}).status_code == 400
