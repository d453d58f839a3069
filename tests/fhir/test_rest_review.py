"""REST interactions as a review against R4 found them: the Period invariant per-1 on every write
path, relative references against an entry's RESTful fullUrl in a transaction, conditional PATCH,
If-Match `*` and lists (RFC 9110 13.1.1), and HEAD on read and vread."""

from __future__ import annotations

import pytest
from factories import FHIR_JSON, create, observation, patient

PATCH_JSON = {"Content-Type": "application/json-patch+json"}
BACKWARDS = {"start": "2026-01-02", "end": "2026-01-01"}


def _encounter(**extra: object) -> dict:
    return {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        **extra,
    }


def _outcome(answer) -> dict:  # type: ignore[no-untyped-def]
    body = answer.json()
    assert body["resourceType"] == "OperationOutcome", body
    return body


def _transaction(*entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


# -- per-1: a Period's start is not after its end ---------------------------------------------


def _refuses_backwards_period(answer, path: str) -> None:  # type: ignore[no-untyped-def]
    assert answer.status_code == 422, answer.text
    issues = _outcome(answer)["issue"]
    assert [i["code"] for i in issues] == ["invariant"]
    assert issues[0]["expression"][0].endswith(path)


def test_a_period_ending_before_it_starts_is_refused_on_every_write(client):
    answer = client.post("/fhir/Encounter", json=_encounter(period=BACKWARDS), headers=FHIR_JSON)
    _refuses_backwards_period(answer, "Encounter.period")
    stored = create(client, _encounter(period={"start": "2026-01-01", "end": "2026-01-02"}))
    url = f"/fhir/Encounter/{stored['id']}"
    answer = client.put(url, json={**stored, "period": BACKWARDS}, headers=FHIR_JSON)
    _refuses_backwards_period(answer, "Encounter.period")
    operations = [{"op": "replace", "path": "/period/start", "value": "2026-01-03"}]
    _refuses_backwards_period(
        client.patch(url, json=operations, headers=PATCH_JSON), "Encounter.period"
    )
    entry = {
        "resource": _encounter(period=BACKWARDS),
        "request": {"method": "POST", "url": "Encounter"},
    }
    answer = client.post("/fhir", json=_transaction(entry), headers=FHIR_JSON)
    _refuses_backwards_period(answer, "Encounter.period")
    # Nested and in a choice type: Observation.effectivePeriod.
    watched = observation(patient_ref="Patient/x", effectivePeriod=BACKWARDS)
    del watched["subject"]
    answer = client.post("/fhir/Observation", json=watched, headers=FHIR_JSON)
    _refuses_backwards_period(answer, "Observation.effectivePeriod")
    assert client.get(url).json()["period"]["start"] == "2026-01-01"


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2026-01-01", "2026-01-01"),  # equal: a one-day period
        ("2026-01-01T10:00:00Z", "2026-01-01T10:00:00Z"),
        ("2026-01-15", "2026-01"),  # the end's month holds the start
        ("2026-01-01T10:00:00+05:00", "2026-01-01T09:00:00Z"),  # 05:00Z is before 09:00Z
        ("2026-01-02", "2026-01-01T20:00:00Z"),  # the date may lie in UTC+14:00
    ],
)
def test_a_period_whose_start_is_not_after_its_end_is_accepted(client, start, end):
    answer = client.post(
        "/fhir/Encounter", json=_encounter(period={"start": start, "end": end}), headers=FHIR_JSON
    )
    assert answer.status_code == 201, answer.text


# -- transactions: a relative reference against the entry's RESTful fullUrl --------------------


def test_a_relative_reference_resolves_against_the_entrys_fullurl_base(client):
    base = "http://other.example/fhir/"
    bundle = _transaction(
        {
            "fullUrl": f"{base}Patient/tmp1",
            "resource": patient(),
            "request": {"method": "POST", "url": "Patient"},
        },
        {
            "fullUrl": f"{base}Observation/tmp2",
            "resource": observation(patient_ref="Patient/tmp1"),
            "request": {"method": "POST", "url": "Observation"},
        },
        {  # another base: its Patient/tmp1 is not that entry
            "fullUrl": "http://elsewhere.example/fhir/Observation/tmp3",
            "resource": observation(patient_ref="Patient/tmp1"),
            "request": {"method": "POST", "url": "Observation"},
        },
    )
    answer = client.post("/fhir", json=bundle, headers=FHIR_JSON)
    assert answer.status_code == 200, answer.text
    locations = [e["response"]["location"] for e in answer.json()["entry"]]
    patient_id = locations[0].split("/")[-3]
    assert patient_id != "tmp1"
    observations = [client.get(loc.rsplit("/_history", 1)[0]).json() for loc in locations[1:]]
    assert observations[0]["subject"]["reference"] == f"Patient/{patient_id}"
    assert observations[1]["subject"]["reference"] == "Patient/tmp1"


# -- conditional PATCH --------------------------------------------------------------------------


def _marked(value: str) -> dict:
    return patient(identifier=value)


