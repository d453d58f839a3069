"""Batch and transaction Bundles at POST /fhir."""

from __future__ import annotations

import base64

import orjson
import pytest
from factories import FHIR_JSON, create, load_bundle, observation, patient
from sqlalchemy import create_engine, func, select

from vitasync_fhir.db import sync_url
from vitasync_fhir.schema import metadata

SMALL = ["Clemente_Kreiger", "Buster_Hoeger", "Liz_Conn"]


def tx(*entries: dict, kind: str = "transaction") -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def post(resource: dict, full_url: str | None = None) -> dict:
    entry: dict = {
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"]},
    }
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def references(node) -> list[str]:  # type: ignore[no-untyped-def]
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                found.append(value)
            else:
                found += references(value)
    elif isinstance(node, list):
        for item in node:
            found += references(item)
    return found


def stored_count(client) -> int:  # type: ignore[no-untyped-def]
    """Versions of the clinical types these tests write (reads add AuditEvents, not these)."""
    return sum(
        client.get(f"/fhir/{t}/_history?_total=accurate&_count=1").json()["total"]
        for t in ("Patient", "Observation")
    )


def row_counts(database_url: str) -> dict[str, int]:
    """Rows in every table of the schema, read straight from the database."""
    engine = create_engine(sync_url(database_url))
    with engine.connect() as conn:
        counts = {
            t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in metadata.sorted_tables
        }
    engine.dispose()
    return counts


@pytest.mark.parametrize("name", SMALL)
def test_synthea_bundle_loads_and_every_reference_resolves(client, synthea_dir, name):
    path = next(synthea_dir.glob(f"{name}_*.json"))
    source = orjson.loads(path.read_bytes())
    answer = load_bundle(client, path)
    assert answer["type"] == "transaction-response"
    assert len(answer["entry"]) == len(source["entry"])
    assert all(e["response"]["status"] == "201 Created" for e in answer["entry"])
    checked = 0
    for entry in answer["entry"]:
        location = entry["response"]["location"].replace("http://testserver", "")
        resource = client.get(location).json()
        for ref in references(resource):
            if ref.startswith("#"):
                continue
            assert not ref.startswith("urn:uuid:"), ref
            target = client.get(f"/fhir/{ref}")
            assert target.status_code == 200, ref
            checked += 1
    assert checked > 50


def test_urn_uuid_references_are_rewritten_in_order(client):
    bundle = tx(
        post(
            observation(patient_ref="urn:uuid:11111111-1111-1111-1111-111111111111"),
            "urn:uuid:22222222-2222-2222-2222-222222222222",
        ),
        post(patient(), "urn:uuid:11111111-1111-1111-1111-111111111111"),
    )
    answer = client.post("/fhir", json=bundle, headers=FHIR_JSON)
    assert answer.status_code == 200, answer.text
    obs_loc, pat_loc = (e["response"]["location"] for e in answer.json()["entry"])
    assert "/Observation/" in obs_loc and "/Patient/" in pat_loc
    obs = client.get(obs_loc.replace("http://testserver", "")).json()
    pid = pat_loc.split("/Patient/")[1].split("/")[0]
    assert obs["subject"]["reference"] == f"Patient/{pid}"


def test_transaction_is_all_or_nothing(client, database_url):
    existing = create(client, patient(family="Existing", identifier="MRN-1"))["id"]
    before = row_counts(database_url)
    bundle = tx(
        {"request": {"method": "DELETE", "url": f"Patient/{existing}"}},
        post(patient(family="Kept", identifier="MRN-2")),
        post(observation(patient_ref=f"Patient/{existing}")),
        post(patient(gender="robot")),
    )
    answer = client.post("/fhir", json=bundle, headers=FHIR_JSON)
    assert answer.status_code == 422
    issue = answer.json()["issue"][0]
    assert "Bundle.entry[3]" in issue["diagnostics"]
    assert row_counts(database_url) == before
    assert client.get(f"/fhir/Patient/{existing}").status_code == 200


def test_unresolved_urn_reference_fails_the_transaction(client):
    bundle = tx(post(observation(patient_ref="urn:uuid:99999999-9999-9999-9999-999999999999")))
    answer = client.post("/fhir", json=bundle, headers=FHIR_JSON)
    assert answer.status_code == 400
    assert stored_count(client) == 0


