"""The declarative /api mappings: load, check, and convert both ways without loss."""

from __future__ import annotations

import pytest

from vitasync_fhir.fhir.validation import validate
from vitasync_fhir.mapping.convert import InvalidInput, from_fhir, to_fhir
from vitasync_fhir.mapping.spec import Mapping, MappingError, load_all, load_file

MAPPINGS = load_all()
SAMPLE_BY_TYPE = {
    "reference": "abc-1",
    "datetime": "2026-01-01T08:00:00+01:00",
    "string": "text",
    "integer": 2,
    "decimal": 1.5,
    "boolean": False,
    "date": "2020-02-29",
    "quantity": 3.5,
}


def sample(mapping: Mapping, *, kind: str | None = None) -> dict:
    """Every field filled: its example, else its first allowed value, else a value of its type."""
    simple = {}
    for name, spec in mapping.fields.items():
        value = spec.example if spec.example is not None else (spec.values or [None])[0]
        simple[name] = value if value is not None else SAMPLE_BY_TYPE[spec.type]
    if mapping.kinds:
        simple[mapping.kinds.field] = kind
        chosen = mapping.kinds.values[kind]  # type: ignore[index]
        if chosen.components:
            simple.pop(mapping.kinds.value_field)
            simple.update({n: 100 + i for i, n in enumerate(chosen.components)})
    return simple


def cases() -> list[tuple[str, str | None]]:
    found: list[tuple[str, str | None]] = []
    for name, mapping in MAPPINGS.items():
        kinds = list(mapping.kinds.values) if mapping.kinds else [None]
        found += [(name, kind) for kind in kinds]
    return found


def test_every_resource_of_the_seed_has_a_mapping():
    assert set(MAPPINGS) == {
        "patients",
        "prescriptions",
        "vaccines",
        "procedures",
        "records",
        "vitals",
        "appointments",
    }


@pytest.mark.parametrize(("name", "kind"), cases())
def test_round_trip_gives_back_the_same_data_and_valid_fhir(name, kind):
    mapping = MAPPINGS[name]
    simple = sample(mapping, kind=kind)
    resource = to_fhir(mapping, simple)
    assert resource["resourceType"] == mapping.resource
    assert validate({**resource, "id": "x1"}) == []
    back = from_fhir(
        mapping,
        {**resource, "id": "x1", "meta": {"versionId": "3", "lastUpdated": "2026-01-01T00:00:00Z"}},
    )
    assert back["id"] == "x1" and back["version"] == 3
    assert {k: back[k] for k in simple} == simple


def test_blood_pressure_puts_systolic_and_diastolic_in_components():
    mapping = MAPPINGS["vitals"]
    resource = to_fhir(
        mapping,
        {
            "kind": "blood_pressure",
            "patient_id": "p1",
            "effective": "2026-01-01T08:00:00Z",
            "systolic": 142,
            "diastolic": 91,
        },
    )
    assert resource["code"]["coding"][0]["code"] == "85354-9"
    assert "valueQuantity" not in resource
    codes = {c["code"]["coding"][0]["code"]: c["valueQuantity"] for c in resource["component"]}
    assert codes["8480-6"] == {
        "value": 142,
        "unit": "mmHg",
        "system": "http://unitsofmeasure.org",
        "code": "mm[Hg]",
    }
    assert codes["8462-4"]["value"] == 91
    assert resource["meta"]["profile"] == ["http://hl7.org/fhir/StructureDefinition/bp"]
    assert resource["category"][0]["coding"][0]["code"] == "vital-signs"


def test_field_errors_name_each_field():
    with pytest.raises(InvalidInput) as caught:
        to_fhir(
            MAPPINGS["prescriptions"],
            {
                "medication": "",
                "refills": "2",
                "status": "done",
                "colour": "red",
                "authored_on": "2026-01-01T00:00:00",
            },
        )
    fields = {e.field: e.message for e in caught.value.errors}
    assert set(fields) == {"medication", "refills", "status", "colour", "patient_id", "authored_on"}
    assert "time zone" in fields["authored_on"]
    with pytest.raises(InvalidInput) as caught:
        to_fhir(
            MAPPINGS["vitals"],
            {
                "kind": "blood_pressure",
                "patient_id": "p",
                "effective": "2026-01-01T00:00:00Z",
                "value": 3,
            },
        )
    assert {e.field for e in caught.value.errors} == {"value", "systolic", "diastolic"}
    with pytest.raises(InvalidInput):
        to_fhir(
            MAPPINGS["vitals"],
            {"kind": "mood", "patient_id": "p", "effective": "2026-01-01T00:00:00Z"},
        )


def test_update_keeps_fhir_elements_the_mapping_does_not_cover():
    mapping = MAPPINGS["patients"]
    stored = to_fhir(mapping, {"family_name": "Doe", "email": "a@example.org", "phone": "1"})
    stored["maritalStatus"] = {"text": "Married"}
    stored["telecom"].append({"system": "fax", "value": "2"})
    updated = to_fhir(mapping, {"family_name": "Roe", "phone": "3"}, existing=stored)
    assert updated["maritalStatus"] == {"text": "Married"}
    assert {t["system"]: t["value"] for t in updated["telecom"]} == {"fax": "2", "phone": "3"}
    assert updated["name"][0]["family"] == "Roe"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\nresource: Nonsense\nfields: {}\n", "not a FHIR R4 resource type"),
        ("name: x\nresource: Patient\nfields: {a: {path: 'name[', type: string}}\n", "is not name"),
        (
            "name: x\nresource: Patient\nfields: {a: {path: link, type: reference}}\n",
            "known target type",
        ),
        (
            "name: x\nresource: Patient\nfields: {a: {path: gender, type: colour}}\n",
            "fields.a.type",
        ),
        ("name: x\nresource: Patient\nfields: {id: {path: id}}\n", "added by the engine"),
        (
            "name: x\nresource: Patient\nfields: {b: {path: birthDate, on_create: now}}\n",
            "fills only a datetime field",
        ),
        ("name: [unclosed\n", "broken"),
    ],
)
def test_a_broken_mapping_stops_with_a_clear_message(tmp_path, text, message):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(MappingError) as caught:
        load_file(path)
    assert "broken.yaml" in str(caught.value)
    assert message in str(caught.value)
