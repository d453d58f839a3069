"""What a search may cost, and what it says when a limit applies: values and parameters work up
to their caps and answer 400 past them (never a 503), included resources and `_include:iterate`
rounds are capped with a warning, and links show the page size used. Each test makes its own
data on a fresh SQLite or PostgreSQL database, on a server whose largest page is small."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from sqlalchemy import text
from support import BASE_URL

from vitasync_fhir import errors
from vitasync_fhir.config import Settings
from vitasync_fhir.db import Database
from vitasync_fhir.fhir.search.params import MAX_CRITERIA, MAX_VALUES

JSON = {"Content-Type": "application/fhir+json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
PAGE = 5  # the largest page, and so the most included resources


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings with a small page, so a few resources pass the include cap."""
    return settings.model_copy(update={"max_page_size": PAGE})


def create(client: TestClient, resource: dict) -> dict:
    answer = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=JSON)
    assert answer.status_code == 201, answer.text
    return answer.json()


def observation(subject: str, **extra: object) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "urn:test:codes", "code": "x250"}]},
        "subject": {"reference": subject},
        **extra,
    }


def search(client: TestClient, path: str, pairs: list[tuple[str, str]]) -> dict:
    # POST: a URL carrying a thousand values is longer than many clients and proxies allow
    answer = client.post(f"/fhir/{path}/_search", content=urlencode(pairs), headers=FORM)
    assert answer.status_code == 200, answer.text
    return answer.json()


def matches(bundle: dict) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def warnings(bundle: dict) -> list[dict]:
    return [
        issue
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == "outcome"
        for issue in e["resource"]["issue"]
    ]


# == many values and parameters ===================================================================


def test_a_thousand_values_of_one_parameter_work(client: TestClient) -> None:
    patient = create(client, {"resourceType": "Patient"})
    found = create(
        client,
        observation(f"Patient/{patient['id']}", valueQuantity={"value": 250}),
    )
    listed = [f"x{n}" for n in range(MAX_VALUES)]
    assert matches(search(client, "Observation", [("code", ",".join(listed))])) == [found["id"]]
    systems = ",".join(f"urn:test:codes|{code}" for code in listed)
    assert matches(search(client, "Observation", [("code", systems)])) == [found["id"]]
    subjects = ",".join(f"Patient/{patient['id'] if n == 7 else n}" for n in range(MAX_VALUES))
    assert matches(search(client, "Observation", [("subject", subjects)])) == [found["id"]]
    numbers = ",".join(str(n) for n in range(MAX_VALUES))  # ranges: no IN list
    assert matches(search(client, "Observation", [("value-quantity", numbers)])) == [found["id"]]


def test_as_many_parameters_as_the_cap_work(client: TestClient) -> None:
    patient = create(client, {"resourceType": "Patient"})
    found = create(client, observation(f"Patient/{patient['id']}"))
    half = MAX_CRITERIA // 2
    pairs = [("status", "final")] * half + [("code", "x250")] * half
    assert matches(search(client, "Observation", pairs)) == [found["id"]]


@pytest.mark.parametrize(
    "pairs",
    [
        [("code", ",".join(f"x{n}" for n in range(MAX_VALUES + 1)))],
        [("_count", "1")] + [("status", "final")] * MAX_CRITERIA + [("code", "x1")],
        [("status", "final")] * MAX_VALUES,
    ],
    ids=["values", "parameters", "repeated"],
)
def test_more_than_the_cap_is_a_400_naming_the_parameter(
    client: TestClient, pairs: list[tuple[str, str]]
) -> None:
    for handling in ("strict", "lenient"):
        answer = client.post(
            "/fhir/Observation/_search",
            content=urlencode(pairs),
            headers={**FORM, "Prefer": f"handling={handling}"},
        )
        assert answer.status_code == 400, answer.text
        issue = answer.json()["issue"][0]
        assert issue["code"] == "too-costly"
        assert issue["expression"] == [pairs[-1][0]]


_TOO_DEEP = {
    "sqlite": "SELECT 1 WHERE " + " OR ".join(["1 = 1"] * 2000),
    "postgresql": "SELECT 1 WHERE " + "NOT " * 9000 + "true",
}


