"""`vitasync-fhir import` as an operator runs it, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

from factories import observation, patient
from import_helpers import (
    Counts,
    ndjson_lines,
    patient_bundle,
    run_import,
    write_archive,
    write_json,
)
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from vitasync_fhir.cli import cli
from vitasync_fhir.db import sync_url


def test_transaction_and_batch_bundles_load_and_a_second_run_skips_them(
    database_url, tmp_path, client
):
    first = write_json(tmp_path / "a.json", patient_bundle("mrn-a", observations=3))
    batch = write_json(tmp_path / "b.json", patient_bundle("mrn-b", observations=0, kind="batch"))
    code, output = run_import(database_url, str(first), str(batch))
    assert code == 0, output
    assert "imported 5 resources" in output and "no failures" in output
    counts = Counts(database_url)
    assert (counts.of("Patient"), counts.of("Observation")) == (2, 3)
    assert counts.progress() == 2  # the transaction Bundle, and the batch's one entry
    # The urn:uuid references were resolved to the Patient's server id.
    found = client.get("/fhir/Observation", params={"subject.identifier": "urn:test:mrn|mrn-a"})
    assert found.status_code == 200 and found.json()["total"] == 3

    code, output = run_import(database_url, str(first), str(batch))
    assert code == 0, output
    assert "imported 0 resources" in output and "skipped 2 units (5 resources)" in output
    assert (counts.of("Patient"), counts.of("Observation")) == (2, 3)


def test_ndjson_loads_in_runs_and_a_bad_line_is_reported_while_the_rest_loads(
    database_url, tmp_path
):
    lines = ndjson_lines(25)
    lines[12] = json.dumps({**json.loads(lines[12]), "gender": "robot"})  # line 13: invalid code
    lines[16] = '{"resourceType": "Patient", '  # line 17: cut short
    path = tmp_path / "Patient.ndjson"
    path.write_text("\n".join(lines) + "\n\n")
    code, output = run_import(database_url, "--batch-size", "10", str(path))
    assert code == 1
    assert f"{path} line 13: " in output and "gender" in output
    assert f"{path} line 17: line 17 is not valid JSON" in output
    counts = Counts(database_url)
    assert counts.of("Patient") == 23
    # Ids from the file are kept, so resources exported elsewhere keep their references.
    assert counts.scalar("SELECT count(*) FROM resources WHERE id = 'nd-24'") == 1

    code, output = run_import(database_url, "--batch-size", "10", str(path))
    assert "imported 0 resources" in output and "skipped 10 units (23 resources)" in output
    assert counts.of("Patient") == 23


def test_folders_and_xz_and_gz_archives_load_without_unpacking(database_url, tmp_path):
    folder = tmp_path / "in"
    write_json(folder / "one.json", patient_bundle("f-1"))
    write_json(folder / "deeper" / "two.json", patient_bundle("f-2"))
    (folder / "deeper" / "notes.txt").write_text("not FHIR, not read")
    (folder / "Patient.ndjson").write_text("\n".join(ndjson_lines(3, prefix="fn")))
    members = {
        "set/x1.json": json.dumps(patient_bundle("x-1")).encode(),
        "set/x2.json": json.dumps(patient_bundle("x-2")).encode(),
        "set/readme.md": b"# ignored",
        "set/Patient.ndjson": "\n".join(ndjson_lines(4, prefix="xn")).encode(),
    }
    xz = write_archive(tmp_path / "set.tar.xz", members)
    gz = write_archive(
        tmp_path / "set.tar.gz", {"g.json": json.dumps(patient_bundle("g")).encode()}
    )
    code, output = run_import(database_url, str(folder), str(xz), str(gz))
    assert code == 0, output
    assert "from 5 files" in output
    counts = Counts(database_url)
    assert counts.of("Patient") == 2 + 3 + 2 + 4 + 1
    assert counts.of("Observation") == 2 * 5
    places = counts.scalar(
        "SELECT count(*) FROM import_progress WHERE source = :s AND member = 'set/x2.json'",
        s=str(xz.resolve()),
    )
    assert places == 1


def test_bad_files_are_reported_with_their_reasons_while_the_rest_loads(database_url, tmp_path):
    good = write_json(tmp_path / "good.json", patient_bundle("good"))
    broken = tmp_path / "broken.json"
    broken.write_text('{"resourceType": "Bundle", "type": "transaction", "entry": [')
    collection = write_json(
        tmp_path / "collection.json", {**patient_bundle("c"), "type": "collection"}
    )
    invalid_bundle = patient_bundle("bad")
    invalid_bundle["entry"][1]["resource"]["status"] = "guessed"
    invalid = write_json(tmp_path / "invalid.json", invalid_bundle)
    other = tmp_path / "data.csv"
    other.write_text("a,b")
    code, output = run_import(
        database_url,
        str(good),
        str(broken),
        str(collection),
        str(invalid),
        str(other),
        str(tmp_path / "missing.json"),
    )
    assert code == 1
    assert f"{broken}: not valid JSON" in output
    assert f"{collection}: a Bundle of type 'collection'" in output
    assert f"{invalid} bundle: Bundle.entry[1]" in output and "status" in output
    assert f"{other}: not a .json, .ndjson, .tar.xz or .tar.gz file" in output
    assert "missing.json: no such file or folder" in output
    counts = Counts(database_url)
    assert (counts.of("Patient"), counts.of("Observation")) == (1, 2)  # the invalid one rolled back


def test_a_conditional_reference_to_a_later_file_waits_for_it(database_url, tmp_path):
    early = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": observation(patient_ref="Patient?identifier=urn:test:mrn|late"),
                "request": {"method": "POST", "url": "Observation"},
            }
        ],
    }
    never = json.loads(json.dumps(early))
    never["entry"][0]["resource"]["subject"]["reference"] = "Patient?identifier=urn:test:mrn|nobody"
    paths = [
        write_json(tmp_path / "1-early.json", early),
        write_json(tmp_path / "2-never.json", never),
        write_json(tmp_path / "3-late.json", {**patient(identifier="late"), "id": "late"}),
    ]
    code, output = run_import(database_url, *map(str, paths))
    assert code == 1
    assert "2-never.json bundle: " in output and "matches no resource" in output
    counts = Counts(database_url)
    assert counts.of("Observation") == 1
    assert (
        counts.scalar(
            "SELECT count(*) FROM resources WHERE resource_type = 'Observation' "
            "AND content LIKE '%\"Patient/late\"%'"
        )
        == 1
    )


def test_the_synthea_sample_bundles_load(database_url, synthea_dir, client):
    code, output = run_import(database_url, *map(str, sorted(synthea_dir.glob("*.json"))))
    assert code == 0, output
    counts = Counts(database_url)
    expected = sum(len(json.loads(p.read_text())["entry"]) for p in synthea_dir.glob("*.json"))
    assert counts.scalar("SELECT count(*) FROM resources") == expected
    assert counts.of("Patient") == 3


def test_an_import_killed_midway_resumes_without_losing_or_duplicating(database_url, tmp_path):
    bundles = 240
    archive = write_archive(
        tmp_path / "many.tar.xz",
        {
            f"b/{n:04}.json": json.dumps(patient_bundle(f"k-{n}", observations=9)).encode()
            for n in range(bundles)
        },
    )
    env = {
        **os.environ,
        "VITASYNC_DATABASE_URL": database_url,
        "VITASYNC_DATA_DIR": str(tmp_path / "var"),
    }
    command = [sys.executable, "-m", "vitasync_fhir.cli", "import", "--quiet", str(archive)]
    counts = Counts(database_url)
    process = subprocess.Popen(command, env=env, cwd=tmp_path, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while counts.progress() < 15:
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        assert time.monotonic() < deadline, "the import loaded nothing in 2 minutes"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted = counts.progress()
    assert 15 <= interrupted < bundles, "the kill came too late to test anything"
    assert counts.of("Patient") == interrupted  # nothing written without its progress row

    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"skipped {interrupted} units" in done.stderr
    assert counts.progress() == bundles
    assert (counts.of("Patient"), counts.of("Observation")) == (bundles, bundles * 9)
    by_identifier = counts.patients_by_identifier()
    assert len(by_identifier) == bundles and set(by_identifier.values()) == {1}


def test_the_command_is_listed():
    help_text = CliRunner().invoke(cli, ["import", "--help"]).output
    assert "NDJSON" in help_text and "--batch-size" in help_text and "--jobs" in help_text


def test_two_imports_of_the_same_input_at_once_load_it_once(database_url, tmp_path):
    bundles = 40
    archive = write_archive(
        tmp_path / "twice.tar.gz",
        {
            f"{n:03}.json": json.dumps(patient_bundle(f"t-{n}", observations=4)).encode()
            for n in range(bundles)
        },
    )
    env = {**os.environ, "VITASYNC_DATABASE_URL": database_url}
    command = [sys.executable, "-m", "vitasync_fhir.cli", "import", "--quiet", str(archive)]
    both = [
        subprocess.Popen(command, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=300)[1] for process in both]
    assert [process.returncode for process in both] == [0, 0], outputs
    counts = Counts(database_url)
    assert (counts.of("Patient"), counts.of("Observation")) == (bundles, bundles * 4)
    assert set(counts.patients_by_identifier().values()) == {1}
    assert counts.progress() == bundles


def test_an_import_leaves_planner_statistics_behind(database_url, tmp_path):
    """ANALYZE after the load: searches must not be planned on the statistics of empty tables."""
    bundle = write_json(tmp_path / "a.json", patient_bundle("mrn-stats", observations=3))
    engine = create_engine(sync_url(database_url))
    started = datetime.now(UTC)
    code, output = run_import(database_url, str(bundle))
    assert code == 0, output
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            analyzed = conn.execute(
                text("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'search_token'")
            ).scalar_one()
            assert analyzed is not None and analyzed >= started
        else:
            rows = conn.execute(
                text("SELECT count(*) FROM sqlite_stat1 WHERE tbl = 'search_token'")
            ).scalar_one()
            assert rows > 0
    engine.dispose()
