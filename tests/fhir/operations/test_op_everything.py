"""Patient/$everything: the exact record, the resources it refers to, paging, filters, access."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from factories import FHIR_JSON, create, observation, patient
from fastapi.testclient import TestClient
from operations_support import populate
from support import BASE_URL, service_headers

from vitasync_fhir.app import create_app


def _pages(client: TestClient, url: str, **headers: str) -> list[dict]:
    pages = []
    while url:
        answer = client.get(url, headers=headers)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        assert page["type"] == "searchset"
        pages.append(page)
        url = next((link["url"] for link in page.get("link", []) if link["relation"] == "next"), "")
        assert len(pages) < 50
    return pages


def _split(pages: list[dict]) -> tuple[list[tuple[str, str]], set[tuple[str, str]]]:
    matches, includes = [], set()
    for page in pages:
        for entry in page.get("entry", []):
            key = (entry["resource"]["resourceType"], entry["resource"]["id"])
            assert entry["fullUrl"].endswith(f"/fhir/{key[0]}/{key[1]}")
            if entry["search"]["mode"] == "match":
                matches.append(key)
            else:
                assert entry["search"]["mode"] == "include"
                includes.add(key)
    return matches, includes


def test_the_record_and_what_it_refers_to(client: TestClient) -> None:
    people = populate(client)
    first = people.patients[0]
    matches, includes = _split(_pages(client, f"/fhir/Patient/{first}/$everything"))
    assert sorted(matches) == sorted(people.records[first])
    assert includes == {
        ("Practitioner", people.practitioner),
        ("Organization", people.organization),
    }


def test_paging_follows_next_links_without_gaps_or_repeats(client: TestClient) -> None:
    people = populate(client, patients=2)
    first = people.patients[0]
    for number in range(5):
        create(client, observation(patient_ref=f"Patient/{first}", value=60 + number))
    pages = _pages(client, f"/fhir/Patient/{first}/$everything?_count=2")
    assert len(pages) == 5  # 10 resources, 2 per page
    assert all(len([e for e in p["entry"] if e["search"]["mode"] == "match"]) == 2 for p in pages)
    matches, _ = _split(pages)
    assert len(matches) == len(set(matches)) == 10
    assert {m for m in matches if m[0] != "Observation"} == {
        k for k in people.records[first] if k[0] != "Observation"
    }


def test_type_and_since(client: TestClient) -> None:
    people = populate(client, patients=1)
    pid = people.patients[0]
    typed = _pages(client, f"/fhir/Patient/{pid}/$everything?_type=Observation,Practitioner")
    matches, includes = _split(typed)
    assert set(matches) == {k for k in people.records[pid] if k[0] == "Observation"}
    # The record's Practitioner (its Encounters name it): _type filters the whole record
    assert includes == {("Practitioner", people.practitioner)}
    encounters = _pages(client, f"/fhir/Patient/{pid}/$everything?_type=Encounter,Practitioner")
    matches, includes = _split(encounters)
    assert [m[0] for m in matches] == ["Encounter"]
    assert includes == {("Practitioner", people.practitioner)}
    condition = next(k for k in people.records[pid] if k[0] == "Condition")
    stamp = client.get(f"/fhir/Condition/{condition[1]}").json()["meta"]["lastUpdated"]
    mark = datetime.fromisoformat(stamp.replace("Z", "+00:00")) + timedelta(milliseconds=1)
    time.sleep(0.01)
    late = create(client, observation(patient_ref=f"Patient/{pid}", value=99))["id"]
    assert len(_split(_pages(client, f"/fhir/Patient/{pid}/$everything"))[0]) == 6
    recent = client.get(f"/fhir/Patient/{pid}/$everything", params={"_since": mark.isoformat()})
    matches, _ = _split([recent.json()])
    assert matches == [("Observation", late)]


def test_access_and_errors(client: TestClient, signed_in) -> None:  # type: ignore[no-untyped-def]
    people = populate(client, patients=2)
    mine, theirs = people.patients
    own = signed_in(role="patient", patient_id=mine)
    matches, _ = _split(_pages(client, f"/fhir/Patient/{mine}/$everything", **own))
    assert set(matches) == people.records[mine]
    other = client.get(f"/fhir/Patient/{theirs}/$everything", headers=own)
    assert other.status_code == 404
    assert other.json()["issue"][0]["code"] == "not-found"
    pharmacist = signed_in(role="pharmacist")
    seen, _ = _split(_pages(client, f"/fhir/Patient/{mine}/$everything", **pharmacist))
    assert set(seen) == {("Patient", mine)}  # no Observation, Encounter or Condition for them
    assert client.get("/fhir/Patient/nobody/$everything").status_code == 404
    bad = client.get(f"/fhir/Patient/{mine}/$everything?start=soon")
    assert bad.status_code == 400
    assert bad.json()["issue"][0]["expression"] == ["start"]
    assert client.get(f"/fhir/Patient/{mine}/$everything?_type=Nope").status_code == 400
    assert client.get(f"/fhir/Patient/{mine}/$everything?_since=yesterday").status_code == 400
    assert client.get(f"/fhir/Patient/{mine}/$everything?_cursor=xyz").status_code == 400
    client.delete(f"/fhir/Patient/{theirs}")
    assert client.get(f"/fhir/Patient/{theirs}/$everything").status_code == 410
    trail = client.get("/fhir/AuditEvent", params={"_count": 1000}).json().get("entry", [])
    assert any(e["resource"]["subtype"][0]["code"] == "operation" for e in trail)


def test_resources_the_record_refers_to_are_not_crowded_out(settings) -> None:  # type: ignore[no-untyped-def]
    """References to the record's own resources used up the page's include limit before the
    Practitioner an Observation names was reached: it was left out of every page, unsaid."""
    small = settings.model_copy(update={"max_page_size": 5})
    with TestClient(create_app(small), base_url=BASE_URL) as api:
        api.headers.update(service_headers(small))
        pid = create(api, patient(family="Crowded"))["id"]
        ref = f"Patient/{pid}"
        siblings = [create(api, observation(patient_ref=ref))["id"] for _ in range(6)]
        doc = create(api, {"resourceType": "Practitioner", "name": [{"family": "Far"}]})["id"]
        named = observation(patient_ref=ref)
        named["hasMember"] = [{"reference": f"Observation/{s}"} for s in siblings]
        named["performer"] = [{"reference": f"Practitioner/{doc}"}]
        create(api, named)
        _, includes = _split(_pages(api, f"/fhir/Patient/{pid}/$everything?_count=5"))
        assert ("Practitioner", doc) in includes


def test_type_naming_only_what_the_record_refers_to(client: TestClient) -> None:
    pid = create(client, patient(family="Meds"))["id"]
    med = create(client, {"resourceType": "Medication", "code": {"text": "Aspirin"}})["id"]
    create(client, {"resourceType": "Medication", "code": {"text": "Not theirs"}})
    request = {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": f"Patient/{pid}"},
        "medicationReference": {"reference": f"Medication/{med}"},
    }
    create(client, request)
    matches, includes = _split(_pages(client, f"/fhir/Patient/{pid}/$everything?_type=Medication"))
    assert matches == [] and includes == {("Medication", med)}


def test_everything_is_an_operation_that_may_be_posted(client: TestClient) -> None:
    people = populate(client, patients=1)
    pid = people.patients[0]
    parameters = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "_type", "valueString": "Observation"},
            {"name": "_count", "valueInteger": 1},
        ],
    }
    answer = client.post(f"/fhir/Patient/{pid}/$everything", json=parameters, headers=FHIR_JSON)
    assert answer.status_code == 200, answer.text
    first = answer.json()
    assert [e["resource"]["resourceType"] for e in first["entry"]] == ["Observation"]
    rest = _pages(client, next(k["url"] for k in first["link"] if k["relation"] == "next"))
    matches, _ = _split([first, *rest])
    assert set(matches) == {k for k in people.records[pid] if k[0] == "Observation"}
    plain = client.post(f"/fhir/Patient/{pid}/$everything")
    assert plain.status_code == 200 and plain.json()["total"] == len(people.records[pid])
    bad = {"resourceType": "Parameters", "parameter": [{"name": "_count"}]}
    wrong = client.post(f"/fhir/Patient/{pid}/$everything", json=bad, headers=FHIR_JSON)
    assert wrong.status_code == 400 and wrong.json()["resourceType"] == "OperationOutcome"
