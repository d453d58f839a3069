"""What a caller may not see stays unseen on the side paths too: PATCH in a bundle, deleted
resources, versions that belonged to another patient, vread's wording, QR codes, refused exports.

Each case was a leak found in review (session 8): the caller learnt another patient's data, or
that a resource of theirs exists, where the plain read answers a 404.
"""

from __future__ import annotations

import base64
import json

from factories import FHIR_JSON, create, observation, patient

JSON_PATCH = {"Content-Type": "application/json-patch+json"}


def _people(client) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    own = create(client, patient(family="Own"))["id"]
    other = create(client, patient(family="SecretOther", given="Bob"))["id"]
    return own, other


def _patch_entry(resource_type: str, resource_id: str, operations: list) -> dict:
    data = base64.b64encode(json.dumps(operations).encode()).decode()
    return {
        "resource": {
            "resourceType": "Binary",
            "contentType": "application/json-patch+json",
            "data": data,
        },
        "request": {"method": "PATCH", "url": f"{resource_type}/{resource_id}"},
    }


def test_a_patch_in_a_bundle_shows_nothing_of_a_hidden_resource(client, anonymous, signed_in):
    own, other = _people(client)
    theirs = create(
        client, observation(patient_ref=f"Patient/{other}", code="HIV-SECRET-CODE", value=999)
    )["id"]
    probe = [{"op": "test", "path": "", "value": 0}]  # fails, quoting what it compared
    for role, patient_id in (("patient", own), ("pharmacist", None)):
        me = signed_in(role=role, patient_id=patient_id)
        bundle = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                _patch_entry("Observation", theirs, probe),
                _patch_entry("Patient", other, probe),
            ],
        }
        answer = anonymous.post("/fhir", json=bundle, headers={**me, **FHIR_JSON})
        assert answer.status_code == 200, answer.text
        statuses = [e["response"]["status"][:3] for e in answer.json()["entry"]]
        assert all(s in ("403", "404") for s in statuses), (role, statuses)
        assert "HIV-SECRET-CODE" not in answer.text and "SecretOther" not in answer.text
        bundle = {**bundle, "type": "transaction", "entry": bundle["entry"][:1]}
        answer = anonymous.post("/fhir", json=bundle, headers={**me, **FHIR_JSON})
        assert answer.status_code in (403, 404), answer.text
        assert "HIV-SECRET-CODE" not in answer.text


def test_a_batch_if_match_tells_no_version_of_a_hidden_resource(client, anonymous, signed_in):
    own, other = _people(client)
    me = signed_in(role="patient", patient_id=own)
    theirs = {"resourceType": "Patient", "id": other, "name": [{"family": "Mine now"}]}
    answers = []
    for version in ("1", "7"):
        entry = {
            "resource": theirs,
            "request": {"method": "PUT", "url": f"Patient/{other}", "ifMatch": f'W/"{version}"'},
        }
        bundle = {"resourceType": "Bundle", "type": "batch", "entry": [entry]}
        answer = anonymous.post("/fhir", json=bundle, headers={**me, **FHIR_JSON})
        answers.append(answer.json()["entry"][0]["response"]["status"][:3])
    assert answers[0] == answers[1] and answers[0] in ("403", "404"), answers


def test_a_patch_tells_nothing_of_a_hidden_resource(client, anonymous, signed_in):
    own, other = _people(client)
    theirs = create(client, observation(patient_ref=f"Patient/{other}"))["id"]
    me = signed_in(role="patient", patient_id=own)
    ops = json.dumps([{"op": "replace", "path": "/status", "value": "final"}])
    exists = anonymous.patch(
        f"/fhir/Observation/{theirs}", content=ops, headers={**me, **JSON_PATCH}
    )
    missing = anonymous.patch("/fhir/Observation/nope", content=ops, headers={**me, **JSON_PATCH})
    assert exists.status_code == missing.status_code, (exists.text, missing.text)


def test_a_deletion_is_told_only_to_whom_the_resource_was_visible(client, anonymous, signed_in):
    own, other = _people(client)
    gone = create(client, observation(patient_ref=f"Patient/{other}"))["id"]
    mine_gone = create(client, observation(patient_ref=f"Patient/{own}"))["id"]
    for rid in (gone, mine_gone):
        assert client.delete(f"/fhir/Observation/{rid}").status_code == 204
    dead = create(client, patient(family="Dead"))["id"]
    assert client.delete(f"/fhir/Patient/{dead}").status_code == 204
    me = signed_in(role="patient", patient_id=own)

    assert anonymous.get(f"/fhir/Observation/{gone}", headers=me).status_code == 404
    assert anonymous.get(f"/fhir/Observation/{gone}/_history/2", headers=me).status_code == 404
    assert anonymous.get(f"/fhir/Patient/{dead}/$everything", headers=me).status_code == 404
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": f"Observation/{gone}"}}],
    }
    answer = anonymous.post("/fhir", json=batch, headers={**me, **FHIR_JSON})
    assert answer.json()["entry"][0]["response"]["status"].startswith("404"), answer.text
    # their own deletion is told as one
    assert anonymous.get(f"/fhir/Observation/{mine_gone}", headers=me).status_code == 410


