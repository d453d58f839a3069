"""A worker takes its warmed-up heap out of the cyclic garbage collector once (heap.py)."""

from __future__ import annotations

import gc
import time
from pathlib import Path

from fastapi.testclient import TestClient
from support import BASE_URL

from vitasync_fhir.app import create_app
from vitasync_fhir.config import Settings


def _settings(tmp_path: Path, seconds: float) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'heap.db'}",
        base_url=BASE_URL,
        data_dir=tmp_path / "var",
        gc_freeze_seconds=seconds,
    )


def test_the_heap_is_frozen_once_the_worker_has_run_a_while(tmp_path: Path) -> None:
    gc.unfreeze()
    try:
        with TestClient(create_app(_settings(tmp_path, 0.05)), base_url=BASE_URL):
            deadline = time.monotonic() + 10
            while gc.get_freeze_count() == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert gc.get_freeze_count() > 1000  # the app's definitions, at least
    finally:
        gc.unfreeze()


def test_zero_never_freezes(tmp_path: Path) -> None:
    gc.unfreeze()
    with TestClient(create_app(_settings(tmp_path, 0)), base_url=BASE_URL):
        time.sleep(0.3)
        assert gc.get_freeze_count() == 0