def test_conditional_patch_patches_the_one_match(client):
    stored = create(client, _marked("cp-1"))
    operations = [{"op": "replace", "path": "/gender", "value": "male"}]
    answer = client.patch(
        "/fhir/Patient",
        params={"identifier": "urn:test:mrn|cp-1"},
        json=operations,
        headers=PATCH_JSON,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["id"] == stored["id"]
    assert answer.headers["etag"] == 'W/"2"'
    assert client.get(f"/fhir/Patient/{stored['id']}").json()["gender"] == "male"


def test_conditional_patch_answers_404_for_none_and_412_for_several(client):
    operations = [{"op": "replace", "path": "/gender", "value": "male"}]
    condition = {"identifier": "urn:test:mrn|cp-2"}
    answer = client.patch("/fhir/Patient", params=condition, json=operations, headers=PATCH_JSON)
    assert answer.status_code == 404, answer.text
    assert _outcome(answer)["issue"][0]["code"] == "not-found"
    create(client, _marked("cp-2"))
    create(client, _marked("cp-2"))
    answer = client.patch("/fhir/Patient", params=condition, json=operations, headers=PATCH_JSON)
    assert answer.status_code == 412, answer.text
    assert _outcome(answer)["issue"][0]["code"] == "conflict"


def test_conditional_patch_checks_if_match_and_needs_criteria(client):
    stored = create(client, _marked("cp-3"))
    operations = [{"op": "replace", "path": "/gender", "value": "male"}]
    condition = {"identifier": "urn:test:mrn|cp-3"}
    answer = client.patch(
        "/fhir/Patient",
        params=condition,
        json=operations,
        headers={**PATCH_JSON, "If-Match": 'W/"7"'},
    )
    assert answer.status_code == 412, answer.text
    assert client.get(f"/fhir/Patient/{stored['id']}").json()["gender"] == "female"
    answer = client.patch("/fhir/Patient", json=operations, headers=PATCH_JSON)
    assert answer.status_code == 400, answer.text


# -- If-Match: * and lists ----------------------------------------------------------------------


def test_if_match_star_holds_for_any_current_version(client):
    stored = create(client, patient())
    url = f"/fhir/Patient/{stored['id']}"
    answer = client.put(
        url, json={**stored, "gender": "male"}, headers={**FHIR_JSON, "If-Match": "*"}
    )
    assert answer.status_code == 200, answer.text
    operations = [{"op": "replace", "path": "/gender", "value": "other"}]
    answer = client.patch(url, json=operations, headers={**PATCH_JSON, "If-Match": "*"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["etag"] == 'W/"3"'
    assert client.delete(url, headers={"If-Match": "*"}).status_code == 204
    # Deleted: no current version for `*` to match.
    answer = client.delete(url, headers={"If-Match": "*"})
    assert answer.status_code == 412, answer.text
    answer = client.put(
        "/fhir/Patient/never-made",
        json={**patient(), "id": "never-made"},
        headers={**FHIR_JSON, "If-Match": "*"},
    )
    assert answer.status_code == 412, answer.text


def test_if_match_list_holds_when_any_tag_names_the_current_version(client):
    stored = create(client, patient())
    url = f"/fhir/Patient/{stored['id']}"
    answer = client.put(
        url, json={**stored, "gender": "male"}, headers={**FHIR_JSON, "If-Match": 'W/"1", W/"2"'}
    )
    assert answer.status_code == 200, answer.text
    operations = [{"op": "replace", "path": "/gender", "value": "other"}]
    answer = client.patch(url, json=operations, headers={**PATCH_JSON, "If-Match": 'W/"5", W/"6"'})
    assert answer.status_code == 412, answer.text
    answer = client.patch(url, json=operations, headers={**PATCH_JSON, "If-Match": 'W/"1",W/"2"'})
    assert answer.status_code == 200, answer.text
    assert client.delete(url, headers={"If-Match": 'W/"1", W/"2"'}).status_code == 412
    assert client.delete(url, headers={"If-Match": 'W/"2", W/"3"'}).status_code == 204
    answer = client.delete(url, headers={"If-Match": 'W/"1", nonsense'})
    assert answer.status_code == 400, answer.text


def test_if_match_star_and_lists_in_a_transaction(client):
    stored = create(client, patient())
    url = f"Patient/{stored['id']}"

    def put(if_match: str) -> int:
        entry = {
            "resource": {**stored, "gender": "male" if if_match == "*" else "other"},
            "request": {"method": "PUT", "url": url, "ifMatch": if_match},
        }
        return client.post("/fhir", json=_transaction(entry), headers=FHIR_JSON).status_code

    assert put("*") == 200
    assert put('W/"1", W/"3"') == 412
    assert put('W/"1", W/"2"') == 200


# -- HEAD -----------------------------------------------------------------------------------------


def test_head_answers_read_and_vread_without_a_body(client):
    stored = create(client, patient())
    for url in (f"/fhir/Patient/{stored['id']}", f"/fhir/Patient/{stored['id']}/_history/1"):
        got = client.get(url)
        answer = client.head(url)
        assert answer.status_code == 200, answer.text
        assert answer.content == b""
        for name in ("etag", "last-modified", "content-type", "content-length"):
            assert answer.headers[name] == got.headers[name], name
    assert client.head("/fhir/Patient/never-made").status_code == 404
    answer = client.head(f"/fhir/Patient/{stored['id']}", headers={"If-None-Match": 'W/"1"'})
    assert answer.status_code == 304