def test_vread_words_a_hidden_version_as_a_missing_one(client, anonymous, signed_in):
    own, other = _people(client)
    live = create(client, observation(patient_ref=f"Patient/{other}"))["id"]
    me = signed_in(role="patient", patient_id=own)
    hidden = anonymous.get(f"/fhir/Observation/{live}/_history/1", headers=me)
    unknown = anonymous.get(f"/fhir/Observation/{live[:-4]}ffff/_history/1", headers=me)
    assert hidden.status_code == unknown.status_code == 404
    word = lambda r: r.json()["issue"][0]["diagnostics"].split(" ", 1)[1]  # noqa: E731
    assert word(hidden) == word(unknown)  # "has no version 1", after the id


def test_history_shows_only_the_versions_that_were_the_callers(client, anonymous, signed_in):
    own, other = _people(client)
    obs = observation(patient_ref=f"Patient/{other}", code="OTHER-ONLY")
    obs["subject"]["display"] = "Bob SecretOther"
    rid = create(client, obs)["id"]
    moved = {**obs, "id": rid, "subject": {"reference": f"Patient/{own}"}}
    assert client.put(f"/fhir/Observation/{rid}", json=moved, headers=FHIR_JSON).status_code == 200
    me = signed_in(role="patient", patient_id=own)
    for url in (
        f"/fhir/Observation/{rid}/_history",
        "/fhir/Observation/_history",
        "/fhir/_history",
    ):
        answer = anonymous.get(url + "?_total=accurate", headers=me)
        assert answer.status_code == 200, answer.text
        versions = [
            e["resource"]["meta"]["versionId"]
            for e in answer.json().get("entry", [])
            if e.get("resource", {}).get("id") == rid
        ]
        assert versions == ["2"], (url, versions)
        assert "SecretOther" not in answer.text and "total" not in answer.json()
    # staff see both versions, and the total
    answer = client.get(f"/fhir/Observation/{rid}/_history?_total=accurate")
    assert len(answer.json()["entry"]) == 2 and answer.json()["total"] == 2


def test_a_put_takes_no_other_patients_deleted_resource(client, anonymous, signed_in):
    own, other = _people(client)
    appointment = {
        "resourceType": "Appointment",
        "status": "booked",
        "description": "Bob's oncology follow-up",
        "participant": [{"actor": {"reference": f"Patient/{other}"}, "status": "accepted"}],
    }
    rid = create(client, appointment)["id"]
    assert client.delete(f"/fhir/Appointment/{rid}").status_code == 204
    me = signed_in(role="patient", patient_id=own)
    mine = {
        "resourceType": "Appointment",
        "id": rid,
        "status": "booked",
        "participant": [{"actor": {"reference": f"Patient/{own}"}, "status": "accepted"}],
    }
    answer = anonymous.put(f"/fhir/Appointment/{rid}", json=mine, headers={**me, **FHIR_JSON})
    assert answer.status_code == 404, answer.text
    assert client.get(f"/fhir/Appointment/{rid}").status_code == 410  # still deleted


def test_a_qr_code_tells_nothing_of_a_hidden_resource(client, anonymous, signed_in):
    own, other = _people(client)
    theirs = create(client, observation(patient_ref=f"Patient/{other}"))["id"]
    me = signed_in(role="patient", patient_id=own)
    hidden = anonymous.get(f"/get_qr/{theirs}", headers=me)
    unknown = anonymous.get("/get_qr/0190aaaa-0000-7000-8000-000000000000", headers=me)
    assert hidden.status_code == unknown.status_code == 404
    assert hidden.json()["detail"].replace(theirs, "X") == unknown.json()["detail"].replace(
        "0190aaaa-0000-7000-8000-000000000000", "X"
    ), (hidden.text, unknown.text)


def test_a_refused_export_is_audited(client, anonymous, signed_in):
    own, _ = _people(client)
    me = signed_in(role="patient", patient_id=own)

    def denials() -> int:
        entries = client.get("/fhir/AuditEvent?outcome=4&_count=500").json().get("entry", [])
        return sum(1 for e in entries if "$export" in json.dumps(e["resource"]["subtype"]))

    before = denials()
    prefer = {**me, "Prefer": "respond-async", "Accept": "application/fhir+json"}
    assert anonymous.get("/fhir/$export", headers=prefer).status_code == 403
    assert anonymous.get("/fhir/Patient/$export?_type=Group", headers=prefer).status_code == 403
    assert denials() == before + 2


