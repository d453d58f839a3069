"""Transaction ingest of the Synthea archive through the REST API (`POST /fhir`).

Members are read straight from the .tar.xz into memory before the clock starts (nothing is
unpacked to disk); the practitioner and hospital bundles go first, one after the other, then the
patient bundles with a few concurrent posters. Every resource the server created is remembered
by its `response.location`, for the read and write benchmarks that follow.
"""

from __future__ import annotations

import asyncio
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from benchmarks.loadgen import percentile
from benchmarks.procs import ROOT

SYNTHEA = ROOT.parent / "shared" / "data" / "synthea-r4"
ARCHIVE = SYNTHEA / "synthea-r4-617-patients.tar.xz"
SEVENTY = next(SYNTHEA.glob("Clemente_Kreiger_*.json"), SYNTHEA / "Clemente_Kreiger.json")
INFO_ORDER = ("practitionerInformation", "hospitalInformation")
FHIR_JSON = "application/fhir+json"


@dataclass
class Bundle:
    name: str
    body: bytes
    entries: int


@dataclass
class Posted:
    name: str
    entries: int
    seconds: float
    locations: list[str] = field(default_factory=list)
    error: str = ""


def load_archive(
    path: Path = ARCHIVE, *, limit: int | None = None
) -> tuple[list[Bundle], list[Bundle]]:
    """(info bundles, practitioner first; patient bundles in archive order, the first `limit`)."""
    info: dict[str, Bundle] = {}
    patients: list[Bundle] = []
    with tarfile.open(path, "r|xz") as archive:
        for member in archive:
            if not (member.isfile() and member.name.endswith(".json")):
                continue
            handle = archive.extractfile(member)
            assert handle is not None
            body = handle.read()
            name = Path(member.name).name
            bundle = Bundle(name, body, len(orjson.loads(body).get("entry") or []))
            kind = next((k for k in INFO_ORDER if name.startswith(k)), None)
            if kind:
                info[kind] = bundle
            else:
                patients.append(bundle)
    ordered_info = [info[k] for k in INFO_ORDER if k in info]
    return ordered_info, patients[:limit] if limit is not None else patients


def client(base_url: str, token: str | None, *, connections: int) -> httpx.AsyncClient:
    """A connection per bundle: uvicorn's workers share one listening socket, and a kept-alive
    connection stays with the worker that accepted it, so a few long-lived connections can all
    land on one worker; a new connection goes to whichever worker is free to accept it."""
    headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=0)
    return httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=600)


async def post(http: httpx.AsyncClient, bundle: Bundle) -> Posted:
    started = time.perf_counter()
    try:
        response = await http.post("/fhir", content=bundle.body)
    except httpx.HTTPError as error:
        return Posted(bundle.name, bundle.entries, time.perf_counter() - started,
                      error=f"{type(error).__name__}: {error}")
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        return Posted(bundle.name, bundle.entries, seconds,
                      error=f"HTTP {response.status_code}: {response.text[:500]}")
    entries = orjson.loads(response.content).get("entry") or []
    locations = [e.get("response", {}).get("location", "") for e in entries]
    locations = [loc.split("/fhir/", 1)[-1] for loc in locations if loc]
    if len(locations) != bundle.entries:
        return Posted(bundle.name, bundle.entries, seconds, locations,
                      error=f"{len(locations)} locations for {bundle.entries} entries")
    return Posted(bundle.name, bundle.entries, seconds, locations)


async def warm_up(base_url: str, token: str | None, *, workers: int) -> dict:
    """Post the 70-entry bundle a few times concurrently so every worker has loaded its code."""
    body = SEVENTY.read_bytes()
    bundle = Bundle(SEVENTY.name, body, len(orjson.loads(body)["entry"]))
    started = time.perf_counter()
    posted: list[Posted] = []
    async with client(base_url, token, connections=2 * workers) as http:
        for _ in range(2):
            posted += await asyncio.gather(*(post(http, bundle) for _ in range(2 * workers)))
    failed = [p.error for p in posted if p.error]
    if failed:
        raise RuntimeError(f"warm-up transaction failed: {failed[0]}")
    return {"bundles": len(posted), "resources": sum(p.entries for p in posted),
            "seconds": round(time.perf_counter() - started, 2)}


async def post_all(base_url: str, token: str | None, info: list[Bundle], patients: list[Bundle],
                   *, posters: int) -> tuple[list[Posted], float, float]:
    """Post every bundle; (results, seconds for the info bundles, seconds in all)."""
    results: list[Posted] = []
    queue = iter(patients)

    async def poster(http: httpx.AsyncClient) -> None:
        for bundle in queue:
            results.append(await post(http, bundle))

    async with client(base_url, token, connections=posters) as http:
        started = time.perf_counter()
        for bundle in info:
            results.append(await post(http, bundle))
        info_seconds = time.perf_counter() - started
        await asyncio.gather(*(poster(http) for _ in range(posters)))
        total = time.perf_counter() - started
    return results, info_seconds, total


def summary(results: list[Posted], *, info_seconds: float, total_seconds: float,
            info_count: int) -> dict:
    failures = [p for p in results if p.error]
    created = sum(len(p.locations) for p in results if not p.error)
    sent = sum(p.entries for p in results)
    ms = sorted(p.seconds * 1000 for p in results)
    patients = results[info_count:]
    patient_resources = sum(p.entries for p in patients)
    patient_seconds = total_seconds - info_seconds
    return {
        "bundles": len(results),
        "info_bundles": info_count,
        "patient_bundles": len(patients),
        "resources_sent": sent,
        "resources_created": created,
        "seconds": round(total_seconds, 2),
        "resources_per_s": round(created / total_seconds, 1),
        "bundles_per_s": round(len(results) / total_seconds, 2),
        "info_seconds": round(info_seconds, 2),
        "patient_phase_resources_per_s": round(patient_resources / patient_seconds, 1)
        if patient_seconds > 0 else 0.0,
        "bundle_ms": {"p50": round(percentile(ms, 50), 1), "p95": round(percentile(ms, 95), 1),
                      "p99": round(percentile(ms, 99), 1), "max": round(ms[-1], 1) if ms else 0},
        "ms_per_resource_p50": round(percentile(
            sorted(p.seconds * 1000 / max(1, p.entries) for p in results), 50), 2),
        "largest_bundle_entries": max((p.entries for p in results), default=0),
        "failures": len(failures),
        "failure_examples": [f"{p.name}: {p.error}" for p in failures[:5]],
    }
