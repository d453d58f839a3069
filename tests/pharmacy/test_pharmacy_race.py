"""Pharmacies filling one prescription at the same moment, through a real server on PostgreSQL:
exactly the fills that remain succeed, through /fhir and /api alike, and no more are stored."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from factories import FHIR_JSON
from live import serving
from pharmacy_helpers import dispense, prescription
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool
from support import service_headers

from vitasync_fhir.db import sync_url

RACERS = 16


@pytest.fixture
def server(database_url, tmp_path):  # type: ignore[no-untyped-def]
    with serving(database_url, tmp_path) as settings:
        pharmacies = [service_headers(settings, role="pharmacist") for _ in range(2)]
        admin = httpx.Client(
            base_url=settings.base_url, headers=service_headers(settings), timeout=60
        )
        yield admin, pharmacies, database_url


async def _race(base: str, pharmacies: list[dict], rx_id: str, pid: str) -> list[tuple[str, int]]:
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:

        def one(n: int):  # type: ignore[no-untyped-def]
            headers = pharmacies[n % 2]
            if n % 2:
                return http.post(f"/api/prescriptions/{rx_id}/fill", json={}, headers=headers)
            return http.post(
                "/fhir/MedicationDispense",
                json=dispense(request_id=rx_id, patient_id=pid),
                headers={**FHIR_JSON, **headers},
            )

        answers = await asyncio.gather(*(one(n) for n in range(RACERS)))
    return [(a.request.url.path, a.status_code) for a in answers]


def _stored_dispenses(url: str, rx_id: str) -> int:
    engine = create_engine(sync_url(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT content FROM resources WHERE resource_type = 'MedicationDispense'"
                    " AND deleted = false"
                )
            ).scalars()
            return sum(f"MedicationRequest/{rx_id}" in row for row in rows)
    finally:
        engine.dispose()


def test_parallel_fills_never_exceed_what_remains(server):
    admin, pharmacies, url = server
    pid = admin.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=FHIR_JSON).json()[
        "id"
    ]
    rx = admin.post(
        "/fhir/MedicationRequest",
        json=prescription(patient_id=pid, repeats=2),
        headers=FHIR_JSON,
    ).json()
    results = asyncio.run(_race(str(admin.base_url), pharmacies, rx["id"], pid))
    statuses = [status for _, status in results]
    assert set(statuses) <= {200, 201, 409}, results
    assert sum(s in (200, 201) for s in statuses) == 3, results
    assert statuses.count(409) == RACERS - 3
    assert _stored_dispenses(url, rx["id"]) == 3
    final = admin.get(f"/fhir/MedicationRequest/{rx['id']}").json()
    assert final["status"] == "completed" and final["meta"]["versionId"] == "2"
