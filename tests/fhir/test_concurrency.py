"""Writers racing on one resource through a real server: one wins, none is lost."""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest
from factories import FHIR_JSON, patient
from live import served
from support import empty_postgres, service_headers

from vitasync_fhir.config import Settings

RACERS = 16


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request, tmp_path):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'race.sqlite3'}"
    else:
        url = request.getfixturevalue("postgres_url")
        empty_postgres(url)
    key = tmp_path / "signing.pem"
    env = {**os.environ, "VITASYNC_DATABASE_URL": url, "VITASYNC_SIGNING_KEY_FILE": str(key)}
    with served(cwd=tmp_path, env=env, workers=2) as base:
        settings = Settings(database_url=url, base_url=base, signing_key_file=key)
        yield httpx.Client(base_url=base, headers=service_headers(settings), timeout=30)


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
