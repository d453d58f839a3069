"""The FHIR REST interactions on single resources, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import orjson
from factories import FHIR_JSON, create, observation, patient
from support import auth_headers

from vitasync_fhir.auth import tokens

PATCH_JSON = {"Content-Type": "application/json-patch+json"}


def outcome_code(answer) -> str:  # type: ignore[no-untyped-def]
    body = answer.json()
    assert body["resourceType"] == "OperationOutcome", body
    return body["issue"][0]["code"]


def test_create_assigns_uuid_version_and_location(client):
    answer = client.post("/fhir/Patient", json=patient(), headers=FHIR_JSON)
    assert answer.status_code == 201
    body = answer.json()
    assert len(body["id"]) == 36 and body["id"].count("-") == 4
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"].endswith("Z")
    assert answer.headers["etag"] == 'W/"1"'
    assert answer.headers["location"] == f"http://testserver/fhir/Patient/{body['id']}/_history/1"
    assert answer.headers["content-type"].startswith("application/fhir+json")
    assert "last-modified" in answer.headers


def test_created_ids_are_time_ordered_uuids(client):
    """Ids are RFC 9562 version 7 UUIDs, so ids made later sort later (index locality)."""
    ids = [create(client, patient())["id"] for _ in range(5)]
    entry = {"resource": patient(), "request": {"method": "POST", "url": "Patient"}}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [entry, entry]}
    answer = client.post("/fhir", json=bundle, headers=FHIR_JSON)
    assert answer.status_code == 200, answer.text
    ids += [e["response"]["location"].split("/")[-3] for e in answer.json()["entry"]]
    assert all(uuid.UUID(i).version == 7 and str(uuid.UUID(i)) == i for i in ids)
    assert ids[:5] == sorted(ids[:5])
    assert min(ids[5:]) > max(ids[:5])


def test_create_ignores_client_id_and_meta(client):
    body = create(client, patient(id="mine", meta={"versionId": "9", "tag": [{"code": "t"}]}))
    assert body["id"] != "mine"
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["tag"] == [{"code": "t"}]


def test_read_serves_exactly_what_create_returned(client):
    created = client.post("/fhir/Patient", json=patient(), headers=FHIR_JSON)
    read = client.get(f"/fhir/Patient/{created.json()['id']}")
    assert read.status_code == 200
    assert read.content == created.content
    assert read.headers["etag"] == 'W/"1"'


def test_update_makes_versions_and_vread_reads_each(client):
    pid = create(client, patient(family="One"))["id"]
    second = client.put(
        f"/fhir/Patient/{pid}", json=patient(id=pid, family="Two"), headers=FHIR_JSON
    )
    assert second.status_code == 200
    assert second.json()["meta"]["versionId"] == "2"
    assert client.get(f"/fhir/Patient/{pid}/_history/1").json()["name"][0]["family"] == "One"
    assert client.get(f"/fhir/Patient/{pid}/_history/2").json()["name"][0]["family"] == "Two"
    assert client.get(f"/fhir/Patient/{pid}/_history/3").status_code == 404
    assert client.get(f"/fhir/Patient/{pid}/_history/x").status_code == 404


def test_update_with_unchanged_content_keeps_the_version(client):
    pid = create(client, patient())["id"]
    again = client.put(f"/fhir/Patient/{pid}", json=patient(id=pid), headers=FHIR_JSON)
    assert again.status_code == 200
    assert again.json()["meta"]["versionId"] == "1"


def test_put_with_client_id_creates(client):
    answer = client.put("/fhir/Patient/abc-123.x", json=patient(id="abc-123.x"), headers=FHIR_JSON)
    assert answer.status_code == 201
    assert answer.json()["id"] == "abc-123.x"
    assert client.get("/fhir/Patient/abc-123.x").status_code == 200


def test_put_rejects_bad_ids_and_mismatches(client):
    bad = client.put("/fhir/Patient/bad_id!", json=patient(id="bad_id!"), headers=FHIR_JSON)
    assert bad.status_code == 400
    long = "a" * 65
    assert (
        client.put(f"/fhir/Patient/{long}", json=patient(id=long), headers=FHIR_JSON).status_code
        == 400
    )
    mismatch = client.put("/fhir/Patient/one", json=patient(id="two"), headers=FHIR_JSON)
    assert mismatch.status_code == 400
    missing = client.put("/fhir/Patient/one", json=patient(), headers=FHIR_JSON)
    assert missing.status_code == 400
    wrong_type = client.put(
        "/fhir/Patient/one", json={"resourceType": "Observation", "id": "one"}, headers=FHIR_JSON
    )
    assert wrong_type.status_code == 400


def test_if_match_precondition(client):
    pid = create(client, patient())["id"]
    ok = client.put(
        f"/fhir/Patient/{pid}",
        json=patient(id=pid, family="B"),
        headers={**FHIR_JSON, "If-Match": 'W/"1"'},
    )
    assert ok.status_code == 200
    stale = client.put(
        f"/fhir/Patient/{pid}",
        json=patient(id=pid, family="C"),
        headers={**FHIR_JSON, "If-Match": 'W/"1"'},
    )
    assert stale.status_code == 412
    assert outcome_code(stale) == "conflict"
    assert client.delete(f"/fhir/Patient/{pid}", headers={"If-Match": 'W/"1"'}).status_code == 412
    assert (
        client.put(
            f"/fhir/Patient/{pid}", json=patient(id=pid), headers={**FHIR_JSON, "If-Match": "junk"}
        ).status_code
        == 400
    )


def test_conditional_read_headers(client):
    created = client.post("/fhir/Patient", json=patient(), headers=FHIR_JSON)
    pid = created.json()["id"]
    assert client.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": 'W/"1"'}).status_code == 304
    assert client.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": 'W/"2"'}).status_code == 200
    modified = created.headers["last-modified"]
    assert (
        client.get(f"/fhir/Patient/{pid}", headers={"If-Modified-Since": modified}).status_code
        == 304
    )
    old = "Mon, 01 Jan 2001 00:00:00 GMT"
    assert client.get(f"/fhir/Patient/{pid}", headers={"If-Modified-Since": old}).status_code == 200


def test_delete_is_a_versioned_tombstone(client):
    pid = create(client, patient())["id"]
    deleted = client.delete(f"/fhir/Patient/{pid}")
    assert deleted.status_code == 204
    assert deleted.headers["etag"] == 'W/"2"'
    gone = client.get(f"/fhir/Patient/{pid}")
    assert gone.status_code == 410
    assert outcome_code(gone) == "deleted"
    assert client.get(f"/fhir/Patient/{pid}/_history/1").status_code == 200
    assert client.get(f"/fhir/Patient/{pid}/_history/2").status_code == 410
    assert client.delete(f"/fhir/Patient/{pid}").status_code == 204
    history = client.get(f"/fhir/Patient/{pid}/_history").json()
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "POST"]
    assert "resource" not in history["entry"][0]
    revived = client.put(f"/fhir/Patient/{pid}", json=patient(id=pid), headers=FHIR_JSON)
    assert revived.status_code == 201
    assert revived.json()["meta"]["versionId"] == "3"


def test_unknown_type_and_id(client):
    assert outcome_code(client.get("/fhir/Nonsense/1")) == "not-supported"
    assert client.get("/fhir/Nonsense/1").status_code == 404
    missing = client.get("/fhir/Patient/does-not-exist")
    assert missing.status_code == 404
    assert outcome_code(missing) == "not-found"
    assert (
        client.post(
            "/fhir/Nonsense", json={"resourceType": "Nonsense"}, headers=FHIR_JSON
        ).status_code
        == 404
    )


def test_method_not_allowed(client):
    answer = client.post("/fhir/Patient/123", json=patient(), headers=FHIR_JSON)
    assert answer.status_code == 405
    assert outcome_code(answer) == "not-supported"


def test_malformed_json_is_400_never_500(client):
    for body in (
        b"{",
        b"not json",
        b"\xff\xfe\x00",
        b"",
        b"[1,2]",
        b'"Patient"',
        b"{" * 5000 + b"}" * 5000,
    ):
        answer = client.post("/fhir/Patient", content=body, headers=FHIR_JSON)
        assert answer.status_code == 400, (body[:20], answer.text)
        assert outcome_code(answer) == "invalid"


def test_invalid_resource_is_422_naming_the_element(client):
    answer = client.post("/fhir/Patient", json=patient(gender="robot"), headers=FHIR_JSON)
    assert answer.status_code == 422
    issues = answer.json()["issue"]
    assert any("Patient.gender" in (i.get("expression") or [""])[0] for i in issues)
    yes = client.post("/fhir/Patient", json=patient(active="yes"), headers=FHIR_JSON)
    assert yes.status_code == 422
    nothing_stored = client.get("/fhir/Patient/_history").json()
    assert nothing_stored.get("entry", []) == []


def test_body_too_large_is_413(client):
    big = b'{"resourceType":"Patient","text":"' + b"x" * (17 * 1024 * 1024) + b'"}'
    answer = client.post("/fhir/Patient", content=big, headers=FHIR_JSON)
    assert answer.status_code == 413
    assert outcome_code(answer) == "too-long"


def test_unsupported_media_types(client):
    xml = client.post(
        "/fhir/Patient", content=b"<Patient/>", headers={"Content-Type": "application/fhir+xml"}
    )
    assert xml.status_code == 415
    pid = create(client, patient())["id"]
    assert (
        client.get(f"/fhir/Patient/{pid}", headers={"Accept": "application/fhir+xml"}).status_code
        == 406
    )
    assert client.get(f"/fhir/Patient/{pid}?_format=xml").status_code == 406
    plain = client.get(f"/fhir/Patient/{pid}", headers={"Accept": "application/json"})
    assert plain.status_code == 200 and plain.headers["content-type"].startswith("application/json")
    assert client.get(f"/fhir/Patient/{pid}?_format=json").status_code == 200
    pretty = client.get(f"/fhir/Patient/{pid}?_pretty=true")
    assert pretty.text.startswith('{\n  "resourceType"')
    assert orjson.loads(pretty.content) == client.get(f"/fhir/Patient/{pid}").json()


def test_prefer_return(client):
    minimal = client.post(
        "/fhir/Patient", json=patient(), headers={**FHIR_JSON, "Prefer": "return=minimal"}
    )
    assert minimal.status_code == 201 and minimal.content == b"" and minimal.headers["location"]
    as_outcome = client.post(
        "/fhir/Patient", json=patient(), headers={**FHIR_JSON, "Prefer": "return=OperationOutcome"}
    )
    assert as_outcome.status_code == 201
    assert as_outcome.json()["resourceType"] == "OperationOutcome"
    full = client.post(
        "/fhir/Patient", json=patient(), headers={**FHIR_JSON, "Prefer": "return=representation"}
    )
    assert full.json()["resourceType"] == "Patient"


def test_json_patch(client):
    pid = create(client, patient(family="Before"))["id"]
    ops = [{"op": "replace", "path": "/name/0/family", "value": "After"}]
    answer = client.patch(f"/fhir/Patient/{pid}", content=orjson.dumps(ops), headers=PATCH_JSON)
    assert answer.status_code == 200, answer.text
    assert answer.json()["name"][0]["family"] == "After"
    assert answer.json()["meta"]["versionId"] == "2"
    invalid = [{"op": "replace", "path": "/gender", "value": "robot"}]
    assert (
        client.patch(
            f"/fhir/Patient/{pid}", content=orjson.dumps(invalid), headers=PATCH_JSON
        ).status_code
        == 422
    )
    broken = [{"op": "remove", "path": "/nope"}]
    assert (
        client.patch(
            f"/fhir/Patient/{pid}", content=orjson.dumps(broken), headers=PATCH_JSON
        ).status_code
        == 422
    )
    change_id = [{"op": "replace", "path": "/id", "value": "other"}]
    assert (
        client.patch(
            f"/fhir/Patient/{pid}", content=orjson.dumps(change_id), headers=PATCH_JSON
        ).status_code
        == 422
    )
    stale = client.patch(
        f"/fhir/Patient/{pid}",
        content=orjson.dumps(ops),
        headers={**PATCH_JSON, "If-Match": 'W/"1"'},
    )
    assert stale.status_code == 412
    assert (
        client.patch(
            f"/fhir/Patient/{pid}", content=orjson.dumps(ops), headers=FHIR_JSON
        ).status_code
        == 415
    )
    assert (
        client.patch(
            "/fhir/Patient/missing", content=orjson.dumps(ops), headers=PATCH_JSON
        ).status_code
        == 404
    )


def test_history_levels_and_paging(client):
    pid = create(client, patient())["id"]
    for family in ("B", "C", "D"):
        client.put(f"/fhir/Patient/{pid}", json=patient(id=pid, family=family), headers=FHIR_JSON)
    create(client, observation(patient_ref=f"Patient/{pid}"))
    instance = client.get(f"/fhir/Patient/{pid}/_history").json()
    assert instance["type"] == "history"
    assert [e["resource"]["meta"]["versionId"] for e in instance["entry"]] == ["4", "3", "2", "1"]
    type_level = client.get("/fhir/Patient/_history").json()
    assert {e["resource"]["resourceType"] for e in type_level["entry"]} == {"Patient"}
    ours = {"Patient", "Observation"}
    seen = []
    url = "/fhir/_history?_count=2"
    while url:
        page = client.get(url).json()
        assert len(page.get("entry", [])) <= 2
        seen += [
            (e["resource"]["resourceType"], e["resource"]["meta"]["versionId"])
            for e in page.get("entry", [])
            if e["resource"]["resourceType"] in ours
        ]
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        url = nxt[0].replace("http://testserver", "") if nxt else None
    expected = [
        ("Observation", "1"),
        ("Patient", "4"),
        ("Patient", "3"),
        ("Patient", "2"),
        ("Patient", "1"),
    ]
    assert seen == expected
    total = client.get("/fhir/Patient/_history?_total=accurate").json()["total"]
    assert total == 4
    assert client.get("/fhir/_history?_count=abc").status_code == 400
    assert client.get("/fhir/_history?_since=yesterday").status_code == 400
    assert client.get("/fhir/_history?bogus=1").status_code == 400
    future = client.get("/fhir/_history?_since=2999-01-01T00:00:00Z").json()
    assert future.get("entry", []) == []
    assert client.get("/fhir/Patient/nope/_history").status_code == 404


def test_capability_statement_reflects_routes(client):
    answer = client.get("/fhir/metadata")
    assert answer.status_code == 200
    statement = answer.json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    rest = statement["rest"][0]
    patient_entry = next(r for r in rest["resource"] if r["type"] == "Patient")
    codes = {i["code"] for i in patient_entry["interaction"]}
    assert {
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "create",
        "history-instance",
        "history-type",
        "search-type",
    } <= codes
    assert {"transaction", "batch", "history-system"} <= {i["code"] for i in rest["interaction"]}
    assert rest["security"]["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    uris = {e["url"]: e["valueUri"] for e in rest["security"]["extension"][0]["extension"]}
    assert uris["authorize"] == "http://testserver/oauth2/authorize"
    assert uris["token"] == "http://testserver/oauth2/token"
    assert rest["security"]["cors"] is False  # no CORS origins configured
    assert len(rest["resource"]) > 100


def test_cors_answers_the_configured_origins(settings):
    from fastapi.testclient import TestClient

    from vitasync_fhir.app import create_app

    configured = settings.model_copy(update={"cors_origins": ["https://app.example.org"]})
    with TestClient(create_app(configured)) as browser:
        asked = {"Origin": "https://app.example.org", "Access-Control-Request-Method": "GET"}
        allowed = browser.options("/fhir/Patient", headers=asked)
        assert allowed.headers["access-control-allow-origin"] == "https://app.example.org"
        stranger = browser.options(
            "/fhir/Patient", headers={**asked, "Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in stranger.headers
        assert browser.get("/fhir/metadata").json()["rest"][0]["security"]["cors"] is True


def test_conditional_create(client):
    first = client.post(
        "/fhir/Patient",
        json=patient(identifier="C-1"),
        headers={**FHIR_JSON, "If-None-Exist": "identifier=urn:test:mrn|C-1"},
    )
    assert first.status_code == 201
    again = client.post(
        "/fhir/Patient",
        json=patient(identifier="C-1"),
        headers={**FHIR_JSON, "If-None-Exist": "identifier=urn:test:mrn|C-1"},
    )
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    create(client, patient(identifier="C-1", family="Twin"))
    twice = client.post(
        "/fhir/Patient",
        json=patient(identifier="C-1"),
        headers={**FHIR_JSON, "If-None-Exist": "identifier=urn:test:mrn|C-1"},
    )
    assert twice.status_code == 412
    bad = client.post(
        "/fhir/Patient", json=patient(), headers={**FHIR_JSON, "If-None-Exist": "nonsense=1"}
    )
    assert bad.status_code == 400


def test_a_condition_with_an_iterated_include_is_400(client):
    condition = "identifier=urn:test:mrn|C-2&_include:iterate=Patient:link"
    answer = client.post(
        "/fhir/Patient",
        json=patient(identifier="C-2"),
        headers={**FHIR_JSON, "If-None-Exist": condition},
    )
    assert answer.status_code == 400, answer.text
    (issue,) = answer.json()["issue"]
    assert issue["code"] == "invalid" and issue["expression"] == ["_include:iterate"]


def test_conditional_update(client):
    created = client.put(
        "/fhir/Patient?identifier=urn:test:mrn|U-1",
        json=patient(identifier="U-1"),
        headers=FHIR_JSON,
    )
    assert created.status_code == 201
    pid = created.json()["id"]
    updated = client.put(
        "/fhir/Patient?identifier=urn:test:mrn|U-1",
        json=patient(identifier="U-1", family="New"),
        headers=FHIR_JSON,
    )
    assert updated.status_code == 200
    assert updated.json()["id"] == pid and updated.json()["meta"]["versionId"] == "2"
    other = client.put(
        "/fhir/Patient?identifier=urn:test:mrn|U-1",
        json=patient(id="other", identifier="U-1"),
        headers=FHIR_JSON,
    )
    assert other.status_code == 400
    create(client, patient(identifier="U-1"))
    ambiguous = client.put(
        "/fhir/Patient?identifier=urn:test:mrn|U-1",
        json=patient(identifier="U-1"),
        headers=FHIR_JSON,
    )
    assert ambiguous.status_code == 412
    assert client.put("/fhir/Patient", json=patient(), headers=FHIR_JSON).status_code == 400


def test_conditional_delete(client):
    pid = create(client, patient(identifier="D-1"))["id"]
    assert client.delete("/fhir/Patient?identifier=urn:test:mrn|D-1").status_code == 204
    assert client.get(f"/fhir/Patient/{pid}").status_code == 410
    assert client.delete("/fhir/Patient?identifier=urn:test:mrn|D-1").status_code == 204
    create(client, patient(identifier="D-2"))
    create(client, patient(identifier="D-2"))
    assert client.delete("/fhir/Patient?identifier=urn:test:mrn|D-2").status_code == 412
    assert client.delete("/fhir/Patient?bogus=1").status_code == 400


def test_deleting_what_never_existed_is_204_and_writes_nothing(client):
    answer = client.delete("/fhir/Patient/never-made")
    assert answer.status_code == 204, answer.text
    assert "etag" not in answer.headers
    assert client.get("/fhir/Patient/never-made/_history").status_code == 404
    stale = client.delete("/fhir/Patient/never-made", headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    made = client.put("/fhir/Patient/never-made", json=patient(id="never-made"), headers=FHIR_JSON)
    assert made.status_code == 201 and made.json()["meta"]["versionId"] == "1"


def test_a_delete_tells_no_hidden_resource_from_none(client, anonymous, settings):
    mine = create(client, patient(family="Mine"))["id"]
    theirs = create(client, patient(family="Theirs"))["id"]
    hidden = create(client, observation(patient_ref=f"Patient/{theirs}"))["id"]
    account = auth_headers(settings, role="doctor")
    claims = tokens.decode_access_token(settings, account["Authorization"].split()[1])
    limited = tokens.issue_access_token(
        settings, subject=claims["sub"], scope="patient/*.cruds", patient=mine
    )
    doctor = {"Authorization": f"Bearer {limited.token}"}
    answers = [
        anonymous.delete(f"/fhir/Observation/{rid}", headers={**doctor, **prefer})
        for rid in (hidden, "never-made")
        for prefer in ({}, {"Prefer": "return=OperationOutcome"})
    ]
    assert [a.status_code for a in answers] == [204, 200, 204, 200]
    assert answers[0].headers.get("etag") is None and answers[2].headers.get("etag") is None
    assert answers[1].json() == answers[3].json()
    assert client.get(f"/fhir/Observation/{hidden}").json()["meta"]["versionId"] == "1"
    nurse = auth_headers(settings, role="nurse")  # may not delete Observations at all
    for rid in (hidden, "never-made"):
        assert anonymous.delete(f"/fhir/Observation/{rid}", headers=nurse).status_code == 403


def test_history_at_lists_the_versions_current_during_a_period(client):
    pid = create(client, patient(family="A"))["id"]
    moments = []
    for family in ("B", "C"):
        time.sleep(0.05)
        moments.append(datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z")
        time.sleep(0.05)
        client.put(f"/fhir/Patient/{pid}", json=patient(id=pid, family=family), headers=FHIR_JSON)
    between_1_2, between_2_3 = moments

    def versions(at: str) -> list[str]:
        answer = client.get(f"/fhir/Patient/{pid}/_history", params={"_at": at})
        assert answer.status_code == 200, answer.text
        return [e["resource"]["meta"]["versionId"] for e in answer.json().get("entry", [])]

    assert versions(between_1_2) == ["1"]
    assert versions(between_2_3) == ["2"]
    assert versions("ge" + between_1_2) == ["3", "2", "1"]
    assert versions("gt" + between_2_3) == ["3", "2"]
    assert versions("lt" + between_1_2) == ["1"]
    assert versions("le" + between_2_3) == ["2", "1"]
    assert versions("2999") == ["3"]  # the current version is current on and on
    assert versions("1999") == []
    assert client.get("/fhir/Patient/_history", params={"_at": "eb2020"}).status_code == 400
    assert client.get("/fhir/_history", params={"_at": "someday"}).status_code == 400


def test_history_since_takes_only_a_fhir_instant(client):
    for value in (
        "20200101T000000Z",
        "2020-01-01 00:00:00Z",
        "2020-01-01T00:00:00Z\x00",
        "2020-01-01",
    ):
        answer = client.get("/fhir/_history", params={"_since": value})
        assert answer.status_code == 400, value
        assert answer.json()["issue"][0]["expression"] == ["_since"]
    assert (
        client.get("/fhir/_history", params={"_since": "2020-01-01T00:00:00+02:00"}).status_code
        == 200
    )
