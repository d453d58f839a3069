"""What the engines promise: PostgreSQL sessions plan each search for its own values, without JIT;
and an app that starts does not load every FHIR model (80 MiB per worker)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from sqlalchemy import text

from vitasync_fhir.config import Settings
from vitasync_fhir.db import Database


def test_postgres_sessions_use_custom_plans_and_no_jit(postgres_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    async def main() -> tuple[str, str]:
        database = Database(Settings(database_url=postgres_url, data_dir=tmp_path))
        try:
            async with database.read_sessions() as session:
                mode = (await session.execute(text("SHOW plan_cache_mode"))).scalar_one()
                jit = (await session.execute(text("SHOW jit"))).scalar_one()
                return mode, jit
        finally:
            await database.dispose()

    assert asyncio.run(main()) == ("force_custom_plan", "off")


def test_starting_the_app_loads_no_fhir_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    probe = (
        "import sys\n"
        "from vitasync_fhir.app import create_app\n"
        "from vitasync_fhir.fhir.models import resource_types\n"
        "create_app()\n"
        "assert len(resource_types()) == 128\n"
        "print(sum(1 for m in sys.modules if m.startswith('fhir.resources.R4B.')"
        " and m.rsplit('.', 1)[1] in {t.lower() for t in resource_types()}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) == 0  # models load when a resource of their type is validated


def test_a_worker_holds_at_most_twice_db_pool_size_connections(postgres_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The read pool's connections come out of SQLAlchemy's overflow: with the floor app beside
    it, 32 clients had pushed PostgreSQL past max_connections ("too many clients")."""
    database = Database(Settings(database_url=postgres_url, data_dir=tmp_path, db_pool_size=6))
    pool = database.engine.sync_engine.pool
    assert database.read_pool is not None
    assert pool.size() + pool._max_overflow + database.read_pool.limit == 12  # type: ignore[attr-defined]
