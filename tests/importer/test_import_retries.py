"""Deferred retries of `vitasync-fhir import` (conditional references resolved in later passes
over the input) report each problem once and count only earlier runs' units as imported before."""

from __future__ import annotations

import json

from factories import observation, patient
from import_helpers import Counts, run_import, write_json


def test_each_problem_is_reported_once_however_many_passes_retry(database_url, tmp_path):
    lines = [
        observation(patient_ref="Patient?identifier=urn:test:mrn|late"),  # resolves in pass 2
        '{"resourceType": "Patient", ',
        patient(gender="robot"),
        {**patient(identifier="early"), "id": "early"},
        observation(patient_ref="Patient?identifier=urn:test:mrn|nobody"),  # never resolves
    ]
    first = tmp_path / "1-lines.ndjson"
    first.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines))
    late = write_json(tmp_path / "2-late.json", {**patient(identifier="late"), "id": "late"})
    broken = tmp_path / "3-broken.json"
    broken.write_text("{")

    code, output = run_import(database_url, *map(str, (first, late, broken)))
    assert code == 1, output
    assert "4 failed:" in output
    for where in ("line 2: ", "line 3: ", "line 5: "):
        assert output.count(f"{first} {where}") == 1, output
    assert output.count(f"{broken}: ") == 1
    assert "imported before" not in output
    assert "imported 3 resources in 3 units" in output
    counts = Counts(database_url)
    assert (counts.of("Patient"), counts.of("Observation")) == (2, 1)

    code, output = run_import(database_url, *map(str, (first, late, broken)))
    assert code == 1, output
    assert "4 failed:" in output
    assert "skipped 3 units (3 resources) imported before" in output
    assert "imported 0 resources" in output