def test_a_patient_writes_nothing_into_another_patients_record(client, anonymous, signed_in):
    own, other = _people(client)
    me = {**signed_in(role="patient", patient_id=own), **FHIR_JSON}

    def appointment(*patients: str) -> dict:
        people = [{"actor": {"reference": f"Patient/{p}"}, "status": "accepted"} for p in patients]
        return {"resourceType": "Appointment", "status": "proposed", "participant": people}

    both = appointment(own, other)
    assert anonymous.post("/fhir/Appointment", json=both, headers=me).status_code == 403
    mine = anonymous.post("/fhir/Appointment", json=appointment(own), headers=me)
    assert mine.status_code == 201, mine.text
    rid = mine.json()["id"]
    answer = anonymous.put(f"/fhir/Appointment/{rid}", json={**both, "id": rid}, headers=me)
    assert answer.status_code == 403, answer.text
    add = [{"op": "add", "path": "/participant/-", "value": both["participant"][1]}]
    answer = anonymous.patch(f"/fhir/Appointment/{rid}", json=add, headers={**me, **JSON_PATCH})
    assert answer.status_code == 403, answer.text
    entry = {"resource": both, "request": {"method": "POST", "url": "Appointment"}}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
    assert anonymous.post("/fhir", json=bundle, headers=me).status_code == 403
    seen = client.get(f"/fhir/Appointment?patient={other}").json()
    assert seen.get("total", len(seen.get("entry", []))) == 0, seen
    assert client.get(f"/fhir/Appointment/{rid}").json()["meta"]["versionId"] == "1"
    # reading a resource shared with another patient stays allowed
    shared = create(client, both)["id"]
    assert anonymous.get(f"/fhir/Appointment/{shared}", headers=me).status_code == 200


def _history_of(anonymous, url: str, rid: str, headers: dict) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    answer = anonymous.get(url, headers=headers)
    assert answer.status_code == 200, answer.text
    return [
        (e["request"]["method"], e["response"]["etag"])
        for e in answer.json().get("entry", [])
        if e["request"]["url"].endswith(rid) or e.get("resource", {}).get("id") == rid
    ]


def test_history_shows_a_deletion_only_to_whom_the_deleted_version_was_visible(
    client, anonymous, signed_in
):
    """An id reused for another patient: its deletion as the other patient's record stays
    hidden from the new owner, as the version it deleted is (vread answers 404)."""
    own, other = _people(client)
    obs = observation(patient_ref=f"Patient/{other}")
    rid = create(client, obs)["id"]
    assert client.delete(f"/fhir/Observation/{rid}").status_code == 204
    mine = {**obs, "id": rid, "subject": {"reference": f"Patient/{own}"}}
    assert client.put(f"/fhir/Observation/{rid}", json=mine, headers=FHIR_JSON).status_code == 201
    me = signed_in(role="patient", patient_id=own)
    for url in (
        f"/fhir/Observation/{rid}/_history",
        "/fhir/Observation/_history",
        "/fhir/_history",
    ):
        assert _history_of(anonymous, url, rid, me) == [("PUT", 'W/"3"')], url
    assert anonymous.get(f"/fhir/Observation/{rid}/_history/2", headers=me).status_code == 404
    staff = _history_of(client, f"/fhir/Observation/{rid}/_history", rid, {})
    assert staff == [("PUT", 'W/"3"'), ("DELETE", 'W/"2"'), ("POST", 'W/"1"')]


def test_a_patient_sees_the_deletions_of_their_own_records_in_history(client, anonymous, signed_in):
    """A deleted resource has left the compartments; its versions still show in the type and
    system history of the patient whose record it was, and of no one else."""
    own, other = _people(client)
    mine = create(client, observation(patient_ref=f"Patient/{own}"))["id"]
    theirs = create(client, observation(patient_ref=f"Patient/{other}"))["id"]
    for rid in (mine, theirs):
        assert client.delete(f"/fhir/Observation/{rid}").status_code == 204
    me = signed_in(role="patient", patient_id=own)
    for url in ("/fhir/Observation/_history", "/fhir/_history"):
        assert _history_of(anonymous, url, mine, me) == [("DELETE", 'W/"2"'), ("POST", 'W/"1"')]
        assert _history_of(anonymous, url, theirs, me) == []


def test_history_tells_patches_and_re_creations_as_they_were(client):
    rid = create(client, observation(patient_ref="Patient/x"))["id"]
    patched = client.patch(
        f"/fhir/Observation/{rid}",
        json=[{"op": "replace", "path": "/status", "value": "amended"}],
        headers=JSON_PATCH,
    )
    assert patched.status_code == 200, patched.text
    assert client.delete(f"/fhir/Observation/{rid}").status_code == 204
    again = {**patched.json(), "status": "final"}
    assert client.put(f"/fhir/Observation/{rid}", json=again, headers=FHIR_JSON).status_code == 201
    entries = client.get(f"/fhir/Observation/{rid}/_history").json()["entry"]
    told = [(e["request"]["method"], e["response"]["status"]) for e in entries]
    assert told == [
        ("PUT", "201 Created"),
        ("DELETE", "204 No Content"),
        ("PATCH", "200 OK"),
        ("POST", "201 Created"),
    ]