@pytest.fixture
def probe(settings: Settings) -> Iterator[TestClient]:
    """An app with the server's error handlers and one route that sends the database a statement
    too deep for it."""
    app = FastAPI()
    errors.install(app)
    database = Database(settings)

    @app.get("/fhir/deep")
    async def deep(request: Request) -> None:
        async with database.sessions() as session:
            dialect = (await session.connection()).dialect.name
            await session.execute(text(_TOO_DEEP[dialect]))

    with TestClient(app, base_url=BASE_URL) as client:
        yield client


def test_a_statement_too_deep_for_the_database_is_a_400_not_a_503(probe: TestClient) -> None:
    answer = probe.get("/fhir/deep")
    assert answer.status_code == 400, answer.text
    assert "Retry-After" not in answer.headers
    assert answer.json()["issue"][0]["code"] == "too-costly"


# == included resources ===========================================================================


def test_included_resources_past_the_cap_are_reported(client: TestClient) -> None:
    patient = create(client, {"resourceType": "Patient", "name": [{"family": "Bulk"}]})
    for _ in range(PAGE + 3):
        create(client, observation(f"Patient/{patient['id']}"))
    bundle = search(
        client, "Patient", [("_id", patient["id"]), ("_revinclude", "Observation:subject")]
    )
    included = [e for e in bundle["entry"] if e["search"]["mode"] == "include"]
    assert len(included) == PAGE
    (issue,) = warnings(bundle)
    assert issue["severity"] == "warning" and issue["code"] == "incomplete"
    assert issue["expression"] == ["_revinclude"]
    assert "Observation:subject" in issue["diagnostics"]

    exactly = create(client, {"resourceType": "Patient", "name": [{"family": "Few"}]})
    for _ in range(PAGE):
        create(client, observation(f"Patient/{exactly['id']}"))
    bundle = search(
        client, "Patient", [("_id", exactly["id"]), ("_revinclude", "Observation:subject")]
    )
    assert len([e for e in bundle["entry"] if e["search"]["mode"] == "include"]) == PAGE
    assert warnings(bundle) == []


def test_iterate_rounds_past_the_cap_are_reported(client: TestClient) -> None:
    patient = create(client, {"resourceType": "Patient"})
    chain: list[str] = []
    for _ in range(4):  # each Observation has the one made before it as member
        extra = {"hasMember": [{"reference": f"Observation/{chain[-1]}"}]} if chain else {}
        chain.append(create(client, observation(f"Patient/{patient['id']}", **extra))["id"])
    pairs = [("_id", chain[-1]), ("_include:iterate", "Observation:has-member")]
    bundle = search(client, "Observation", pairs)
    assert len([e for e in bundle["entry"] if e["search"]["mode"] == "include"]) == 3
    assert warnings(bundle) == []  # the chain ended within the rounds

    for _ in range(4):
        extra = {"hasMember": [{"reference": f"Observation/{chain[-1]}"}]}
        chain.append(create(client, observation(f"Patient/{patient['id']}", **extra))["id"])
    bundle = search(client, "Observation", [("_id", chain[-1]), pairs[1]])
    assert len([e for e in bundle["entry"] if e["search"]["mode"] == "include"]) == 5
    (issue,) = warnings(bundle)
    assert issue["severity"] == "warning" and issue["code"] == "incomplete"
    assert issue["expression"] == ["_include:iterate"]


# == _id:not and the page size in links ==========================================================


def test_id_not_finds_every_other_resource(client: TestClient) -> None:
    kept = [create(client, {"resourceType": "Patient"})["id"] for _ in range(3)]
    answer = client.get("/fhir/Patient", params={"_id:not": kept[0], "_count": "5"})
    assert answer.status_code == 200, answer.text
    assert sorted(matches(answer.json())) == sorted(kept[1:])
    both = client.get("/fhir/Patient", params={"_id:not": f"{kept[0]},{kept[1]}"})
    assert matches(both.json()) == [kept[2]]


def test_links_show_the_page_size_used(client: TestClient) -> None:
    for _ in range(PAGE + 1):
        create(client, {"resourceType": "Patient"})
    answer = client.get("/fhir/Patient", params={"_count": "2000"})
    assert answer.status_code == 200, answer.text
    links = {link["relation"]: link["url"] for link in answer.json()["link"]}
    assert f"_count={PAGE}" in links["self"] and "2000" not in links["self"]
    assert f"_count={PAGE}" in links["next"]
