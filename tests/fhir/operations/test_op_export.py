"""Bulk Data $export end to end: kick-off, poll, manifest, download, against the store, with a real
Huey consumer (the embedded SQLite queue, in threads of this process)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest
from factories import create
from fastapi.testclient import TestClient
from operations_support import (
    ASYNC,
    SYSTOLIC,
    download,
    exported,
    keys,
    kick_off,
    populate,
    search_ids,
    wait_manifest,
)
from support import BASE_URL, service_headers

from vitasync_fhir.app import create_app
from vitasync_fhir.config import Settings
from vitasync_fhir.db import Database
from vitasync_fhir.export import runner, tasks
from vitasync_fhir.notify import queue as queue_module
from vitasync_fhir.notify.worker import hosted

TYPES = "Patient,Observation,Encounter,Condition,Practitioner,Organization"


@pytest.fixture
def worker(settings: Settings) -> Iterator[None]:
    with hosted(settings):
        yield
    queue_module.forget(settings)


def _exports(settings: Settings) -> Path:
    return settings.data_dir / "exports"


def _same_as_store(client: TestClient, lines_by_type: dict[str, list[str]]) -> None:
    """Each line is exactly the stored JSON a read serves."""
    for resource_type, lines in lines_by_type.items():
        for line in lines:
            rid = line.split('"id":"', 1)[1].split('"', 1)[0]
            assert client.get(f"/fhir/{resource_type}/{rid}").text == line


def test_system_export_is_the_store(client: TestClient, settings: Settings, worker: None) -> None:
    people = populate(client)
    status_url = kick_off(
        client, f"/fhir/$export?_type={TYPES}&_outputFormat=application/fhir%2Bndjson"
    )
    assert status_url.startswith(f"{BASE_URL}/fhir/")
    manifest = wait_manifest(client, status_url)
    assert (
        manifest["request"]
        == f"{BASE_URL}/fhir/$export?_type={TYPES}&_outputFormat=application/fhir%2Bndjson"
    )
    assert manifest["requiresAccessToken"] is True
    assert manifest["error"] == []
    assert datetime.fromisoformat(manifest["transactionTime"].replace("Z", "+00:00"))
    files = exported(client, manifest)
    expected = set().union(*(search_ids(client, t) for t in TYPES.split(",")))
    assert keys(files) == expected
    assert ("Practitioner", people.practitioner) in expected
    _same_as_store(client, files)


def test_since_and_type_filter(client: TestClient, settings: Settings, worker: None) -> None:
    people = populate(client, patients=2)
    time.sleep(0.01)
    mark = datetime.now().astimezone()
    late = create(
        client,
        {"resourceType": "Condition", "subject": {"reference": f"Patient/{people.patients[0]}"}},
    )["id"]
    gone = next(i for t, i in people.records[people.patients[1]] if t == "Condition")
    assert client.delete(f"/fhir/Condition/{gone}").status_code == 204
    stamp = mark.isoformat().replace("+", "%2B")
    since_url = kick_off(client, f"/fhir/$export?_type=Condition,Patient&_since={stamp}")
    manifest = wait_manifest(client, since_url)
    assert keys(exported(client, manifest)) == {("Condition", late)}
    # What was deleted since: one transaction Bundle with its DELETE per line (Bulk Data).
    [deleted] = manifest["deleted"]
    assert deleted["type"] == "Bundle" and deleted["count"] == 1
    [line] = download(client, deleted["url"])
    assert orjson.loads(line) == {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "DELETE", "url": f"Condition/{gone}"}}],
    }
    assert "deleted" not in wait_manifest(client, kick_off(client, "/fhir/$export?_type=Patient"))
    systolic = f"Observation%3Fcode%3Dhttp%3A%2F%2Floinc.org%7C{SYSTOLIC}"
    status = kick_off(client, f"/fhir/$export?_type=Observation,Patient&_typeFilter={systolic}")
    files = exported(client, wait_manifest(client, status))
    expected = {k for pid in people.patients for k in people.records[pid] if k[0] == "Observation"}
    codes = {
        (t, i): client.get(f"/fhir/{t}/{i}").json()["code"]["coding"][0]["code"]
        for t, i in expected
    }
    assert {k for k in keys(files) if k[0] == "Observation"} == {
        k for k in expected if codes[k] == SYSTOLIC
    }
    assert {k for k in keys(files) if k[0] == "Patient"} == search_ids(client, "Patient")
    # two filters on one type: either matches
    heart = "Observation%3Fcode%3D8867-4"
    both = kick_off(client, f"/fhir/$export?_type=Observation&_typeFilter={systolic},{heart}")
    assert keys(exported(client, wait_manifest(client, both))) == expected


def test_patient_and_group_export(client: TestClient, settings: Settings, worker: None) -> None:
    people = populate(client, patients=3)
    everyone = set().union(*people.records.values())
    files = exported(client, wait_manifest(client, kick_off(client, "/fhir/Patient/$export")))
    assert keys(files) == everyone  # compartments only: no Practitioner, Organization
    _same_as_store(client, files)
    members = people.patients[:2]
    group = create(
        client,
        {
            "resourceType": "Group",
            "type": "person",
            "actual": True,
            "member": [{"entity": {"reference": f"Patient/{pid}"}} for pid in members]
            + [{"entity": {"reference": f"Patient/{people.patients[2]}"}, "inactive": True}],
        },
    )["id"]
    status = kick_off(client, f"/fhir/Group/{group}/$export")
    cohort = exported(client, wait_manifest(client, status))
    # the Group is in its members' compartments too (Group.member)
    expected = people.records[members[0]] | people.records[members[1]] | {("Group", group)}
    assert keys(cohort) == expected
    typed = kick_off(client, f"/fhir/Group/{group}/$export?_type=Condition")
    assert keys(exported(client, wait_manifest(client, typed))) == {
        k for pid in members for k in people.records[pid] if k[0] == "Condition"
    }
    assert client.get("/fhir/Group/nope/$export", headers=ASYNC).status_code == 404


def test_kickoff_errors(client: TestClient, anonymous: TestClient, worker: None) -> None:
    no_async = client.get("/fhir/$export")
    assert no_async.status_code == 400
    assert no_async.json()["issue"][0]["code"] == "invalid"
    for query, expression in [
        ("_outputFormat=text/csv", "_outputFormat"),
        ("_type=Nope", "_type"),
        ("_since=yesterday", "_since"),
        ("_elements=id", "_elements"),
        ("_typeFilter=Observation%3Fnope%3D1", "_typeFilter"),
        ("_typeFilter=nonsense", "_typeFilter"),
        ("_typeFilter=Observation%3F_count%3D1", "_typeFilter"),
    ]:
        answer = client.get(f"/fhir/$export?{query}", headers=ASYNC)
        assert answer.status_code == 400, query
        assert answer.json()["issue"][0]["expression"] == [expression], query
    assert client.get("/fhir/$export", headers={**ASYNC, "Accept": "text/csv"}).status_code == 406
    assert anonymous.get("/fhir/$export", headers=ASYNC).status_code == 401
    assert client.get("/fhir/_export/unknown").status_code == 404
    assert client.delete("/fhir/_export/unknown").status_code == 404
    # lenient: the unsupported parameter is ignored and reported in error[]
    status = kick_off(
        client, "/fhir/$export?_type=Patient&_elements=id", Prefer="respond-async, handling=lenient"
    )
    manifest = wait_manifest(client, status)
    assert manifest["output"] == []
    assert [e["type"] for e in manifest["error"]] == ["OperationOutcome"]
    outcome = download(client, manifest["error"][0]["url"])
    assert "_elements" in outcome[0] and '"severity":"warning"' in outcome[0]


# Each of these would be accepted and then fail, or be dropped, inside the job: a 400 up front.
REFUSED_TYPE_FILTERS = [
    ("Observation?nope=1", "not-supported"),  # unknown parameter
    ("Observation?date=yesterday", "invalid"),  # a value its type cannot read
    ("Observation?subject:Patient.nope=x", "not-supported"),  # a chain to an unknown parameter
    ("Patient?_has:Observation:nope:code=x", "invalid"),
    ("Observation?_count=1", "invalid"),  # result parameters select nothing
    ("Observation?_sort=date", "invalid"),
    ("Observation?_include=Observation:subject", "invalid"),
    ("Observation?_include:iterate=Observation:subject", "invalid"),
    ("Observation?_revinclude:iterate=Provenance:target", "invalid"),
    ("Observation?", "invalid"),  # no criteria: every Observation, and the other filters void
    ("Observation?code=", "invalid"),
    ("Observation?_format=json", "invalid"),
    ("Encounter?status=finished", "invalid"),  # a type that is not exported
    ("Observation?=x", "not-supported"),
]


def test_type_filters_are_checked_at_kickoff_and_what_passes_runs(
    client: TestClient, worker: None
) -> None:
    people = populate(client, patients=2)
    for text, code in REFUSED_TYPE_FILTERS:
        answer = client.get(
            "/fhir/$export",
            params={"_type": "Observation,Patient", "_typeFilter": text},
            headers=ASYNC,
        )
        assert answer.status_code == 400, (text, answer.text)
        (issue,) = answer.json()["issue"]
        assert (issue["code"], issue["expression"]) == (code, ["_typeFilter"]), text
        assert repr(text) in issue["diagnostics"], text
    accepted = [
        "Observation?subject:Patient.family=Family0",
        f"Patient?_has:Observation:patient:code={SYSTOLIC}&_pretty=true",
        "Observation?code:missing=true",
        "Observation?code:not=nothing&_lastUpdated=gt2000-01-01&value-quantity=ap1e300",
    ]
    answer = client.get(
        "/fhir/$export",
        params={"_type": "Observation,Patient", "_typeFilter": ",".join(accepted)},
        headers=ASYNC,
    )
    assert answer.status_code == 202, answer.text
    manifest = wait_manifest(client, answer.headers["Content-Location"])
    assert manifest["error"] == []
    first = {k for k in people.records[people.patients[0]] if k[0] == "Observation"}
    assert keys(exported(client, manifest)) == {*first, *(("Patient", p) for p in people.patients)}


def test_lenient_handling_ignores_unsupported_type_filters_with_a_warning(
    client: TestClient, worker: None
) -> None:
    people = populate(client, patients=2)
    filters = (
        f"Patient?nope=1,Patient?_id={people.patients[0]},Patient?_include:iterate=Patient:link"
    )
    status = kick_off(
        client,
        f"/fhir/$export?_type=Patient&_typeFilter={quote(filters)}",
        Prefer="respond-async, handling=lenient",
    )
    manifest = wait_manifest(client, status)
    assert keys(exported(client, manifest)) == {("Patient", people.patients[0])}
    (error,) = manifest["error"]
    warnings = download(client, error["url"])
    assert len(warnings) == 2
    assert all('"severity":"warning"' in line for line in warnings)
    assert "nope" in warnings[0] and "_include:iterate" in warnings[1]


def test_role_policy_limits_the_export(
    client: TestClient,
    settings: Settings,
    signed_in,
    worker: None,  # type: ignore[no-untyped-def]
) -> None:
    people = populate(client, patients=2)
    mine = people.patients[0]
    dispense = create(
        client,
        {
            "resourceType": "MedicationDispense",
            "status": "completed",
            "medicationCodeableConcept": {"text": "Aspirin"},
            "subject": {"reference": f"Patient/{mine}"},
        },
    )["id"]
    own = signed_in(role="patient", patient_id=mine)
    assert client.get("/fhir/$export", headers={**ASYNC, **own}).status_code == 403
    status = kick_off(client, "/fhir/Patient/$export", **own)
    files = exported(client, wait_manifest(client, status, **own), **own)
    assert keys(files) == people.records[mine] | {("MedicationDispense", dispense)}
    # another caller cannot see that job or its files
    other = signed_in(role="patient", patient_id=people.patients[1])
    assert client.get(status, headers=other).status_code == 404
    nurse = service_headers(settings, role="nurse")
    denied = client.get("/fhir/$export?_type=MedicationDispense", headers={**ASYNC, **nurse})
    assert denied.status_code == 403
    assert denied.json()["issue"][0]["code"] == "forbidden"
    status = kick_off(client, "/fhir/$export", **nurse)
    files = exported(client, wait_manifest(client, status, **nurse), **nurse)
    assert "MedicationDispense" not in files and "AuditEvent" not in files
    assert keys({"Observation": files["Observation"]}) == search_ids(client, "Observation")
    url = next(o["url"] for o in wait_manifest(client, status, **nurse)["output"])
    assert client.get(url, headers=own).status_code == 404
    # Status and files are the kick-off's caller's alone, as Bulk Data protects them: not even
    # another admin's, nor the same account's with narrower scopes.
    assert client.get(url).status_code == 404
    assert client.get(status).status_code == 404
    mine_again = _same_account_token(settings, own, scope="patient/Observation.rs")
    patient_status = kick_off(client, "/fhir/Patient/$export?_type=Observation", **own)
    wait_manifest(client, patient_status, **own)
    assert client.get(patient_status, headers=mine_again).status_code == 200
    narrower = _same_account_token(settings, own, scope="patient/Patient.rs")
    assert client.get(patient_status, headers=narrower).status_code == 404
    # Each download is audited (a refused one too), with the file it asked for.
    trail = client.get("/fhir/AuditEvent", params={"_count": 1000}).json()["entry"]
    downloads = [
        (e["resource"]["outcome"], base64.b64decode(e["resource"]["entity"][0]["query"]).decode())
        for e in trail
        if '"$export"' in json.dumps(e["resource"]["subtype"]) and e["resource"].get("entity")
    ]
    file_path = url.split("/fhir/", 1)[1]
    assert ("0", file_path) in downloads
    assert any(outcome == "4" for outcome, _ in downloads)


def _same_account_token(settings: Settings, headers: dict[str, str], *, scope: str) -> dict:
    """A new token for the account behind `headers`, with `scope`."""
    from vitasync_fhir.auth import tokens

    claims = tokens.decode_access_token(settings, headers["Authorization"].split()[1])
    issued = tokens.issue_access_token(
        settings,
        subject=claims["sub"],
        scope=scope,
        fhir_user=claims.get("fhirUser"),
        patient=claims.get("patient"),
    )
    return {"Authorization": f"Bearer {issued.token}"}


def test_a_resource_changed_after_kickoff_is_exported_and_foreign_members_are_not(
    client: TestClient, settings: Settings
) -> None:
    people = populate(client, patients=2)
    first, second = people.patients
    status = kick_off(client, "/fhir/$export?_type=Patient")  # queued: no worker yet
    changed = client.get(f"/fhir/Patient/{first}").json()
    assert (
        client.put(f"/fhir/Patient/{first}", json={**changed, "gender": "other"}).status_code == 200
    )
    group = create(
        client,
        {
            "resourceType": "Group",
            "type": "person",
            "actual": True,
            "member": [
                {"entity": {"reference": f"Patient/{first}"}},
                {"entity": {"reference": f"https://ehr.elsewhere.example/fhir/Patient/{second}"}},
            ],
        },
    )["id"]
    group_status = kick_off(client, f"/fhir/Group/{group}/$export?_type=Patient")
    late = create(client, {"resourceType": "Patient", "name": [{"family": "Late"}]})["id"]
    with hosted(settings):
        files = exported(client, wait_manifest(client, status))
        members = exported(client, wait_manifest(client, group_status))
    queue_module.forget(settings)
    assert ("Patient", first) in keys(files) and ("Patient", second) in keys(files)
    assert keys(members) == {("Patient", first)}  # another server's Patient is not ours
    # made after transactionTime: not in the export (SHOULD NOT), found by the next with _since
    assert ("Patient", late) not in keys(files)


def test_delete_cancels_and_removes_files(
    client: TestClient, settings: Settings, worker: None
) -> None:
    populate(client, patients=1)
    status = kick_off(client, "/fhir/$export?_type=Patient,Observation")
    manifest = wait_manifest(client, status)
    job = status.rsplit("/", 1)[1]
    assert (_exports(settings) / job / "Observation.ndjson").is_file()
    answer = client.delete(status)
    assert answer.status_code == 202
    assert client.get(status).status_code == 404
    assert client.get(manifest["output"][0]["url"]).status_code == 404
    assert not (_exports(settings) / job).exists()
    assert client.delete(status).status_code == 404


def test_cancel_while_queued_means_it_never_runs(client: TestClient, settings: Settings) -> None:
    populate(client, patients=1)
    status = kick_off(client, "/fhir/$export")  # no worker running
    job = status.rsplit("/", 1)[1]
    assert client.get(status).status_code == 202
    assert client.delete(status).status_code == 202
    assert asyncio.run(runner.run(settings, job)) is None
    assert not (_exports(settings) / job).exists()
    queue_module.forget(settings)


def test_files_expire(database_url: str, tmp_path: Path, shared_key_file: Path) -> None:
    config = Settings(
        database_url=database_url,
        base_url=BASE_URL,
        data_dir=tmp_path / "var",
        signing_key_file=shared_key_file,
        export_expiry_seconds=2,
    )
    with TestClient(create_app(config), base_url=BASE_URL) as client, hosted(config):
        client.headers.update(service_headers(config))
        populate(client, patients=1)
        status = kick_off(client, "/fhir/$export?_type=Patient")
        manifest = wait_manifest(client, status)
        job = status.rsplit("/", 1)[1]
        assert (config.data_dir / "exports" / job / "Patient.ndjson").is_file()
        time.sleep(2.2)
        assert client.get(status).status_code == 404
        assert client.get(manifest["output"][0]["url"]).status_code == 404
        assert asyncio.run(tasks.sweep(config))[0] == 1
        assert not (config.data_dir / "exports" / job).exists()
    queue_module.forget(config)


def test_runs_once_and_resumes_after_a_crash(client: TestClient, settings: Settings) -> None:
    populate(client, patients=1)
    status = kick_off(client, "/fhir/$export?_type=Patient,Observation")
    job = status.rsplit("/", 1)[1]

    async def claims() -> tuple[str | None, str | None]:
        database = Database(settings)
        try:
            return await runner.claim(database, job), await runner.claim(database, job)
        finally:
            await database.dispose()

    first, second = asyncio.run(claims())
    assert first is not None and second is None  # one worker wins the job
    # The winner "crashes": nothing runs it until its lease lapses, then the sweep hands it over.
    assert asyncio.run(runner.run(settings, job)) is None
    assert client.get(status).status_code == 202
    database = Database(settings)

    async def lapse() -> None:
        from sqlalchemy import update

        from vitasync_fhir.export.tables import export_jobs

        async with database.engine.begin() as conn:
            await conn.execute(
                update(export_jobs)
                .where(export_jobs.c.id == job)
                .values(lease_until=datetime.now().astimezone() - timedelta(seconds=1))
            )
        await database.dispose()

    asyncio.run(lapse())
    assert asyncio.run(tasks.sweep(settings)) == (0, 1)  # queued again; a consumer runs it
    with hosted(settings):
        manifest = wait_manifest(client, status)
    assert {o["type"] for o in manifest["output"]} == {"Patient", "Observation"}
    queue_module.forget(settings)


def test_a_job_whose_workers_keep_dying_fails_visibly(
    client: TestClient, settings: Settings
) -> None:
    status = kick_off(client, "/fhir/$export?_type=Patient")
    job = status.rsplit("/", 1)[1]

    async def crashed_every_time() -> None:
        from sqlalchemy import update

        from vitasync_fhir.export.tables import RUNNING, export_jobs

        database = Database(settings)
        async with database.engine.begin() as conn:
            await conn.execute(
                update(export_jobs)
                .where(export_jobs.c.id == job)
                .values(
                    status=RUNNING,
                    attempts=runner.MAX_ATTEMPTS,
                    claim="dead",
                    lease_until=datetime.now().astimezone() - timedelta(seconds=1),
                )
            )
        await database.dispose()

    asyncio.run(crashed_every_time())
    assert asyncio.run(tasks.sweep(settings)) == (0, 1)
    failed = client.get(status)  # Bulk Data: a failed export is a 4xx/5xx, not a manifest
    assert failed.status_code == 500
    assert failed.json()["issue"][0]["code"] == "exception"
    assert str(settings.data_dir) not in failed.text
    queue_module.forget(settings)
