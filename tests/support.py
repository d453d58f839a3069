"""Shared test infrastructure: where PostgreSQL and the sample data are, and what to do when not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

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


_engines: dict[str, Engine] = {}


def empty_postgres(url: str) -> None:
    """Delete every row (much faster than TRUNCATE for the small tables of a test)."""
    engine = _engines.get(url) or create_engine(url, poolclass=NullPool)
    _engines[url] = engine
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(text(f'DELETE FROM "{table.name}"'))
