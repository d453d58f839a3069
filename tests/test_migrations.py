"""The alembic migrations build exactly the tables the code declares; each one undoes cleanly."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect
from support import create_postgres_database, drop_postgres_database

from vitasync_fhir import migrations
from vitasync_fhir.db import sync_url
from vitasync_fhir.schema import metadata


def test_models_and_migrations_agree(database_url):
    engine = create_engine(sync_url(database_url))
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request, tmp_path, worker_id) -> Iterator[str]:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'roundtrip.sqlite3'}"
        return
    name = f"vitasync_migrations_{worker_id}_{os.getpid()}"
    yield create_postgres_database(name)
    drop_postgres_database(name)


def _columns(url: str) -> set[tuple[str, str]]:
    """Every (table, column) of the database: a migration may add a table or a column."""
    engine = create_engine(sync_url(url))
    try:
        found = inspect(engine)
        return {
            (table, column["name"])
            for table in found.get_table_names()
            if table != "alembic_version"
            for column in found.get_columns(table)
        }
    finally:
        engine.dispose()


def test_each_migration_goes_down_and_up_again(empty_database):
    url = empty_database
    script = ScriptDirectory.from_config(migrations.alembic_config(url))
    revisions = [r.revision for r in script.walk_revisions()]  # head first
    migrations.upgrade(url)
    assert {(t.name, c.name) for t in metadata.tables.values() for c in t.columns} == _columns(url)
    seen = [_columns(url)]
    for below in [*revisions[1:], "base"]:
        migrations.downgrade(url, below)
        now = _columns(url)
        assert now < seen[-1], f"downgrading to {below} removed no table or column"
        seen.append(now)
    assert seen[-1] == set()
    for revision, tables in zip(reversed(revisions), reversed(seen[:-1]), strict=True):
        migrations.upgrade(url, revision)
        assert _columns(url) == tables, revision
