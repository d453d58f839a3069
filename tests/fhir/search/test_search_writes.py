"""Search while data changes: the index follows every write, pages stay whole while resources are
added, conditional interactions use the engine, `reindex` rebuilds, and the access hook reaches
every selection. Each test makes its own data on a fresh SQLite or PostgreSQL database."""

from __future__ import annotations

import asyncio

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, delete

from vitasync_fhir.config import Settings
from vitasync_fhir.db import Database, sync_url
from vitasync_fhir.fhir.search.index import reindex
from vitasync_fhir.fhir.search.service import Search, search
from vitasync_fhir.fhir.search.tables import INDEX_TABLES, resource_compartments

JSON = {"Content-Type": "application/fhir+json"}


def create(client: TestClient, resource: dict, **headers: str) -> dict:
    answer = client.post(
        f"/fhir/{resource['resourceType']}", json=resource, headers={**JSON, **headers}
    )
    assert answer.status_code in (200, 201), answer.text
    return answer.json()


def patient(family: str, **extra: object) -> dict:
    return {"resourceType": "Patient", "name": [{"family": family}], **extra}


def ids(client: TestClient, path: str, **params: str) -> list[str]:
    answer = client.get(f"/fhir/{path}", params=params)
    assert answer.status_code == 200, answer.text
    return [
        e["resource"]["id"]
        for e in answer.json().get("entry", [])
        if e["search"]["mode"] == "match"
    ]


def next_link(bundle: dict) -> str | None:
    return next((x["url"] for x in bundle.get("link", []) if x["relation"] == "next"), None)


def test_pages_stay_whole_while_resources_are_added(client: TestClient) -> None:
    originals = {create(client, patient(f"Page{n}"))["id"] for n in range(10)}
    for sort in ("-_lastUpdated", "_id", "family"):
        first = client.get("/fhir/Patient", params={"_sort": sort, "_count": "4"}).json()
        seen = [e["resource"]["id"] for e in first["entry"]]
        added = {create(client, patient("Aaa"))["id"], create(client, patient("Zzz"))["id"]}
        url = next_link(first)
        while url:
            page = client.get(url.removeprefix("http://testserver")).json()
            seen += [e["resource"]["id"] for e in page.get("entry", [])]
            url = next_link(page)
        assert len(seen) == len(set(seen)), sort  # nothing twice
        assert originals <= set(seen), sort  # nothing skipped
        originals |= added


def test_the_index_follows_updates_and_deletes(client: TestClient) -> None:
    alpha = create(client, patient("Alpha", birthDate="1990-01-01"))
    observation = create(
        client,
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
            "subject": {"reference": f"Patient/{alpha['id']}"},
        },
    )
    assert ids(client, "Patient", name="alpha") == [alpha["id"]]
    assert ids(client, f"Patient/{alpha['id']}/Observation") == [observation["id"]]
    alpha["name"] = [{"family": "Beta"}]
    answer = client.put(f"/fhir/Patient/{alpha['id']}", json=alpha, headers=JSON)
    assert answer.status_code == 200, answer.text
    assert ids(client, "Patient", name="alpha") == []
    assert ids(client, "Patient", name="beta") == [alpha["id"]]
    assert ids(client, "Observation", **{"subject:Patient.name": "beta"}) == [observation["id"]]
    assert client.delete(f"/fhir/Observation/{observation['id']}").status_code in (200, 204)
    assert ids(client, "Observation", code="8302-2") == []
    assert ids(client, "Patient", **{"_has:Observation:patient:code": "8302-2"}) == []
    assert ids(client, f"Patient/{alpha['id']}/Observation") == []


def test_conditional_interactions_use_the_search(client: TestClient) -> None:
    first = create(client, patient("Cond", identifier=[{"system": "urn:test", "value": "a,1"}]))
    again = client.post(
        "/fhir/Patient",
        json=patient("Cond"),
        headers={**JSON, "If-None-Exist": r"identifier=urn:test|a\,1"},
    )
    assert again.status_code == 200, again.text
    assert ids(client, "Patient", family="cond") == [first["id"]]
    bad = client.post(
        "/fhir/Patient", json=patient("Cond"), headers={**JSON, "If-None-Exist": "nonsense=1"}
    )
    assert bad.status_code == 400
    assert "nonsense" in bad.text


def test_reindex_rebuilds_the_index(client: TestClient, settings: Settings) -> None:
    created = create(client, patient("Reindexed", gender="other"))
    engine = create_engine(sync_url(settings.database_url))
    with engine.begin() as conn:
        for table in (*INDEX_TABLES.values(), resource_compartments):
            conn.execute(delete(table))
    engine.dispose()
    assert ids(client, "Patient", gender="other") == []

    async def rebuild() -> int:
        database = Database(settings)
        try:
            return await reindex(database, batch=1)
        finally:
            await database.dispose()

    assert asyncio.run(rebuild()) >= 1
    assert ids(client, "Patient", gender="other") == [created["id"]]
    assert ids(client, f"Patient/{created['id']}/Patient") == [created["id"]]


def test_the_restrict_hook_reaches_includes_chains_and_reverse_chains(
    client: TestClient, settings: Settings
) -> None:
    mine = create(client, patient("Mine"))
    theirs = create(client, patient("Theirs"))
    for owner in (mine, theirs):
        create(
            client,
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
                "subject": {"reference": f"Patient/{owner['id']}"},
            },
        )

    def only_mine(r, types):  # type: ignore[no-untyped-def]
        # what an access layer would do: Patients other than mine are invisible
        return (r.c.resource_type != "Patient") | (r.c.id == mine["id"])

    async def run(path: str, pairs: list[tuple[str, str]]) -> set[str]:
        import orjson

        database = Database(settings)
        try:
            async with database.sessions() as session:
                body = await search(
                    session, settings, Search((path,), pairs, path), restrict=only_mine
                )
        finally:
            await database.dispose()
        return {
            f"{e['resource']['resourceType']}/{e['resource']['id']}"
            for e in orjson.loads(body).get("entry", [])
        }

    included = asyncio.run(run("Observation", [("_include", "Observation:patient")]))
    assert f"Patient/{theirs['id']}" not in included and f"Patient/{mine['id']}" in included
    assert asyncio.run(run("Observation", [("patient.name", "theirs")])) == set()
    assert asyncio.run(run("Patient", [("_has:Observation:patient:code", "8302-2")])) == {
        f"Patient/{mine['id']}"
    }
    assert asyncio.run(run("Patient", [])) == {f"Patient/{mine['id']}"}
