"""`reindex` beside a server that writes: a batch is read and rewritten with its resources'
writers held off, and index rows of deleted or missing resources are removed. Each test makes its
own data on a fresh SQLite or PostgreSQL database."""

from __future__ import annotations

import asyncio
import threading

import pytest
from factories import FHIR_JSON, create, patient
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select

from vitasync_fhir.config import Settings
from vitasync_fhir.db import Database, sync_url
from vitasync_fhir.fhir.search import index
from vitasync_fhir.fhir.search.tables import INDEX_TABLES, resource_compartments

ALL_TABLES = (*INDEX_TABLES.values(), resource_compartments)
# How long the other writer gets to finish while a batch is between reading and rewriting. It
# finishes in milliseconds unless the batch holds it off, which is what the test is after.
WRITER_GRACE_SECONDS = 1.5


def rebuild(settings: Settings, **options: object) -> int:
    async def run() -> int:
        database = Database(settings)
        try:
            return await index.reindex(database, **options)  # type: ignore[arg-type]
        finally:
            await database.dispose()

    return asyncio.run(run())


def family_ids(client: TestClient, family: str) -> list[str]:
    answer = client.get("/fhir/Patient", params={"family:exact": family})
    assert answer.status_code == 200, answer.text
    return [e["resource"]["id"] for e in answer.json().get("entry", [])]


def index_rows(settings: Settings, resource_type: str, resource_id: str) -> dict[str, int]:
    """Rows per index table (compartments included) of one resource."""
    engine = create_engine(sync_url(settings.database_url))
    try:
        with engine.connect() as conn:
            return {
                table.name: conn.execute(
                    select(func.count())
                    .select_from(table)
                    .where(
                        table.c.resource_type == resource_type,
                        table.c.resource_id == resource_id,
                    )
                ).scalar_one()
                for table in ALL_TABLES
            }
    finally:
        engine.dispose()


@pytest.mark.parametrize("change", ["update", "delete"])
def test_a_write_between_reading_and_rewriting_a_batch_is_what_the_index_holds(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    created = create(client, patient(family="Before"))
    pid = created["id"]
    answers = []

    def write() -> None:
        if change == "update":
            changed = {**created, "name": [{"family": "After"}]}
            answers.append(client.put(f"/fhir/Patient/{pid}", json=changed, headers=FHIR_JSON))
        else:
            answers.append(client.delete(f"/fhir/Patient/{pid}"))

    writer = threading.Thread(target=write)
    rewrite = index.write_indexes

    async def write_meanwhile(session, items, **options):  # type: ignore[no-untyped-def]
        # The batch has been read: the server writes one of its resources now, from another
        # connection. Blocking this event loop is the point: the batch waits for the writer.
        if not writer.is_alive() and not answers:
            writer.start()
            writer.join(WRITER_GRACE_SECONDS)
        await rewrite(session, items, **options)

    monkeypatch.setattr(index, "write_indexes", write_meanwhile)
    assert rebuild(settings, resource_types=["Patient"]) == 1
    writer.join(60)
    assert not writer.is_alive() and answers[0].status_code in (200, 204), answers
    if change == "update":
        assert family_ids(client, "After") == [pid]
        assert family_ids(client, "Before") == []
    else:
        assert set(index_rows(settings, "Patient", pid).values()) == {0}
    # A reindex after the race leaves the same (it used to keep a deleted resource's rows).
    monkeypatch.setattr(index, "write_indexes", rewrite)
    rebuild(settings, resource_types=["Patient"])
    if change == "update":
        assert family_ids(client, "After") == [pid]
    else:
        assert set(index_rows(settings, "Patient", pid).values()) == {0}


def test_reindex_removes_index_rows_of_deleted_and_missing_resources(
    client: TestClient, settings: Settings
) -> None:
    kept = create(client, patient(family="Kept"))["id"]
    deleted = create(client, patient(family="Deleted"))["id"]
    assert client.delete(f"/fhir/Patient/{deleted}").status_code == 204
    # What a write racing an older reindex left behind: the rows of `kept`, owned by a deleted
    # resource and by one that does not exist, in every table that has rows for `kept`.
    engine = create_engine(sync_url(settings.database_url))
    with engine.begin() as conn:
        for table in ALL_TABLES:
            owned = (table.c.resource_type == "Patient") & (table.c.resource_id == kept)
            rows = [dict(r) for r in conn.execute(select(table).where(owned)).mappings()]
            for owner in (deleted, "missing"):
                if rows:
                    conn.execute(table.insert(), [{**r, "resource_id": owner} for r in rows])
    engine.dispose()
    before = index_rows(settings, "Patient", kept)
    assert before["search_string"] and before["resource_compartments"]
    assert index_rows(settings, "Patient", "missing") == before
    assert family_ids(client, "Kept") == [kept]

    rebuild(settings)
    assert set(index_rows(settings, "Patient", deleted).values()) == {0}
    assert set(index_rows(settings, "Patient", "missing").values()) == {0}
    assert index_rows(settings, "Patient", kept) == before
    assert family_ids(client, "Kept") == [kept]
