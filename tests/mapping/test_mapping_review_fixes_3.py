"""The path steps that pick an item by what it is rather than where it stands: `[key?=a|b]` (the
name a person goes by) and `[:Type]` (the Practitioner among an Observation's performers)."""

from __future__ import annotations

import pytest

from vitasync_fhir.mapping import paths
from vitasync_fhir.mapping.spec import MappingError, load_file

GOES_BY = paths.parse("name[use?=official|usual].family")
DOCTOR = paths.parse("performer[:Practitioner]")


def test_a_use_step_skips_old_names_and_takes_one_without_a_use():
    names = {"name": [{"use": "maiden", "family": "A"}, {"family": "B"}, {"use": "usual"}]}
    assert paths.get(names, GOES_BY) == "B"
    paths.put(names, GOES_BY, "C")
    assert names["name"] == [{"use": "maiden", "family": "A"}, {"family": "C"}, {"use": "usual"}]
    paths.remove(names, GOES_BY)
    assert names["name"] == [{"use": "maiden", "family": "A"}, {"use": "usual"}]


def test_a_use_step_adds_a_name_without_a_use_beside_the_old_ones():
    names = {"name": [{"use": "old", "family": "A"}]}
    assert paths.get(names, GOES_BY) is None
    paths.put(names, GOES_BY, "B")
    assert names["name"] == [{"use": "old", "family": "A"}, {"family": "B"}]


def test_a_type_step_sets_and_removes_the_reference_of_that_type_only():
    clinic = {"reference": "Organization/1"}
    observation = {"performer": [clinic]}
    assert paths.get(observation, DOCTOR) is None
    paths.put(observation, DOCTOR, {"reference": "Practitioner/2"})
    paths.put(observation, DOCTOR, {"reference": "Practitioner/3"})
    assert observation["performer"] == [clinic, {"reference": "Practitioner/3"}]
    paths.remove(observation, DOCTOR)
    assert observation["performer"] == [clinic]


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ('{path: birthDate, type: date, fallback: "name[0].text"}', "fallback"),
        ('{path: gender, fallback: "name[use?=].text"}', "is not name"),
    ],
)
def test_a_broken_fallback_stops_with_a_clear_message(tmp_path, field, message):
    path = tmp_path / "broken.yaml"
    path.write_text(f"name: x\nresource: Patient\nfields: {{a: {field}}}\n")
    with pytest.raises(MappingError) as caught:
        load_file(path)
    assert message in str(caught.value)
