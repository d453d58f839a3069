"""(a) A SMART backend service exports the population (FHIR Bulk Data Access IG v2) and reads it
back with fhirpy: kick-off, status polling, manifest, authorized NDJSON downloads, clean-up."""

from __future__ import annotations

import time

import httpx
import orjson
from fhirpy import SyncFHIRClient

from conformance.scenarios.partners import Returned
from conformance.stage import Stage

NDJSON = "application/fhir+ndjson"
WAIT_SECONDS = 180


def export(stage: Stage, token: str, path: str, types: list[str]) -> tuple[str, dict]:
    """Kick off an export and poll until its manifest; (status URL, manifest)."""
    bearer = {"Authorization": f"Bearer {token}"}
    kick = httpx.get(
        f"{stage.fhir}/{path}",
        params={"_type": ",".join(types), "_outputFormat": NDJSON},
        headers={**bearer, "Accept": "application/fhir+json", "Prefer": "respond-async"},
        timeout=60,
    )
    assert kick.status_code == 202, kick.text[:1000]
    status_url = kick.headers["content-location"]
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        status = httpx.get(status_url, headers={**bearer, "Accept": "application/json"}, timeout=60)
        if status.status_code != 202:
            break
        assert "x-progress" in status.headers or "retry-after" in status.headers
        assert time.monotonic() < deadline, f"the export did not finish in {WAIT_SECONDS} s"
        time.sleep(min(float(status.headers.get("retry-after", 1)), 2.0))
    assert status.status_code == 200, status.text[:1000]
    manifest = status.json()
    assert {"transactionTime", "request", "requiresAccessToken", "output", "error"} <= set(manifest)
    assert manifest["requiresAccessToken"] is True
    assert manifest["request"].startswith(f"{stage.fhir}/{path}")
    return status_url, manifest


def download(stage: Stage, token: str, manifest: dict, returned: Returned) -> dict[str, list]:
    """Every output file, fetched as the manifest says (with the token); resources by type."""
    by_type: dict[str, list] = {}
    for output in manifest["output"]:
        anonymous = httpx.get(output["url"], headers={"Accept": NDJSON}, timeout=60)
        assert anonymous.status_code == 401, "requiresAccessToken, but the file was served"
        answer = httpx.get(
            output["url"],
            headers={"Authorization": f"Bearer {token}", "Accept": NDJSON},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text[:500]
        assert answer.headers["content-type"].startswith(NDJSON)
        returned.add_lines(answer.content)
        lines = [orjson.loads(line) for line in answer.content.splitlines() if line.strip()]
        assert {r["resourceType"] for r in lines} <= {output["type"]}
        by_type.setdefault(output["type"], []).extend(lines)
    return by_type


def test_a_backend_service_exports_the_population_and_reads_it_back(stage: Stage, bulk_token: str):
    returned = Returned(stage, "bulk-export")
    types = ["Patient", "Observation", "MedicationRequest", "Practitioner"]
    status_url, manifest = export(stage, bulk_token, "$export", types)
    assert manifest["error"] == []
    exported = download(stage, bulk_token, manifest, returned)
    assert set(exported) == set(types)

    reader = SyncFHIRClient(stage.fhir, authorization=f"Bearer {bulk_token}")
    for kind, resources in exported.items():
        ids = {r["id"] for r in resources}
        assert len(ids) == len(resources), f"{kind} exported twice"
        # Not fhirpy's count(): it adds Aidbox's _totalMethod, which this server rejects as unknown.
        counted = (
            reader.resources(kind)
            .search(_lastUpdated=f"le{manifest['transactionTime']}", _total="accurate")
            .limit(0)
            .fetch_raw()
        )
        returned.add([counted])
        assert counted["total"] == len(ids), kind
        for resource in resources[:5]:
            again = reader.reference(kind, resource["id"]).to_resource().serialize()
            returned.add([again])
            assert again["meta"]["versionId"] == resource["meta"]["versionId"]
    assert stage.patient_id in {p["id"] for p in exported["Patient"]}

    done = httpx.delete(status_url, headers={"Authorization": f"Bearer {bulk_token}"}, timeout=60)
    assert done.status_code == 202
    assert httpx.get(status_url, headers={"Authorization": f"Bearer {bulk_token}"}).status_code in (
        404,
        410,
    )


def test_a_patient_level_export_holds_only_patient_compartments(stage: Stage, bulk_token: str):
    returned = Returned(stage, "bulk-export-patient")
    _, manifest = export(stage, bulk_token, "Patient/$export", ["Patient", "Condition"])
    exported = download(stage, bulk_token, manifest, returned)
    patients = {f"Patient/{p['id']}" for p in exported["Patient"]}
    assert {c["subject"]["reference"] for c in exported.get("Condition", [])} <= patients


def test_an_export_needs_a_token(stage: Stage):
    answer = httpx.get(
        f"{stage.fhir}/$export",
        headers={"Accept": "application/fhir+json", "Prefer": "respond-async"},
        timeout=30,
    )
    assert answer.status_code == 401
