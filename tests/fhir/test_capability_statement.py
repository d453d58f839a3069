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
