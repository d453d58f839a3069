"""Search latency on PostgreSQL: the query list of issue 3, at the Synthea scale and tenfold.

    python -m benchmarks.search load      # fresh database, all 617 Synthea bundles posted
    python -m benchmarks.search measure   # p50/p95 of each query, single client, and its plans
    python -m benchmarks.search multiply  # nine more copies of the data, new ids (tenfold)
    python -m benchmarks.search measure

`load` posts every bundle through a real server as `POST /fhir` transactions (as `run ingest`).
`multiply` copies what is stored nine times in SQL: every resource, history row, index row and
compartment row, with `-1` ... `-9` appended to each resource id and to every reference target in
the content and the reference index. The copies are what nine more imports of the same population
with new ids would store, without spending an hour posting them; the content is the same JSON
but for ids, so the index rows are the same but for ids too.

`measure` starts `serve` with two workers, signs in as an admin, picks the query values from the
data (a common family name, the patient with the most Observations, ...), sends each query
`--requests` times one after the other on one kept-alive connection (after `--warmup` unrecorded
ones) and records p50/p95/max. Then it runs each query once more in-process, captures every SQL
statement the server sends and EXPLAINs it: the report names any sequential scan of a table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import orjson
import psycopg

from benchmarks import auth, ingest, report
from benchmarks.procs import Postgres, migrate
from benchmarks.procs import vitasync_server as start_vitasync

DATABASE = "vitasync_bench_search"
COPIES = 9  # with the original: tenfold
RESULTS = Path(__file__).with_name("results")

# (name, query template); values in braces are picked from the data by `pick_values`.
QUERIES: list[tuple[str, str]] = [
    ("Patient by name", "/fhir/Patient?name={family}"),
    ("Patient by birthdate", "/fhir/Patient?birthdate=ge{born_after}"),
    ("Observation by patient, code, date",
     "/fhir/Observation?patient={patient}&code=http://loinc.org|{code}&date=ge{since}"),
    ("Systolic > 140 (combo-code-value-quantity)",
     "/fhir/Observation?combo-code-value-quantity=http://loinc.org|8480-6$gt140"),
    ("Active prescriptions with requester",
     "/fhir/MedicationRequest?patient={rx_patient}&status=active"
     "&_include=MedicationRequest:requester"),
    ("Encounters in a month, newest first",
     "/fhir/Encounter?date=ge{month}&date=lt{month_end}&_sort=-date&_count=50"),
    ("Patients with a blood pressure panel (_has)",
     "/fhir/Patient?_has:Observation:patient:code=http://loinc.org|55284-4"),
    ("Page 200 of Observation?_sort=-_lastUpdated", "deep-page"),
    # Not in the list: the hard case for _has, a code many Observations carry but on a
    # minority of the patients (neither gathering the sources nor walking the patients is cheap).
    ("_has on a code of a minority of patients (beyond the issue's list)",
     "/fhir/Patient?_has:Observation:patient:code=http://loinc.org|{minority_code}"),
]
DEEP_PAGE = "/fhir/Observation?_sort=-_lastUpdated&_count=20"
DEEP_PAGE_NUMBER = 200
TARGET_P95_MS = 50.0
LARGE_TABLE_ROWS = 10_000  # a sequential scan of a smaller table is no finding

SEARCH_TABLES = ("search_string", "search_token", "search_date", "search_number",
                 "search_quantity", "search_reference", "search_uri", "search_composite")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("load", "multiply", "measure"))
    parser.add_argument("--database", default=DATABASE)
    parser.add_argument("--limit", type=int, default=None, help="load: only N patient bundles")
    parser.add_argument("--requests", type=int, default=40, help="measure: timed requests a query")
    parser.add_argument("--warmup", type=int, default=5, help="measure: untimed requests first")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-record", action="store_true")
    return parser.parse_args(argv)


# -- load and multiply ---------------------------------------------------------------------------


def load(args: argparse.Namespace, pg: Postgres) -> None:
    pg.recreate(args.database)
    url = pg.sqlalchemy_url(args.database)
    migrate(url)
    info, patients = ingest.load_archive(limit=args.limit)
    server = start_vitasync(database_url=url, workers=args.workers, pool_size=10,
                            token_seconds=6 * 3600)
    server.start()
    try:
        token = auth.admin_token(base_url=server.base_url, database_url=url)
        started = time.perf_counter()
        results, _, total = asyncio.run(ingest.post_all(server.base_url, token, info, patients,
                                                        posters=4))
        failed = [r for r in results if r.error]
        count = sum(len(r.locations) for r in results)
        with psycopg.connect(pg.dsn(args.database), autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")  # as autovacuum would, some time after a bulk load
        print(f"loaded {count:,} resources from {len(results)} bundles in "
              f"{time.perf_counter() - started:.0f} s ({count / total:.0f}/s), "
              f"{len(failed)} failed", flush=True)
    finally:
        server.stop()


def _suffixed(column: str, k: int) -> str:
    return f"{column} || '-{k}'"


def multiply(args: argparse.Namespace, pg: Postgres) -> None:
    """Nine more copies of every stored row, ids and references suffixed `-1` ... `-9`."""
    with psycopg.connect(pg.dsn(args.database), autocommit=True) as conn:
        present = conn.execute("SELECT count(*) FROM resources WHERE id LIKE '%-_'").fetchone()
        if present and present[0]:
            raise SystemExit("the database already holds copies; `load` again to start afresh")
        for k in range(1, COPIES + 1):
            started = time.perf_counter()
            with conn.transaction():
                _copy(conn, k)
            print(f"copy {k}: {time.perf_counter() - started:.0f} s", flush=True)
        # As autovacuum would, some time after a bulk load: statistics, and the visibility map
        # that lets index-only scans skip the table (without it every index read visits the heap).
        conn.execute("VACUUM ANALYZE")


def _copy(conn: psycopg.Connection, k: int) -> None:
    # Every UUID-shaped id in the JSON: the resource's own, and every reference target.
    content = (
        "regexp_replace(content, "
        r"'(\"(?:id|reference)\":\"(?:[A-Za-z]+/)?)([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-"
        r"[0-9a-f]{4}-[0-9a-f]{12})\"', "
        f"'\\1\\2-{k}\"', 'g')"
    )
    shift = f"interval '{k} milliseconds'"
    conn.execute(
        f"INSERT INTO resources (resource_type, id, version_id, last_updated, deleted, content) "
        f"SELECT resource_type, {_suffixed('id', k)}, version_id, last_updated + {shift}, "
        f"deleted, {content} FROM resources WHERE id NOT LIKE '%-_'")
    conn.execute(
        f"INSERT INTO resource_history (resource_type, id, version_id, last_updated, method, "
        f"deleted, content) SELECT resource_type, {_suffixed('id', k)}, version_id, "
        f"last_updated + {shift}, method, deleted, {content} FROM resource_history "
        f"WHERE id NOT LIKE '%-_' ORDER BY seq")
    for table in SEARCH_TABLES:
        columns = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
            "ORDER BY ordinal_position", (table,)).fetchall()]
        chosen = []
        for name in columns:
            if name == "resource_id" or (table == "search_reference" and name == "target_id"):
                chosen.append(f"CASE WHEN {name} ~ '^[0-9a-f-]{{36}}$' "
                              f"THEN {_suffixed(name, k)} ELSE {name} END"
                              if name == "target_id" else _suffixed(name, k))
            else:
                chosen.append(name)
        conn.execute(f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(chosen)} "
                     f"FROM {table} WHERE resource_id NOT LIKE '%-_'")
    conn.execute(
        f"INSERT INTO resource_compartments (resource_type, resource_id, compartment_type, "
        f"compartment_id) SELECT resource_type, {_suffixed('resource_id', k)}, compartment_type, "
        f"{_suffixed('compartment_id', k)} FROM resource_compartments "
        f"WHERE resource_id NOT LIKE '%-_'")


# -- measure -------------------------------------------------------------------------------------


def pick_values(conn: psycopg.Connection) -> dict[str, str]:
    """Query values that select realistically: common names, the busiest patient, ..."""

    def one(sql: str) -> str:
        row = conn.execute(sql).fetchone()
        if row is None:
            raise SystemExit(f"no data for: {sql}")
        return str(row[0])

    since = "2015-01-01"
    since_us = int(datetime(2015, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)
    # The patient with the most Observations since `since`: the heaviest realistic case.
    patient = one("SELECT r.target_id FROM search_reference r JOIN search_date d "
                  "ON d.resource_type = r.resource_type AND d.resource_id = r.resource_id "
                  "WHERE r.resource_type = 'Observation' AND r.param = 'patient' "
                  f"AND d.param = 'date' AND d.low >= {since_us} "
                  "GROUP BY r.target_id ORDER BY count(*) DESC LIMIT 1")
    return {
        "family": one("SELECT value FROM search_string WHERE resource_type = 'Patient' "
                      "AND param = 'family' GROUP BY value ORDER BY count(*) DESC LIMIT 1"),
        "born_after": "2000-01-01",
        "patient": patient,
        "code": one("SELECT t.code FROM search_token t JOIN search_reference r "
                    "ON r.resource_type = t.resource_type AND r.resource_id = t.resource_id "
                    "WHERE t.resource_type = 'Observation' AND t.param = 'code' "
                    "AND t.system = 'http://loinc.org' AND r.param = 'patient' "
                    f"AND r.target_id = '{patient}' GROUP BY t.code ORDER BY count(*) DESC "
                    "LIMIT 1"),
        "since": since,
        "rx_patient": one(
            "SELECT r.target_id FROM search_reference r JOIN search_token t "
            "ON t.resource_type = r.resource_type AND t.resource_id = r.resource_id "
            "WHERE r.resource_type = 'MedicationRequest' AND r.param = 'patient' "
            "AND t.param = 'status' AND t.code = 'active' "
            "GROUP BY r.target_id ORDER BY count(*) DESC LIMIT 1"),
        "month": "2019-06-01",
        "month_end": "2019-07-01",
        # The LOINC code with the most Observations among those on under a quarter of patients.
        "minority_code": one(
            "SELECT t.code FROM search_token t JOIN search_reference r "
            "ON r.resource_type = t.resource_type AND r.resource_id = t.resource_id "
            "AND r.param = 'patient' WHERE t.resource_type = 'Observation' AND t.param = 'code' "
            "AND t.system = 'http://loinc.org' GROUP BY t.code "
            "HAVING count(DISTINCT r.target_id) < 0.25 * (SELECT count(*) FROM resources "
            "WHERE resource_type = 'Patient') ORDER BY count(*) DESC LIMIT 1"),
    }


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def deep_page_url(http: httpx.Client) -> str:
    """The link to page 200, followed from page 1 (keyset links: no offset to jump to)."""
    url = DEEP_PAGE
    for _ in range(DEEP_PAGE_NUMBER - 1):
        bundle = http.get(url).raise_for_status().json()
        url = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def time_query(http: httpx.Client, path: str, *, warmup: int, requests: int) -> dict:
    for _ in range(warmup):
        http.get(path).raise_for_status()
    took: list[float] = []
    entries = 0
    for _ in range(requests):
        started = time.perf_counter()
        answer = http.get(path)
        took.append((time.perf_counter() - started) * 1000)
        answer.raise_for_status()
        entries = len(answer.json().get("entry") or [])
    return {"p50_ms": round(statistics.median(took), 1), "p95_ms": round(_percentile(took, 95), 1),
            "max_ms": round(max(took), 1), "entries": entries, "requests": requests}


def plans(url: str, base_url: str, token: str, paths: list[str]) -> list[list[str]]:
    """For each path: the sequential scans of large tables in the plans of its SQL."""
    from sqlalchemy import event

    from vitasync_fhir.app import create_app
    from vitasync_fhir.config import Settings

    app = create_app(Settings(database_url=url, base_url=base_url))  # the server's key and aud
    captured: list[tuple[str, object]] = []
    event.listen(app.state.db.engine.sync_engine, "before_cursor_execute",
                 lambda _c, _cur, statement, parameters, *_: captured.append(
                     (statement, parameters)))

    async def run() -> list[list[str]]:
        found: list[list[str]] = []
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://bench",
                                     headers=headers) as http:
            for path in paths:
                captured.clear()
                (await http.get(path)).raise_for_status()
                statements = [(s, p) for s, p in captured if s.lstrip().upper().startswith(
                    ("SELECT", "WITH"))]
                found.append(await _seq_scans(app, statements))
        app.state.audit_trail.close()
        await app.state.db.dispose()
        return found

    return asyncio.run(run())


async def _seq_scans(app, statements: list[tuple[str, object]]) -> list[str]:  # type: ignore[no-untyped-def]
    scans: list[str] = []
    async with app.state.db.engine.connect() as conn:
        for statement, parameters in statements:
            result = await conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters)
            plan = result.scalar_one()
            plan = orjson.loads(plan) if isinstance(plan, str | bytes) else plan
            scans += _walk(plan[0]["Plan"])
    return sorted(set(scans))


def _walk(node: dict) -> list[str]:
    found = []
    if node.get("Node Type") == "Seq Scan":
        found.append(node.get("Relation Name", "?"))
    for child in node.get("Plans", []):
        found += _walk(child)
    return found


def measure(args: argparse.Namespace, pg: Postgres) -> dict:
    url = pg.sqlalchemy_url(args.database)
    migrate(url)
    with psycopg.connect(pg.dsn(args.database)) as conn:
        values = pick_values(conn)
        resources = conn.execute("SELECT count(*) FROM resources").fetchone()[0]
        sizes = dict(conn.execute(
            "SELECT relname, reltuples::bigint FROM pg_class WHERE relkind = 'r'").fetchall())
    server = start_vitasync(database_url=url, workers=args.workers, pool_size=10,
                            token_seconds=6 * 3600)
    server.start()
    rows = []
    try:
        token = auth.admin_token(base_url=server.base_url, database_url=url)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=120) as http:
            paths = [deep_page_url(http) if q == "deep-page" else q.format(**values)
                     for _, q in QUERIES]
            for (name, _), path in zip(QUERIES, paths, strict=True):
                timing = time_query(http, path, warmup=args.warmup, requests=args.requests)
                rows.append({"name": name, "path": path, **timing})
                print(f"{name}: p50 {timing['p50_ms']} ms, p95 {timing['p95_ms']} ms, "
                      f"{timing['entries']} entries", flush=True)
    finally:
        server.stop()
    found = plans(url, server.base_url, token, [r["path"] for r in rows])
    for row, scans in zip(rows, found, strict=True):
        row["seq_scans"] = [s for s in scans if sizes.get(s, 0) >= LARGE_TABLE_ROWS]
    return {"resources": resources, "values": values, "queries": rows,
            "load_average": list(os.getloadavg())}


def render(r: dict) -> str:
    lines = [f"# Search latency, {r['started']}", "",
             f"PostgreSQL, {r['resources']:,} resources; `serve --workers 2`, one client, "
             f"{r['queries'][0]['requests']} timed requests a query after warm-up, authenticated "
             f"(admin). Load average at the end: "
             f"{', '.join(f'{x:.1f}' for x in r['load_average'])}. Machine: {r['machine']}.", "",
             "| query | p50 ms | p95 ms | max ms | entries | p95 < 50 ms | sequential scans |",
             "|---|---|---|---|---|---|---|"]
    for q in r["queries"]:
        met = "met" if q["p95_ms"] < TARGET_P95_MS else "**not met**"
        scans = ", ".join(q["seq_scans"]) or "none"
        lines.append(f"| {q['name']} | {q['p50_ms']} | {q['p95_ms']} | {q['max_ms']} | "
                     f"{q['entries']} | {met} | {scans} |")
    lines += ["", "Queries as sent:", ""]
    lines += [f"- {q['name']}: `{q['path'][:160]}`" for q in r["queries"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    pg = Postgres("127.0.0.1", 5432, "postgres")
    os.environ.setdefault("VITASYNC_DATA_DIR", tempfile.mkdtemp(prefix="vitasync-search-"))
    if args.command == "load":
        load(args, pg)
        return 0
    if args.command == "multiply":
        multiply(args, pg)
        return 0
    started = datetime.now(UTC)
    results = measure(args, pg)
    results["started"] = started.strftime("%Y-%m-%d %H:%M UTC")
    results["machine"] = f"{os.cpu_count()} cores, {report._cpu_model()}"
    markdown = render(results)
    print(markdown)
    if not args.no_record:
        RESULTS.mkdir(exist_ok=True)
        stem = started.strftime("%Y-%m-%d-%H%M") + f"-search-{results['resources'] // 1000}k"
        (RESULTS / f"{stem}.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
        (RESULTS / f"{stem}.md").write_text(markdown)
        print(f"recorded {RESULTS / stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
