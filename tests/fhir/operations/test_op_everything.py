"""Patient/$everything: the exact record, the resources it refers to, paging, filters, access."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from factories import create, observation
from fastapi.testclient import TestClient
from operations_support import populate


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
    assert includes == set()  # Observations refer to no Practitioner here
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
    bad = client.get(f"/fhir/Patient/{mine}/$everything?start=2020-01-01")
    assert bad.status_code == 400
    assert bad.json()["issue"][0]["expression"] == ["start"]
    assert client.get(f"/fhir/Patient/{mine}/$everything?_type=Nope").status_code == 400
    assert client.get(f"/fhir/Patient/{mine}/$everything?_since=yesterday").status_code == 400
    assert client.get(f"/fhir/Patient/{mine}/$everything?_cursor=xyz").status_code == 400
    client.delete(f"/fhir/Patient/{theirs}")
    assert client.get(f"/fhir/Patient/{theirs}/$everything").status_code == 410
    trail = client.get("/fhir/AuditEvent", params={"_count": 1000}).json().get("entry", [])
    assert any(e["resource"]["subtype"][0]["code"] == "operation" for e in trail)
