"""The audit trail of reads (auth/trail.py) and the cache of verified callers (auth/recent.py).

Reads must cost no write, yet every read is audited: the trail stores the events apart, and a
read of the AuditEvents first waits for what this worker still holds.
"""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select, update
from support import BASE_URL, auth_headers

from vitasync_fhir import migrations
from vitasync_fhir.app import create_app
from vitasync_fhir.auth import audit, recent
from vitasync_fhir.auth.tables import users
from vitasync_fhir.auth.trail import AuditTrail
from vitasync_fhir.config import Settings
from vitasync_fhir.db import Database, mark_written, sync_url
from vitasync_fhir.fhir.tables import resources


def _stored_events(settings: Settings) -> int:
    engine = create_engine(sync_url(settings.database_url))
    try:
        with engine.connect() as conn:
            query = select(func.count()).where(resources.c.resource_type == "AuditEvent")
            return conn.execute(query).scalar_one()
    finally:
        engine.dispose()


def _event(patient: str) -> dict:
    return audit.audit_event(
        None,
        action="read",
        resource_type="Patient",
        resource_id=patient,
        outcome="success",
        source_ip=None,
    )


def test_a_read_is_audited_apart_and_an_audit_read_sees_it(settings: Settings) -> None:
    slow = settings.model_copy(update={"audit_flush_ms": 60_000})
    with TestClient(create_app(slow), base_url=BASE_URL) as api:
        admin = auth_headers(slow, role="admin")
        made = api.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=admin)
        written = _stored_events(slow)  # the create's own event, in the create's transaction
        assert written == 1

        assert api.get(f"/fhir/Patient/{made.json()['id']}", headers=admin).status_code == 200
        assert _stored_events(slow) == written  # the read wrote nothing in its request

        found = api.get("/fhir/AuditEvent?entity=Patient/" + made.json()["id"], headers=admin)
        actions = sorted(e["resource"]["action"] for e in found.json()["entry"])
        assert actions == ["C", "R"]  # the search waited for the trail, minute or not


def test_the_trail_writes_batches_and_outlives_its_thread(settings: Settings) -> None:
    trail = AuditTrail(settings)
    for n in range(7):
        trail.add(_event(f"p{n}"))
    assert trail.drain(timeout=30)
    assert _stored_events(settings) == 7
    trail.add(_event("late"))
    trail.close()  # closing writes what is pending
    assert _stored_events(settings) == 8


def test_the_trail_keeps_events_while_the_database_is_away(tmp_path: Path) -> None:
    away = tmp_path / "away" / "db.sqlite3"  # the folder does not exist yet: connecting fails
    settings = Settings(database_url=f"sqlite:///{away}", data_dir=tmp_path / "var")
    trail = AuditTrail(settings)
    trail.add(_event("p1"))
    assert not trail.drain(timeout=1.5)  # still waiting: the write fails and is retried
    away.parent.mkdir()
    migrations.upgrade(settings.database_url)  # the database comes back
    assert trail.drain(timeout=30)
    trail.close()
    assert _stored_events(settings) == 1


def _rows_of(settings: Settings, ids: list[str]) -> dict[str, list[tuple]]:
    """Every row stored for these AuditEvents, ids and write times left out."""
    from vitasync_fhir.fhir.search.tables import INDEX_TABLES, resource_compartments
    from vitasync_fhir.fhir.tables import resource_history

    tables = {**INDEX_TABLES, "compartments": resource_compartments}
    engine = create_engine(sync_url(settings.database_url))
    out: dict[str, list[tuple]] = {}
    try:
        with engine.connect() as conn:
            for name, table in tables.items():
                rows = conn.execute(select(table).where(table.c.resource_id.in_(ids))).all()
                out[name] = sorted(
                    tuple(str(v) for k, v in r._mapping.items() if k != "resource_id") for r in rows
                )
            for name, table in (("resources", resources), ("history", resource_history)):
                rows = conn.execute(select(table).where(table.c.id.in_(ids))).all()
                out[name] = sorted(
                    (r.version_id, r.deleted, getattr(r, "method", ""), _body(r.content))
                    for r in rows
                )
    finally:
        engine.dispose()
    return out


