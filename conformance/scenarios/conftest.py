"""Fixtures of the scenarios: the stage `python -m conformance` set up, and partners' tokens."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conformance.scenarios.partners import backend_token
from conformance.stage import Stage


@pytest.fixture(scope="session")
def stage() -> Stage:
    path = os.environ.get("CONFORMANCE_STAGE")
    if not path:
        pytest.exit("run the scenarios with `python -m conformance`, which starts the server", 2)
    return Stage.load(Path(path))


@pytest.fixture(scope="session")
def bulk_token(stage: Stage) -> str:
    return backend_token(stage, stage.bulk)["access_token"]


@pytest.fixture(scope="session")
def pharmacy_token(stage: Stage) -> str:
    return backend_token(stage, stage.pharmacy)["access_token"]


@pytest.fixture(scope="session")
def ehr_token(stage: Stage) -> str:
    return backend_token(stage, stage.ehr)["access_token"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The schemathesis run last: its generated writes must not disturb the partners' data."""
    items.sort(key=lambda item: item.module.__name__.endswith("test_openapi"))
