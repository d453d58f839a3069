"""Prescription PDF and QR code times, measured in-process.

    .venv/bin/python -m benchmarks.documents                 # SQLite in a scratch folder
    .venv/bin/python -m benchmarks.documents --database-url postgresql+psycopg://postgres@127.0.0.1/x

Runs the app in this process (httpx's ASGI transport, no HTTP server), makes `--prescriptions`
prescriptions with their patients and prescribers, and as a signed-in doctor measures:
GET /print_prescription of each prescription once (first render: reads, template, WeasyPrint),
the same request again (served from the render cache), and GET /get_qr as PNG and as SVG. Each
number is the median of the runs; the render alone (no HTTP, no database) is measured too.
Writes results/YYYY-MM-DD-HHMM-documents.json and .md (not latest.md: that is the server run's).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson

from benchmarks import report
from vitasync_fhir import migrations
from vitasync_fhir.app import create_app
from vitasync_fhir.auth import accounts, tokens
from vitasync_fhir.config import Settings
from vitasync_fhir.db import Database
from vitasync_fhir.documents import links, pdf, prescription, qr, service

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "documents"))
from documents_helpers import medication_request, patient, practitioner  # noqa: E402


async def _token(settings: Settings, role: str) -> str:
    database = Database(settings)

    async def work(session):  # type: ignore[no-untyped-def]
        return await accounts.create_user(
            session,
            email=f"bench.{role}@example.org",
            password="bench passphrase 123",
            role=role,
            verified=True,
            given="Bench",
            family=role.capitalize(),
        )

    try:
        user = await database.run(work)
    finally:
        await database.dispose()
    issued = tokens.issue_access_token(
        settings,
        subject=user.id,
        scope=accounts.login_scope(user),
        fhir_user=user.fhir_user,
        lifetime=3600,
    )
    return issued.token


async def _timed(http: httpx.AsyncClient, path: str, **params: object) -> float:
    start = time.perf_counter()
    answer = await http.get(path, params=params)
    elapsed = time.perf_counter() - start
    if answer.status_code != 200:
        raise RuntimeError(f"{path} answered {answer.status_code}: {answer.text[:300]}")
    return elapsed


async def measure(settings: Settings, count: int, repeats: int) -> dict:
    doctor = {"Authorization": f"Bearer {await _token(settings, 'doctor')}"}
    admin = {"Authorization": f"Bearer {await _token(settings, 'admin')}"}
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    headers = doctor
    async with httpx.AsyncClient(
        transport=transport, base_url=settings.base_url, headers=headers, timeout=120
    ) as http:
        ids = []
        for _ in range(count + 1):
            made = {}
            for name, resource in (("patient", patient()), ("doctor", practitioner())):
                kind = resource["resourceType"]
                answer = await http.post(f"/fhir/{kind}", json=resource, headers=admin)
                made[name] = answer.json()["id"]
            order = medication_request(patient_id=made["patient"], practitioner_id=made["doctor"])
            made = await http.post("/fhir/MedicationRequest", json=order, headers=admin)
            ids.append(made.json()["id"])
        await _timed(http, f"/print_prescription/{ids[0]}")  # warm-up: fonts, template, imports
        first = [await _timed(http, f"/print_prescription/{rid}") for rid in ids[1:]]
        cached = [await _timed(http, f"/print_prescription/{ids[1]}") for _ in range(repeats)]
        png = [await _timed(http, f"/get_qr/{ids[1]}") for _ in range(repeats)]
        svg = [await _timed(http, f"/get_qr/{ids[1]}", format="svg") for _ in range(repeats)]
        size = len((await http.get(f"/print_prescription/{ids[1]}")).content)
    await app.state.db.dispose()
    return {
        "pdf_first_ms": _ms(first),
        "pdf_cached_ms": _ms(cached),
        "qr_png_ms": _ms(png),
        "qr_svg_ms": _ms(svg),
        "render_only_ms": _ms(_render_only(settings, repeats)),
        "qr_png_only_ms": _ms(_qr_only(settings, "png", repeats)),
        "qr_svg_only_ms": _ms(_qr_only(settings, "svg", repeats)),
        "pdf_bytes": size,
        "runs": {"first": len(first), "repeats": repeats},
    }


def _render_only(settings: Settings, repeats: int) -> list[float]:
    request = {**medication_request(patient_id="p", practitioner_id="d"), "id": "bench-1"}
    sources = prescription.Sources(
        request, patient={**patient(), "id": "p"}, practitioner={**practitioner(), "id": "d"}
    )
    link = links.make(settings, "MedicationRequest", "bench-1")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        values = prescription.context(sources)
        values.update(
            clinic=pdf.branding(settings),
            logo=None,
            paper="A4",
            link_expires="-",
            qr=service._data_uri(qr.png(links.url(settings, link), size=1)),
        )
        pdf.render(settings, values)
        times.append(time.perf_counter() - start)
    return times


def _qr_only(settings: Settings, fmt: str, repeats: int) -> list[float]:
    url = links.url(settings, links.make(settings, "MedicationRequest", "bench-1"))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        qr.image(url, fmt=fmt)
        times.append(time.perf_counter() - start)
    return times


def _ms(values: list[float]) -> dict:
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered) * 1000, 2),
        "min": round(ordered[0] * 1000, 2),
        "max": round(ordered[-1] * 1000, 2),
    }


ROWS = (
    ("GET /print_prescription, first render", "pdf_first_ms"),
    ("GET /print_prescription, from the cache", "pdf_cached_ms"),
    ("GET /get_qr (PNG, 300 px)", "qr_png_ms"),
    ("GET /get_qr?format=svg", "qr_svg_ms"),
    ("render alone (template + WeasyPrint)", "render_only_ms"),
    ("QR PNG alone", "qr_png_only_ms"),
    ("QR SVG alone", "qr_svg_only_ms"),
)


def markdown(results: dict) -> str:
    m = results["measurements"]
    lines = [
        f"# Documents benchmark, {results['started']}",
        "",
        f"`{results['command']}` on {results['database']}; {results['machine']['cpu']}, "
        f"commit {results['machine'].get('commit', '?')}. In-process (ASGI), one request at a "
        f"time; {m['runs']['first']} first renders, {m['runs']['repeats']} runs of the others.",
        "",
        "| what | median ms | min ms | max ms |",
        "|---|---:|---:|---:|",
    ]
    for label, name in ROWS:
        x = m[name]
        lines.append(f"| {label} | {x['median']} | {x['min']} | {x['max']} |")
    lines += ["", f"A prescription PDF is {m['pdf_bytes']:,} bytes.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.documents",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--database-url", default=None, help="default: SQLite in a scratch dir")
    parser.add_argument("--prescriptions", type=int, default=15, help="first renders to time")
    parser.add_argument("--repeats", type=int, default=30, help="runs of the other measures")
    parser.add_argument("--no-record", action="store_true", help="print only")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="vitasync-documents-"))
    url = args.database_url or f"sqlite:///{scratch / 'bench.sqlite3'}"
    migrations.upgrade(url)
    settings = Settings(
        database_url=url, data_dir=scratch / "data", base_url="http://127.0.0.1:8000"
    )
    started = datetime.now(UTC)
    measured = asyncio.run(measure(settings, args.prescriptions, args.repeats))
    results = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m benchmarks.documents " + " ".join(argv or sys.argv[1:]),
        "database": "PostgreSQL" if url.startswith("postgresql") else "SQLite",
        "machine": _machine(),
        "measurements": measured,
    }
    text = markdown(results)
    print(text)
    if not args.no_record:
        stem = report.RESULTS / f"{started:%Y-%m-%d-%H%M}-documents"
        stem.with_suffix(".json").write_bytes(
            orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n"
        )
        stem.with_suffix(".md").write_text(text)
        print(f"wrote {stem}.json and .md")


def _machine() -> dict:
    return {
        "cpu": report._cpu_model(),
        "cores": _cores(),
        "commit": report._git("rev-parse", "--short", "HEAD"),
    }


def _cores() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    main()