def _body(content: str) -> str:
    import json

    resource = json.loads(content)
    del resource["id"], resource["meta"]
    return json.dumps(resource, sort_keys=True)


def test_the_trail_stores_what_a_write_in_a_request_stores(settings: Settings) -> None:
    """The trail writes on a synchronous connection (store_many), a request's transaction through
    the store (record_many): the same event must leave the same rows, indexes included."""
    from vitasync_fhir.auth.policy import Caller

    caller = Caller(
        role="doctor",
        scopes=(),
        user_id="u1",
        fhir_user="Practitioner/d1",
        client_id="app",
        jti="0f3c5a52-7a44-4b8e-9a64-1f7e1c0e2d11",
    )
    moment = datetime(2026, 11, 29, 1, 2, 3, tzinfo=UTC)
    event = audit.audit_event(
        caller,
        action="read",
        resource_type="Observation",
        resource_id="o1",
        outcome="success",
        source_ip="10.0.0.7",
        patient_id="p1",
        recorded=moment,
    )

    async def in_a_request() -> list[str]:
        database = Database(settings)
        try:
            return list(await database.run(lambda s: audit.record_many(s, [dict(event)])))
        finally:
            await database.dispose()

    through_store = asyncio.run(in_a_request())
    trail = AuditTrail(settings)
    trail.add(dict(event))
    trail.close()
    by_trail = [i for i in _audit_ids(settings) if i not in through_store]
    assert len(by_trail) == 1
    expected, got = _rows_of(settings, through_store), _rows_of(settings, by_trail)
    assert got["resources"] and got["history"] and got["reference"] and got["compartments"]
    assert got == expected


def _audit_ids(settings: Settings) -> list[str]:
    engine = create_engine(sync_url(settings.database_url))
    try:
        with engine.connect() as conn:
            query = select(resources.c.id).where(resources.c.resource_type == "AuditEvent")
            return list(conn.execute(query).scalars())
    finally:
        engine.dispose()


def test_a_batch_stored_unacknowledged_is_not_stored_twice(settings: Settings) -> None:
    """A commit can go through while its answer is lost: the retry must find the events stored
    (their ids are chosen once) rather than store them again, and go on with the rest."""
    from vitasync_fhir.db import make_sync_engine

    trail = AuditTrail(settings)
    engine = make_sync_engine(settings)
    try:
        batch = [_event("p1"), _event("p2")]
        assert trail._write(engine, list(batch))  # stored; pretend the answer never came
        later = _event("p3")
        pending = [*batch, later]
        assert not trail._write(engine, pending)  # the duplicate fails the transaction
        assert pending == [later]  # the stored two are dropped, the new one waits
        assert trail._write(engine, pending)
        assert pending == []
    finally:
        engine.dispose()
    assert _stored_events(settings) == 3
    assert len(set(_audit_ids(settings))) == 3


def test_a_read_only_session_refuses_writes(settings: Settings) -> None:
    async def main() -> None:
        database = Database(settings)
        try:
            async with database.read_sessions() as session:
                with pytest.raises(RuntimeError):
                    mark_written(session)
        finally:
            await database.dispose()

    asyncio.run(main())


def _deactivate_all(settings: Settings) -> None:
    engine = create_engine(sync_url(settings.database_url))
    try:
        with engine.begin() as conn:
            conn.execute(update(users).values(active=False))
    finally:
        engine.dispose()


