"""Migration 0003_auth creates exactly the auth tables the models describe, and goes back down."""

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
from vitasync_fhir.auth import tables as auth_tables
from vitasync_fhir.db import sync_url
from vitasync_fhir.schema import metadata

PG_SERVER = os.environ.get("VITASYNC_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432")
AUTH_TABLES = {
    table.name
    for table in vars(auth_tables).values()
    if getattr(table, "metadata", None) is metadata
}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path, worker_id: str) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrations.sqlite3'}"
        return
    name = f"vitasync_auth_migrations_{worker_id}_{os.getpid()}"
    dsn = PG_SERVER.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(f"{dsn}/test", autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as error:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL is not reachable at {PG_SERVER}: {error} (CI=true: required)")
        pytest.skip(f"PostgreSQL is not reachable at {PG_SERVER}: {error}")
    yield f"{PG_SERVER}/{name}"
    with psycopg.connect(f"{dsn}/test", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def auth_differences(url: str) -> list:
    engine = create_engine(sync_url(url))
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diffs = compare_metadata(context, metadata)
    engine.dispose()

    def table_of(diff: object) -> str | None:
        item = diff[0] if isinstance(diff, list) else diff
        for part in item[1:]:
            name = getattr(part, "name", None) if not isinstance(part, str) else None
            table = getattr(part, "table", None)
            if table is not None and getattr(table, "name", None):
                return table.name
            if name in AUTH_TABLES:
                return name
            if isinstance(part, str) and part in AUTH_TABLES:
                return part
        return None

    return [d for d in diffs if table_of(d) in AUTH_TABLES]


def test_models_and_migration_agree(empty_url: str) -> None:
    assert len(AUTH_TABLES) == 8
    migrations.upgrade(empty_url)
    assert auth_differences(empty_url) == []


def test_migration_goes_down_and_up(empty_url: str) -> None:
    migrations.upgrade(empty_url)
    migrations.downgrade(empty_url, "0002_search_index")
    engine = create_engine(sync_url(empty_url))
    assert not AUTH_TABLES & set(inspect(engine).get_table_names())
    engine.dispose()
    migrations.upgrade(empty_url)
    engine = create_engine(sync_url(empty_url))
    assert AUTH_TABLES <= set(inspect(engine).get_table_names())
    engine.dispose()
