"""Fixtures for documents: a prescription with its patient and prescriber; accounts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
from documents_helpers import PASSWORD, medication_request, patient, practitioner
from factories import create
from fastapi.testclient import TestClient

from vitasync_fhir.auth import accounts
from vitasync_fhir.config import Settings
from vitasync_fhir.db import Database


@pytest.fixture
def prescription(client: TestClient) -> dict:
    """Ids of a MedicationRequest, its Patient and its Practitioner (made by an admin service)."""
    who = create(client, patient())
    doctor = create(client, practitioner())
    request = create(client, medication_request(patient_id=who["id"], practitioner_id=doctor["id"]))
    return {"id": request["id"], "patient": who["id"], "practitioner": doctor["id"]}


@pytest.fixture
def make_account(settings: Settings) -> Callable[..., accounts.User]:
    """A verified account with PASSWORD, in the test database."""

    def factory(*, role: str, fhir_id: str | None = None) -> accounts.User:
        async def work(session):  # type: ignore[no-untyped-def]
            return await accounts.create_user(
                session,
                email=f"{role}-{uuid.uuid4().hex[:8]}@example.org",
                password=PASSWORD,
                role=role,
                verified=True,
                given="Test",
                family=role.capitalize(),
                fhir_id=fhir_id,
            )

        async def main():  # type: ignore[no-untyped-def]
            database = Database(settings)
            try:
                return await database.run(work)
            finally:
                await database.dispose()

        return asyncio.run(main())

    return factory
