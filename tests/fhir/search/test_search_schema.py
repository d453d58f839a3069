"""The search tables as migrated are the search tables as modelled, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from vitasync_fhir import migrations
from vitasync_fhir.db import sync_url
from vitasync_fhir.schema import metadata

PG_SERVER = os.environ.get("VITASYNC_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432")
SEARCH_TABLES = {
    "search_string",
    "search_token",
    "search_date",
    "search_number",
    "search_quantity",
    "search_reference",
    "search_uri",
    "search_composite",
    "resource_compartments",
}


def _plain_dsn(database: str) -> str:
    return f"{PG_SERVER}/{database}".replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'schema.sqlite3'}"
        return
    worker = getattr(request.config, "workerinput", {}).get("workerid", "main")
    name = f"vitasync_search_schema_{worker}"
    try:
        admin = psycopg.connect(_plain_dsn("test"), autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL is not reachable at {PG_SERVER}: {error} (CI=true: required)")
        pytest.skip(f"PostgreSQL is not reachable at {PG_SERVER}: {error}")
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"{PG_SERVER}/{name}"
    with psycopg.connect(_plain_dsn("test"), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _differences(url: str) -> list:
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(context, metadata)
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = create_engine(sync_url(url))
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migrations_match_the_models_and_downgrade(empty_url: str) -> None:
    migrations.upgrade(empty_url)
    assert SEARCH_TABLES <= _tables(empty_url)
    search_diffs = [d for d in _differences(empty_url) if _touches_search(d)]
    assert search_diffs == []

    migrations.downgrade(empty_url, "0001_resources")
    assert not SEARCH_TABLES & _tables(empty_url)
    migrations.upgrade(empty_url, "0002_search_index")
    assert SEARCH_TABLES <= _tables(empty_url)
    migrations.downgrade(empty_url, "base")
    assert _tables(empty_url) <= {"alembic_version"}


def _touches_search(diff: object) -> bool:
    text = repr(diff)
    return any(name in text for name in SEARCH_TABLES)
