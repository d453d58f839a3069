"""Fixtures for the auth tests: an app with the auth routers mounted, accounts, clients, sign-in.

The routers are mounted here (in front of the FHIR routes, as app.py will) so these tests run
before the lead wires them into create_app.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from auth_helpers import PASSWORD
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vitasync_fhir.auth import accounts, oauth
from vitasync_fhir.config import Settings
from vitasync_fhir.db import Database
from vitasync_fhir.notify.tables import outbox


@pytest.fixture
def api(anonymous: TestClient) -> TestClient:
    """A client with no token: the auth tests sign in themselves."""
    return anonymous


@pytest.fixture
def run(settings: Settings) -> Callable[[Callable[[AsyncSession], Awaitable[object]]], object]:
    """Run async work on the test database in its own committed unit of work."""

    def runner(work: Callable[[AsyncSession], Awaitable[object]]) -> object:
        async def main() -> object:
            database = Database(settings)
            try:
                return await database.run(work)
            finally:
                await database.dispose()

        return asyncio.run(main())

    return runner


@pytest.fixture
def make_user(run):  # type: ignore[no-untyped-def]
    def factory(
        *,
        role: str,
        email: str | None = None,
        password: str = PASSWORD,
        verified: bool = True,
        fhir_id: str | None = None,
        given: str = "Test",
        family: str | None = None,
    ) -> accounts.User:
        address = email or f"{role}-{len(created)}@example.org"

        async def work(session: AsyncSession) -> accounts.User:
            return await accounts.create_user(
                session,
                email=address,
                password=password,
                role=role,
                verified=verified,
                given=given,
                family=family or role.capitalize(),
                fhir_id=fhir_id,
            )

        user = run(work)
        created.append(user)
        return user

    created: list = []
    return factory


@pytest.fixture
def make_client(run):  # type: ignore[no-untyped-def]
    def factory(**options: object) -> oauth.Client:
        async def work(session: AsyncSession) -> oauth.Client:
            return await oauth.register_client(session, **options)  # type: ignore[arg-type]

        return run(work)

    return factory


class Outbox:
    """The e-mails queued in notify's outbox table (the real path; no worker runs in tests)."""

    def __init__(self, run) -> None:  # type: ignore[no-untyped-def]
        self.run = run

    def sent(self) -> list[tuple[str, str, dict]]:
        async def work(session):  # type: ignore[no-untyped-def]
            rows = await session.execute(
                select(outbox.c.kind, outbox.c.recipient, outbox.c.payload).order_by(outbox.c.id)
            )
            return [(row.kind, row.recipient, row.payload) for row in rows]

        return self.run(work)

    def token(self, kind: str, address: str) -> str:
        key = {"registration": "verify_url", "password-reset": "reset_url"}[kind]
        for sent_kind, sent_to, payload in reversed(self.sent()):
            if sent_kind == kind and sent_to == address:
                return payload[key].split("token=", 1)[1]
        raise AssertionError(f"no {kind} e-mail to {address}")


@pytest.fixture
def mails(run) -> Outbox:  # type: ignore[no-untyped-def]
    return Outbox(run)
