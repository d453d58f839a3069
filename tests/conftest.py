"""Fixtures: an app on a fresh SQLite file and on a real PostgreSQL, for every HTTP test.

PostgreSQL is the one at VITASYNC_TEST_POSTGRES (default: 127.0.0.1:5432, database `test`). Where it
is not running the PostgreSQL half of the suite skips with the reason, unless CI=true is set:
then it fails, because CI must test what production runs on.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from support import (
    BASE_URL,
    SYNTHEA,
    auth_headers,
    create_postgres_database,
    drop_postgres_database,
    empty_postgres,
    service_headers,
    unavailable,
)

from vitasync_fhir import migrations
from vitasync_fhir.app import create_app
from vitasync_fhir.config import Settings


@pytest.fixture(scope="session")
def postgres_url(worker_id: str) -> Iterator[str]:
    name = f"vitasync_test_{worker_id}_{os.getpid()}"
    url = create_postgres_database(name)
    migrations.upgrade(url)
    yield url
    drop_postgres_database(name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.sqlite3"
    migrations.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def worker_id(request: pytest.FixtureRequest) -> str:
    return getattr(request.config, "workerinput", {}).get("workerid", "main")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "vitasync.sqlite3"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("postgres_url")
    empty_postgres(url)
    return url


@pytest.fixture(scope="session")
def shared_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One signing key for the session: a new RSA key per test would cost more than the test."""
    return tmp_path_factory.mktemp("keys") / "signing.pem"


@pytest.fixture
def settings(database_url: str, tmp_path: Path, shared_key_file: Path) -> Settings:
    return Settings(
        database_url=database_url,
        base_url=BASE_URL,
        data_dir=tmp_path / "var",
        signing_key_file=shared_key_file,
    )


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def signed_in(settings: Settings) -> Callable[..., dict[str, str]]:
    """Authorization headers of a new user with `role` (a real account, a real signed token)."""
    return lambda **options: auth_headers(settings, **options)


@pytest.fixture
def client(app: FastAPI, settings: Settings) -> Iterator[TestClient]:
    """A backend service with the admin role: it sees everything and adds no Practitioner of its
    own to the data. The policy itself is tested in tests/auth."""
    with TestClient(app, base_url=BASE_URL) as test_client:
        test_client.headers.update(service_headers(settings))
        yield test_client


@pytest.fixture
def anonymous(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, base_url=BASE_URL) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def synthea_dir() -> Path:
    if not SYNTHEA.is_dir():
        unavailable(f"the Synthea sample data is not at {SYNTHEA} (it ships beside the repo in CI)")
    return SYNTHEA