@pytest.mark.parametrize("seconds", [0, 1])
def test_a_cached_caller_lasts_auth_cache_seconds_at_most(settings: Settings, seconds) -> None:
    cached = settings.model_copy(update={"auth_cache_seconds": seconds})
    recent.forget_all()
    with TestClient(create_app(cached), base_url=BASE_URL) as api:
        nurse = auth_headers(cached, role="nurse")
        assert api.get("/fhir/Patient", headers=nurse).status_code == 200
        _deactivate_all(cached)  # behind the server's back, as another worker would
        if seconds:
            assert api.get("/fhir/Patient", headers=nurse).status_code == 200  # still trusted
            time.sleep(seconds + 0.2)
        assert api.get("/fhir/Patient", headers=nurse).status_code == 401


def test_an_event_the_database_refuses_does_not_hold_back_the_others(
    settings: Settings, caplog
) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL refused a batch holding a reference longer than its index column (a refused
    request for a 100-character id), and the trail retried that batch for ever: nothing more
    was stored. Now the batch is stored one by one and only the refused event is dropped."""
    bad = _event("p-bad")
    bad["entity"][0]["what"] = {"reference": "Patient/" + "x" * 100}  # as built before
    trail = AuditTrail(settings)
    trail.add(bad)
    trail.add(_event("p-good"))
    assert trail.drain(timeout=15)
    trail.add(_event("p-later"))
    trail.close()
    postgres = settings.database_url.startswith("postgresql")
    assert _stored_events(settings) == (2 if postgres else 3)
    if postgres:
        assert "could not be stored and is dropped" in caplog.text


def test_an_odd_id_or_query_is_recorded_as_text() -> None:
    event = audit.audit_event(
        None,
        action="read",
        resource_type="Observation",
        resource_id="x" * 100 + "\x00",
        outcome="denied",
        source_ip=None,
        query="name=a\x00b",
    )
    entity = event["entity"][0]
    assert entity["what"] == {"display": "Observation/" + "x" * 100 + "\N{REPLACEMENT CHARACTER}"}
    assert "\x00" not in base64.b64decode(entity["query"]).decode()
    plain = audit.audit_event(
        None,
        action="read",
        resource_type="Observation",
        resource_id="o-1",
        outcome="success",
        source_ip=None,
    )
    assert plain["entity"][0]["what"] == {"reference": "Observation/o-1"}


def test_a_refused_odd_id_is_audited_and_the_trail_goes_on(settings: Settings) -> None:
    with TestClient(create_app(settings), base_url=BASE_URL) as api:
        admin = auth_headers(settings, role="admin")
        pharmacist = auth_headers(settings, role="pharmacist")
        for odd in ("x" * 100, "ab%00cd"):
            assert api.get(f"/api/vitals/{odd}", headers=pharmacist).status_code == 403
        made = api.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=admin).json()
        assert api.get(f"/fhir/Patient/{made['id']}", headers=admin).status_code == 200
        found = api.get("/fhir/AuditEvent", params={"_count": 100}, headers=admin).json()
        events = [e["resource"] for e in found["entry"]]
        shown = [e["entity"][0].get("what", {}) for e in events if e.get("entity")]
        assert {"display": "Observation/" + "x" * 100} in shown
        assert {"reference": f"Patient/{made['id']}"} in shown  # stored after the odd ones


def test_past_audit_max_pending_the_oldest_are_dropped_and_said(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    away = tmp_path / "away" / "db.sqlite3"
    settings = Settings(
        database_url=f"sqlite:///{away}", data_dir=tmp_path / "var", audit_max_pending=600
    )
    trail = AuditTrail(settings)
    for n in range(3000):
        trail.add(_event(f"p{n}"))
    deadline = time.monotonic() + 10
    while trail._queue.qsize() > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert trail._queue.qsize() == 0  # gathered, and bounded: not left to grow in the queue
    assert "dropping" in caplog.text
    away.parent.mkdir()
    migrations.upgrade(settings.database_url)
    assert trail.drain(timeout=30)
    trail.close()
    assert _stored_events(settings) <= 600 + 500
