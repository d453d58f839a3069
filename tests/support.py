"""Shared test infrastructure: where PostgreSQL and the sample data are, and what to do when not."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from vitasync_fhir.auth import accounts, oauth, tokens
from vitasync_fhir.config import Settings
from vitasync_fhir.db import Database
from vitasync_fhir.schema import metadata

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SYNTHEA = SHARED / "data" / "synthea-r4"
PG_SERVER = os.environ.get("VITASYNC_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432")
IN_CI = os.environ.get("CI", "").lower() == "true"
BASE_URL = "http://testserver"


def unavailable(reason: str) -> None:
    """Skip on a developer's machine; fail in CI, where every real service must be there."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: required)")
    pytest.skip(reason)


def pg_dsn(database: str) -> str:
    """A libpq address (for psycopg directly) of a database on the test server."""
    return f"{PG_SERVER}/{database}".replace("postgresql+psycopg://", "postgresql://")


def create_postgres_database(name: str) -> str:
    """A new, empty database of this name on the test server (dropped first if it exists)."""
    try:
        with psycopg.connect(pg_dsn("test"), autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as error:
        unavailable(f"PostgreSQL is not reachable at {PG_SERVER}: {error}")
    return f"{PG_SERVER}/{name}"


def drop_postgres_database(name: str) -> None:
    with psycopg.connect(pg_dsn("test"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_engines: dict[str, Engine] = {}


def empty_postgres(url: str) -> None:
    """Delete every row (much faster than TRUNCATE for the small tables of a test)."""
    engine = _engines.get(url) or create_engine(url, poolclass=NullPool)
    _engines[url] = engine
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(text(f'DELETE FROM "{table.name}"'))


def auth_headers(
    settings: Settings, *, role: str, scope: str | None = None, patient_id: str | None = None
) -> dict[str, str]:
    """Create an account with `role` in the settings' database and sign a token for it."""

    async def create(session):  # type: ignore[no-untyped-def]
        return await accounts.create_user(
            session,
            email=f"{role}-{uuid.uuid4().hex[:10]}@example.org",
            password="pw-" + uuid.uuid4().hex,
            role=role,
            verified=True,
            given="Test",
            family=role.capitalize(),
            fhir_id=patient_id,
        )

    async def main():  # type: ignore[no-untyped-def]
        database = Database(settings)
        try:
            return await database.run(create)
        finally:
            await database.dispose()

    user = asyncio.run(main())
    issued = tokens.issue_access_token(
        settings,
        subject=user.id,
        scope=scope or accounts.login_scope(user),
        fhir_user=user.fhir_user,
        patient=user.patient_id,
    )
    return {"Authorization": f"Bearer {issued.token}"}


def service_headers(settings: Settings, *, role: str = "admin") -> dict[str, str]:
    """A backend-service client with `role` (no FHIR resource of its own) and a system/ token."""
    public = ECKey.import_key(ec.generate_private_key(ec.SECP256R1()).public_key()).as_dict()
    client_id = f"test-service-{uuid.uuid4().hex[:10]}"

    async def register(session):  # type: ignore[no-untyped-def]
        await oauth.register_client(
            session,
            name=client_id,
            scope="system/*.cruds",
            jwks={"keys": [public]},
            role=role,
            client_id=client_id,
        )

    async def main() -> None:
        database = Database(settings)
        try:
            await database.run(register)
        finally:
            await database.dispose()

    asyncio.run(main())
    issued = tokens.issue_access_token(
        settings, subject=client_id, client_id=client_id, scope="system/*.cruds"
    )
    return {"Authorization": f"Bearer {issued.token}"}