def test_transaction_processes_delete_put_patch_and_get(client):
    doomed = create(client, patient(family="Doomed"))["id"]
    kept = create(client, patient(family="Kept"))["id"]
    ops = base64.b64encode(
        orjson.dumps([{"op": "replace", "path": "/name/0/family", "value": "Patched"}])
    ).decode()
    bundle = tx(
        {"request": {"method": "GET", "url": f"Patient/{kept}"}},
        {"request": {"method": "DELETE", "url": f"Patient/{doomed}"}},
        {
            "resource": patient(id="client-id-1", family="Put"),
            "request": {"method": "PUT", "url": "Patient/client-id-1"},
        },
        {
            "resource": {
                "resourceType": "Binary",
                "contentType": "application/json-patch+json",
                "data": ops,
            },
            "request": {"method": "PATCH", "url": f"Patient/{kept}"},
        },
    )
    answer = client.post("/fhir", json=bundle, headers=FHIR_JSON)
    assert answer.status_code == 200, answer.text
    entries = answer.json()["entry"]
    assert [e["response"]["status"] for e in entries] == [
        "200 OK",
        "204 No Content",
        "201 Created",
        "200 OK",
    ]
    assert entries[0]["resource"]["name"][0]["family"] == "Patched"  # GET runs last
    assert client.get(f"/fhir/Patient/{doomed}").status_code == 410
    assert client.get("/fhir/Patient/client-id-1").json()["name"][0]["family"] == "Put"


def test_same_resource_twice_is_rejected(client):
    bundle = tx(
        {"resource": patient(id="twice"), "request": {"method": "PUT", "url": "Patient/twice"}},
        {"request": {"method": "DELETE", "url": "Patient/twice"}},
    )
    assert client.post("/fhir", json=bundle, headers=FHIR_JSON).status_code == 400


def test_if_match_in_a_transaction(client):
    pid = create(client, patient())["id"]
    bundle = tx(
        {
            "resource": patient(id=pid, family="New"),
            "request": {"method": "PUT", "url": f"Patient/{pid}", "ifMatch": 'W/"7"'},
        }
    )
    assert client.post("/fhir", json=bundle, headers=FHIR_JSON).status_code == 412


