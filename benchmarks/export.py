"""Bulk Data $export throughput: a whole-system export of what the ingest loaded, through HTTP.

The clock runs from the kick-off to the first 200 of the status URL (the server's queue consumer
writes every NDJSON file in between), polled every `poll` seconds; the files are then downloaded
and their lines counted, timed apart. resources/s is exported resources over the first span; the
caller reads the job's own span (claimed to finished) from the database, which leaves out the
queue's pick-up delay and the polling.
"""

from __future__ import annotations

import asyncio
import time

import httpx

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


async def measure(
    base_url: str, token: str | None, *, poll: float = 0.1, timeout: float = 1800
) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=120) as http:
        started = time.perf_counter()
        kick = await http.get("/fhir/$export", headers=ASYNC)
        if kick.status_code != 202:
            raise RuntimeError(f"kick-off answered {kick.status_code}: {kick.text[:500]}")
        status_url = kick.headers["Content-Location"]
        polls = 0
        while True:
            answer = await http.get(status_url)
            polls += 1
            if answer.status_code == 200:
                break
            if answer.status_code != 202 or time.perf_counter() - started > timeout:
                raise RuntimeError(f"status answered {answer.status_code}: {answer.text[:500]}")
            await asyncio.sleep(poll)
        export_seconds = time.perf_counter() - started
        manifest = answer.json()
        downloaded = time.perf_counter()
        lines = size = 0
        for item in manifest["output"]:
            async with http.stream("GET", item["url"]) as stream:
                async for chunk in stream.aiter_bytes():
                    lines += chunk.count(b"\n")
                    size += len(chunk)
        download_seconds = time.perf_counter() - downloaded
    resources = sum(item["count"] for item in manifest["output"])
    return {
        "resources": resources,
        "lines_downloaded": lines,
        "types": len(manifest["output"]),
        "bytes": size,
        "export_seconds": round(export_seconds, 3),
        "resources_per_s": round(resources / export_seconds, 1) if export_seconds else 0.0,
        "download_seconds": round(download_seconds, 3),
        "download_resources_per_s": round(lines / download_seconds, 1) if download_seconds else 0.0,
        "status_polls": polls,
        "transaction_time": manifest["transactionTime"],
        "errors": len(manifest["error"]),
        "status_url": status_url,
    }
