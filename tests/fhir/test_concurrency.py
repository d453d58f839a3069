"""Writers racing on one resource through a real server: one wins, none is lost."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from factories import FHIR_JSON, patient
from live import serving
from support import service_headers

RACERS = 16


@pytest.fixture
def server(database_url, tmp_path):  # type: ignore[no-untyped-def]
    with serving(database_url, tmp_path) as settings:
        yield httpx.Client(
            base_url=settings.base_url, headers=service_headers(settings), timeout=30
        )


async def _race(server: httpx.Client, pid: str, *, if_match: str | None) -> list[int]:
    async with httpx.AsyncClient(
        base_url=server.base_url, headers=server.headers, timeout=30
    ) as http:
        headers = {**FHIR_JSON, **({"If-Match": if_match} if if_match else {})}
        answers = await asyncio.gather(
            *(
                http.put(
                    f"/fhir/Patient/{pid}",
                    json=patient(id=pid, family=f"Writer{n}"),
                    headers=headers,
                )
                for n in range(RACERS)
            )
        )
    return [a.status_code for a in answers]


def test_if_match_race_has_exactly_one_winner(server):
    created = server.post("/fhir/Patient", json=patient(), headers=FHIR_JSON).json()
    statuses = asyncio.run(_race(server, created["id"], if_match='W/"1"'))
    assert sorted(statuses) == [200] + [412] * (RACERS - 1)
    history = server.get(f"/fhir/Patient/{created['id']}/_history").json()
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]


def test_blind_writers_each_get_their_own_version(server):
    created = server.post("/fhir/Patient", json=patient(), headers=FHIR_JSON).json()
    statuses = asyncio.run(_race(server, created["id"], if_match=None))
    assert set(statuses) <= {200, 409}
    winners = statuses.count(200)
    history = server.get(f"/fhir/Patient/{created['id']}/_history?_count=100").json()
    versions = [int(e["resource"]["meta"]["versionId"]) for e in history["entry"]]
    assert versions == list(range(winners + 1, 0, -1))
    families = [e["resource"]["name"][0]["family"] for e in history["entry"][:-1]]
    assert len(set(families)) == winners
    current = server.get(f"/fhir/Patient/{created['id']}").json()
    assert current["meta"]["versionId"] == str(winners + 1)


def test_racing_creates_of_one_new_id_make_one_resource(server):
    """PUT to an id nobody has used yet, sixteen at once: the insert that skips a conflict
    (fhir/bulk.py on PostgreSQL) lets exactly one create it; the others update it or give up."""
    pid = "race-new-id"
    statuses = asyncio.run(_race(server, pid, if_match=None))
    assert statuses.count(201) == 1 and set(statuses) <= {200, 201, 409}
    history = server.get(f"/fhir/Patient/{pid}/_history?_count=100").json()
    versions = [int(e["resource"]["meta"]["versionId"]) for e in history["entry"]]
    assert versions == list(range(statuses.count(200) + 1, 0, -1))