def test_batch_entries_succeed_or_fail_alone(client):
    bundle = tx(
        post(patient(family="Fine")),
        post(patient(gender="robot")),
        {"request": {"method": "GET", "url": "Patient/nope"}},
        kind="batch",
    )
    answer = client.post("/fhir", json=bundle, headers=FHIR_JSON)
    assert answer.status_code == 200
    body = answer.json()
    assert body["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in body["entry"]]
    assert statuses[0] == "201 Created"
    assert statuses[1].startswith("422") and statuses[2].startswith("404")
    assert body["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert stored_count(client) == 1


def test_bad_bundles_are_400(client):
    for body in (
        {"resourceType": "Patient"},
        {"resourceType": "Bundle", "type": "collection"},
        {"resourceType": "Bundle", "type": "transaction", "entry": {}},
        tx({"resource": patient()}),
        tx({"request": {"method": "POST", "url": "Patient"}}),
        tx({"request": {"method": "TRACE", "url": "Patient"}}),
    ):
        answer = client.post("/fhir", json=body, headers=FHIR_JSON)
        assert answer.status_code == 400, (body, answer.text)
    unknown = client.post("/fhir", json=tx(post({"resourceType": "Nonsense"})), headers=FHIR_JSON)
    assert unknown.status_code == 404


def test_a_bundle_past_the_entry_limit_is_413_before_any_entry_runs(client):
    limit = client.app.state.settings.max_bundle_entries
    empty = [{}] * (limit + 1)
    for kind in ("batch", "transaction"):
        answer = client.post("/fhir", json=tx(*empty, kind=kind), headers=FHIR_JSON)
        assert answer.status_code == 413, answer.text[:300]
        assert f"at most {limit}" in answer.json()["issue"][0]["diagnostics"]
    before = stored_count(client)
    over = [post(patient())] * (limit + 1)
    assert client.post("/fhir", json=tx(*over, kind="batch"), headers=FHIR_JSON).status_code == 413
    assert stored_count(client) == before


def test_conditional_references_and_creates_resolve_inside_the_transaction(client):
    pid = create(client, patient(identifier="TX-1"))["id"]
    bundle = tx(
        post(observation(patient_ref="Patient?identifier=urn:test:mrn|TX-1")),
        {
            "resource": patient(identifier="TX-1"),
            "request": {
                "method": "POST",
                "url": "Patient",
                "ifNoneExist": "identifier=urn:test:mrn|TX-1",
            },
        },
        {
            "resource": patient(identifier="TX-2"),
            "request": {"method": "PUT", "url": "Patient?identifier=urn:test:mrn|TX-2"},
        },
    )
    answer = client.post("/fhir", json=bundle, headers=FHIR_JSON)
    assert answer.status_code == 200, answer.text
    entries = answer.json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["201 Created", "200 OK", "201 Created"]
    assert f"/Patient/{pid}/" in entries[1]["response"]["location"]
    obs = client.get(entries[0]["response"]["location"].replace("http://testserver", "")).json()
    assert obs["subject"]["reference"] == f"Patient/{pid}"
    missing = tx(post(observation(patient_ref="Patient?identifier=urn:test:mrn|NOBODY")))
    assert client.post("/fhir", json=missing, headers=FHIR_JSON).status_code == 400


@pytest.mark.parametrize("reference", ["?identifier=urn:test:mrn|TX-1", "Nonsense?identifier=x"])
def test_a_conditional_reference_without_a_resource_type_is_400(client, reference):
    pid = create(client, patient(identifier="TX-1"))["id"]
    obs = observation(patient_ref=reference)
    put = {
        "resource": {**obs, "id": "typeless"},
        "request": {"method": "PUT", "url": "Observation/typeless"},
    }
    for entry in (post(obs), put):
        answer = client.post("/fhir", json=tx(entry), headers=FHIR_JSON)
        assert answer.status_code == 400, answer.text
        (issue,) = answer.json()["issue"]
        assert issue["code"] == "invalid"
        assert "needs a resource type: Type?criteria" in issue["diagnostics"]
        assert repr(reference) in issue["diagnostics"]
    batch = client.post("/fhir", json=tx(post(obs), put, kind="batch"), headers=FHIR_JSON)
    assert batch.status_code == 200
    for entry in batch.json()["entry"]:
        assert entry["response"]["status"] == "400"
        (issue,) = entry["response"]["outcome"]["issue"]
        assert issue["code"] == "invalid" and "Type?criteria" in issue["diagnostics"]
    assert client.get("/fhir/Observation").json().get("total", 0) == 0
    # Outside a Bundle no reference is resolved: the validator refuses it as it refuses any
    # reference that is not Type/id.
    made = create(client, observation(patient_ref=f"Patient/{pid}"))
    patch = [{"op": "replace", "path": "/subject/reference", "value": reference}]
    for answer in (
        client.post("/fhir/Observation", json=obs, headers=FHIR_JSON),
        client.put("/fhir/Observation/typeless", json={**obs, "id": "typeless"}, headers=FHIR_JSON),
        client.patch(
            f"/fhir/Observation/{made['id']}",
            json=patch,
            headers={"Content-Type": "application/json-patch+json"},
        ),
    ):
        assert answer.status_code == 422, answer.text
        assert [i["code"] for i in answer.json()["issue"]] == ["value"]


def test_a_conditional_delete_in_a_transaction_is_seen_by_its_conditional_create(client):
    old = create(client, patient(identifier="SEEN-1"))["id"]
    bundle = tx(
        {
            "resource": patient(identifier="SEEN-1", family="Replacement"),
            "request": {
                "method": "POST",
                "url": "Patient",
                "ifNoneExist": "identifier=urn:test:mrn|SEEN-1",
            },
        },
        {"request": {"method": "DELETE", "url": "Patient?identifier=urn:test:mrn|SEEN-1"}},
    )
    answer = client.post("/fhir", json=bundle, headers=FHIR_JSON)
    assert answer.status_code == 200, answer.text
    created, deleted = answer.json()["entry"]
    assert created["response"]["status"] == "201 Created"
    assert deleted["response"]["status"] == "204 No Content"
    assert client.get(f"/fhir/Patient/{old}").status_code == 410


def binary_patch(operations: list) -> dict:
    data = base64.b64encode(orjson.dumps(operations)).decode()
    return {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": data}


def located(entry: dict) -> str:
    return entry["response"]["location"].replace("http://testserver", "").split("/_history")[0]


def test_a_patch_entry_gets_its_references_resolved(client):
    old = create(client, patient(family="Old"))["id"]
    create(client, patient(identifier="PATCH-REF"))
    obs = create(client, observation(patient_ref=f"Patient/{old}"))["id"]
    new = "urn:uuid:7a1c0d4e-0000-4000-8000-000000000001"
    ops = [
        {"op": "replace", "path": "/subject", "value": {"reference": new}},
        {
            "op": "add",
            "path": "/performer",
            "value": [{"reference": "Patient?identifier=urn:test:mrn|PATCH-REF"}],
        },
    ]
    bundle = tx(
        post(patient(family="New"), new),
        {
            "resource": binary_patch(ops),
            "request": {"method": "PATCH", "url": f"Observation/{obs}"},
        },
    )
    answer = client.post("/fhir", json=bundle, headers=FHIR_JSON)
    assert answer.status_code == 200, answer.text
    made, patched = answer.json()["entry"]
    stored = client.get(f"/fhir/Observation/{obs}").json()
    assert stored["subject"]["reference"] == located(made)[len("/fhir/") :]
    assert stored["performer"][0]["reference"].startswith("Patient/")
    assert "?" not in stored["performer"][0]["reference"]
    assert patched["response"]["status"] == "200 OK"


def test_full_urls_are_replaced_in_uri_elements_and_narrative_links(client):
    doc = "urn:uuid:7a1c0d4e-0000-4000-8000-000000000002"
    div = (
        '<div xmlns="http://www.w3.org/1999/xhtml"><a href="urn:uuid:7a1c0d4e-0000-4000-8000-'
        '000000000002">the scan</a><img src="urn:uuid:7a1c0d4e-0000-4000-8000-000000000002"/>'
        "</div>"
    )
    reference = {
        "resourceType": "DocumentReference",
        "status": "current",
        "description": f"kept as written: {doc}",
        "text": {"status": "generated", "div": div},
        "content": [{"attachment": {"contentType": "text/plain", "url": doc}}],
    }
    binary = {"resourceType": "Binary", "contentType": "text/plain", "data": "aGk="}
    answer = client.post("/fhir", json=tx(post(reference), post(binary, doc)), headers=FHIR_JSON)
    assert answer.status_code == 200, answer.text
    made, stored_binary = answer.json()["entry"]
    target = located(stored_binary)[len("/fhir/") :]
    assert target.startswith("Binary/")
    stored = client.get(located(made)).json()
    assert stored["content"][0]["attachment"]["url"] == target
    assert f'href="{target}"' in stored["text"]["div"]
    assert f'src="{target}"' in stored["text"]["div"]
    assert "urn:uuid" not in stored["text"]["div"]
    assert stored["description"] == f"kept as written: {doc}"


def test_a_batch_answers_searches_as_a_top_level_search(client, anonymous, signed_in):
    own = create(client, patient(family="Searched"))["id"]
    other = create(client, patient(family="Searched"))["id"]
    create(client, observation(patient_ref=f"Patient/{other}"))
    search = {"request": {"method": "GET", "url": "Patient?family=Searched"}}
    answer = client.post("/fhir", json=tx(search, kind="batch"), headers=FHIR_JSON)
    assert answer.status_code == 200, answer.text
    (entry,) = answer.json()["entry"]
    assert entry["response"]["status"] == "200 OK"
    assert entry["resource"]["type"] == "searchset"
    assert {e["resource"]["id"] for e in entry["resource"]["entry"]} == {own, other}
    unknown = tx({"request": {"method": "GET", "url": "Patient?nonsense=1"}}, kind="batch")
    for prefer, status in (("", "400"), ("handling=lenient", "200 OK")):
        answer = client.post("/fhir", json=unknown, headers={**FHIR_JSON, "Prefer": prefer})
        assert answer.json()["entry"][0]["response"]["status"] == status, answer.text
    # A patient sees only their own record, as in a search at the top level.
    me = signed_in(role="patient", patient_id=own)
    observations = {"request": {"method": "GET", "url": "Observation"}}
    mine = anonymous.post(
        "/fhir", json=tx(search, observations, kind="batch"), headers={**me, **FHIR_JSON}
    )
    assert mine.status_code == 200, mine.text
    patients, found = mine.json()["entry"]
    assert [e["resource"]["id"] for e in patients["resource"]["entry"]] == [own]
    assert found["resource"].get("entry", []) == []
    # A role that may not search a type is refused that entry alone.
    pharmacist = signed_in(role="pharmacist")
    refused = anonymous.post(
        "/fhir", json=tx(observations, search, kind="batch"), headers={**pharmacist, **FHIR_JSON}
    )
    assert refused.status_code == 200, refused.text
    statuses = [e["response"]["status"] for e in refused.json()["entry"]]
    assert statuses == ["403", "200 OK"]


def test_a_transaction_search_sees_the_transactions_writes(client):
    bundle = tx(
        {"request": {"method": "GET", "url": "Patient?family=Fresh"}},
        post(patient(family="Fresh")),
    )
    answer = client.post("/fhir", json=bundle, headers=FHIR_JSON)
    assert answer.status_code == 200, answer.text
    found, made = answer.json()["entry"]
    assert [e["resource"]["id"] for e in found["resource"]["entry"]] == [
        located(made).split("/")[-1]
    ]


def test_an_unsupported_url_fails_only_its_batch_entry(client):
    pid = create(client, patient())["id"]
    bundle = tx(
        {"request": {"method": "GET", "url": f"Patient/{pid}/$everything"}},
        {"request": {"method": "GET", "url": "Patient/a/b/c/d/e"}},
        {"request": {"method": "POST", "url": "Patient"}},
        post(patient(family="StillMade")),
        {"request": {"method": "GET", "url": f"Patient/{pid}"}},
        kind="batch",
    )
    answer = client.post("/fhir", json=bundle, headers=FHIR_JSON)
    assert answer.status_code == 200, answer.text
    entries = answer.json()["entry"]
    assert [e["response"]["status"] for e in entries] == [
        "400",
        "400",
        "400",
        "201 Created",
        "200 OK",
    ]
    for entry in entries[:3]:
        assert entry["response"]["outcome"]["resourceType"] == "OperationOutcome"
        assert "fullUrl" not in entry
    assert "$everything" in entries[0]["response"]["outcome"]["issue"][0]["diagnostics"]
    assert entries[4]["resource"]["id"] == pid
    as_transaction = client.post("/fhir", json={**bundle, "type": "transaction"}, headers=FHIR_JSON)
    assert as_transaction.status_code == 400


def test_a_delete_of_what_never_existed_is_204_in_a_bundle(client):
    for kind in ("transaction", "batch"):
        bundle = tx(
            {"request": {"method": "DELETE", "url": "Patient/never-made"}},
            post(patient(family=f"Beside{kind}")),
            kind=kind,
        )
        answer = client.post("/fhir", json=bundle, headers=FHIR_JSON)
        assert answer.status_code == 200, answer.text
        statuses = [e["response"]["status"] for e in answer.json()["entry"]]
        assert statuses == ["204 No Content", "201 Created"]
    assert client.get("/fhir/Patient/never-made/_history").status_code == 404


def test_conditional_reads_in_a_bundle(client):
    made = client.post("/fhir/Patient", json=patient(), headers=FHIR_JSON)
    pid, modified = made.json()["id"], made.json()["meta"]["lastUpdated"]

    def read(**condition: str) -> dict:
        return {"request": {"method": "GET", "url": f"Patient/{pid}", **condition}}

    bundle = tx(
        read(ifNoneMatch='W/"1"'),
        read(ifNoneMatch='W/"2"'),
        read(ifModifiedSince=modified),
        read(ifModifiedSince="2001-01-01T00:00:00Z"),
        kind="batch",
    )
    for kind in ("batch", "transaction"):
        answer = client.post("/fhir", json={**bundle, "type": kind}, headers=FHIR_JSON)
        assert answer.status_code == 200, answer.text
        entries = answer.json()["entry"]
        statuses = [e["response"]["status"] for e in entries]
        assert statuses == ["304 Not Modified", "200 OK", "304 Not Modified", "200 OK"], kind
        assert [("resource" in e) for e in entries] == [False, True, False, True]
        assert entries[0]["response"]["etag"] == 'W/"1"'


def test_bundle_entries_answer_as_prefer_asks(client):
    doomed = create(client, patient())["id"]

    def entries(kind: str, prefer: str | None) -> list[dict]:
        bundle = tx(
            post(patient(family="Preferred")),
            {"request": {"method": "DELETE", "url": f"Patient/{doomed}"}},
            kind=kind,
        )
        headers = {**FHIR_JSON, **({"Prefer": prefer} if prefer else {})}
        answer = client.post("/fhir", json=bundle, headers=headers)
        assert answer.status_code == 200, answer.text
        return answer.json()["entry"]

    for kind in ("batch", "transaction"):
        for prefer in (None, "return=minimal"):
            assert not any(
                "resource" in e or "outcome" in e["response"] for e in entries(kind, prefer)
            )
        made, deleted = entries(kind, "return=representation")
        assert made["resource"]["name"][0]["family"] == "Preferred"
        assert made["resource"]["id"] == located(made).split("/")[-1]
        assert "resource" not in deleted
        made, deleted = entries(kind, "return=OperationOutcome")
        assert "resource" not in made
        (issue,) = made["response"]["outcome"]["issue"]
        assert issue["severity"] == "information" and issue["diagnostics"].startswith("Created")
        assert deleted["response"]["outcome"]["issue"][0]["code"] == "informational"


def test_a_failed_batch_entry_names_no_new_resource(client):
    bundle = tx(post(observation(patient_ref="Patient/x", status="bogus")), kind="batch")
    answer = client.post("/fhir", json=bundle, headers=FHIR_JSON)
    assert answer.status_code == 200, answer.text
    (entry,) = answer.json()["entry"]
    assert entry["response"]["status"] == "422"
    assert "fullUrl" not in entry and "location" not in entry["response"]
