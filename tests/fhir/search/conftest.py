"""A server loaded once per module with the small Synthea bundles and the hand-made extras, on
SQLite and on PostgreSQL.

Searches that only read share this loaded server (loading it for every test would take minutes);
tests that write use the `client` fixture of tests/conftest.py and make their own data.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from search_support import BASE_URL, BUNDLES, Loaded, load_bundle, load_extras, postgres_database
from support import drop_postgres_database, service_headers

from vitasync_fhir.app import create_app
from vitasync_fhir.config import Settings


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def synthea(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, synthea_dir: Path
) -> Iterator[Loaded]:
    """A server with the three small Synthea patients, their practitioners and hospitals, and the
    hand-made extras (created a moment after the bundles, see `loaded_at`)."""
    folder = tmp_path_factory.mktemp("search")
    if request.param == "sqlite":
        path = folder / "search.sqlite3"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        url = f"sqlite:///{path}"
    else:
        worker = getattr(request.config, "workerinput", {}).get("workerid", "main")
        database = f"vitasync_search_{worker}_{request.module.__name__.rsplit('.', 1)[-1]}"[:63]
        url = postgres_database(database)
    settings = Settings(
        database_url=url,
        base_url=BASE_URL,
        data_dir=folder / "var",
        signing_key_file=request.getfixturevalue("shared_key_file"),
    )
    with TestClient(create_app(settings), base_url=BASE_URL) as client:
        client.headers.update(service_headers(settings))
        loaded = Loaded(client)
        for name in BUNDLES:
            load_bundle(loaded, synthea_dir / name)
        time.sleep(0.01)
        loaded.loaded_at = datetime.now(UTC)
        time.sleep(0.01)
        load_extras(loaded)
        yield loaded
    if request.param == "postgresql":  # leave the developer's PostgreSQL as it was
        drop_postgres_database(database)
