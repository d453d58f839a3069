"""What `vitasync-fhir import` reads and how it says what is wrong: files that disappear while it
runs, symlinked folders and loops, empty folders and archives, and the wording of reasons."""

from __future__ import annotations

import json

import pytest
from factories import patient
from import_helpers import (
    Counts,
    ndjson_lines,
    patient_bundle,
    run_import,
    write_archive,
    write_json,
)

from vitasync_fhir.importer import sources
from vitasync_fhir.importer.load import Loader


def test_files_that_disappear_during_an_import_are_reported_and_the_rest_loads(
    database_url, tmp_path, monkeypatch: pytest.MonkeyPatch
):
    first = write_json(tmp_path / "1.json", patient_bundle("v-1", observations=0))
    gone_early = write_json(tmp_path / "2.json", patient_bundle("v-2", observations=0))
    open_when_gone = tmp_path / "3.ndjson"
    open_when_gone.write_text("\n".join(ndjson_lines(3, prefix="v3")))
    gone_later = write_json(tmp_path / "4.json", patient_bundle("v-4", observations=0))
    read, load = sources.read, Loader.load

    def read_after_removing(files, **options):  # type: ignore[no-untyped-def]
        gone_early.unlink()  # the paths are listed, nothing is read yet
        return read(files, **options)

    async def load_and_remove(self, unit, *args, **options):  # type: ignore[no-untyped-def]
        # 3.ndjson is open and read as it goes: it and a file not read yet disappear.
        if unit.place.source == str(open_when_gone) and open_when_gone.exists():
            open_when_gone.unlink()
            gone_later.unlink()
        await load(self, unit, *args, **options)

    monkeypatch.setattr(sources, "read", read_after_removing)
    monkeypatch.setattr(Loader, "load", load_and_remove)
    paths = [first, gone_early, open_when_gone, gone_later]
    code, output = run_import(database_url, "--batch-size", "1", *map(str, paths))
    assert code == 1, output
    assert f"{gone_early}: cannot read: " in output and f"{gone_later}: cannot read: " in output
    assert "2 failed" in output
    assert Counts(database_url).of("Patient") == 1 + 3  # 3.ndjson was read to its end


def test_symlinked_folders_are_followed_once_and_loops_are_named(database_url, tmp_path):
    data = tmp_path / "data"
    write_json(data / "a.json", patient_bundle("s-a", observations=0))
    elsewhere = write_json(tmp_path / "elsewhere" / "b.json", patient_bundle("s-b")).parent
    (data / "linked").symlink_to(elsewhere, target_is_directory=True)
    (data / "linked-again").symlink_to(elsewhere, target_is_directory=True)
    (data / "sub").mkdir()
    (data / "sub" / "up").symlink_to(data, target_is_directory=True)
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop")
    code, output = run_import(database_url, str(data), str(loop))
    assert code == 1, output
    assert "from 2 files" in output and "1 failed" in output
    assert f"{loop}: a symlink loop" in output and "no such file" not in output
    assert f"note: {data / 'linked-again'}: skipped: it is {elsewhere}" in output
    assert f"note: {data / 'sub' / 'up'}: skipped: it is {data}" in output
    counts = Counts(database_url)
    assert (counts.of("Patient"), counts.of("Observation")) == (2, 2)


def test_an_empty_folder_or_archive_is_a_warning(database_url, tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "readme.txt").write_text("no FHIR here")
    archive = write_archive(tmp_path / "empty.tar.gz", {"readme.md": b"# nothing"})
    code, output = run_import(database_url, str(folder), str(archive))
    assert code == 0, output
    assert f"note: {folder}: no .json, .ndjson or archive file in it" in output
    assert f"note: {archive}: no .json or .ndjson file in it" in output
    assert "imported 0 resources" in output and "no failures" in output


def test_reasons_say_what_is_wrong_in_the_terms_of_the_input(database_url, tmp_path):
    not_a_list = write_json(
        tmp_path / "object.json",
        {"resourceType": "Bundle", "type": "batch", "entry": {"resource": patient()}},
    )
    batch = patient_bundle("m-b", observations=0, kind="batch")
    batch["entry"].append({**batch["entry"][0], "resource": patient(gender="robot")})
    batch_path = write_json(tmp_path / "batch.json", batch)
    lone = write_json(tmp_path / "lone.json", patient(gender="robot"))
    lines = tmp_path / "Patient.ndjson"
    lines.write_text("\n".join([*ndjson_lines(1), json.dumps(patient(gender="robot"))]))
    paths = [not_a_list, batch_path, lone, lines]
    code, output = run_import(database_url, *map(str, paths))
    assert code == 1, output
    assert f"{not_a_list}: Bundle.entry is an object, not a list" in output
    assert f"{batch_path} entry 1: Bundle.entry[1]: 'robot' is not in" in output
    assert f"{lone} resource: Patient.gender: 'robot' is not in" in output
    assert f"{lines} line 2: Patient.gender: 'robot' is not in" in output
    assert "Bundle.entry[0]" not in output
    assert Counts(database_url).of("Patient") == 2
