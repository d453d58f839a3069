"""A worker shortens Python's thread switch interval while it serves (VITASYNC_THREAD_SWITCH_MS):
the audit trail's writer thread would otherwise keep a request waiting for the interpreter lock
up to Python's default 5 ms each time it wants it back."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from support import BASE_URL

from vitasync_fhir.app import create_app
from vitasync_fhir.config import Settings


def _settings(tmp_path: Path, **values: float) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'switch.db'}",
        base_url=BASE_URL,
        data_dir=tmp_path / "var",
        gc_freeze_seconds=0,
        **values,
    )


def test_the_worker_serves_with_the_configured_switch_interval(tmp_path: Path) -> None:
    before = sys.getswitchinterval()
    with TestClient(create_app(_settings(tmp_path, thread_switch_ms=0.25)), base_url=BASE_URL):
        assert sys.getswitchinterval() == pytest.approx(0.00025)
    assert sys.getswitchinterval() == pytest.approx(before)  # given back at shutdown


def test_the_default_is_half_a_millisecond(tmp_path: Path) -> None:
    with TestClient(create_app(_settings(tmp_path)), base_url=BASE_URL):
        assert sys.getswitchinterval() == pytest.approx(0.0005)


def test_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="thread_switch_ms"):
        Settings(thread_switch_ms=0)
