"""A record a partner wrote through /fhir, edited through /api: the edit changes what it asks for
and nothing else, and what /api cannot show as its own is left as the partner wrote it."""

from __future__ import annotations

import copy

import pytest

from vitasync_fhir.fhir.validation import validate
from vitasync_fhir.mapping.convert import InvalidInput, from_fhir, to_fhir
from vitasync_fhir.mapping.spec import load_all

MAPPINGS = load_all()
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"


def edit(name: str, stored: dict, **changes: object) -> dict:
    """What an /api client does: read the record, change some fields, send it all back."""
    mapping = MAPPINGS[name]
    stored = {"id": "r1", "meta": {"versionId": "1"}, **stored}
    sent = {**from_fhir(mapping, stored), **changes}
    updated = to_fhir(mapping, sent, existing=copy.deepcopy(stored))
    assert validate(updated) == [], updated
    return updated


def unchanged_except(before: dict, after: dict, *keys: str) -> None:
    before = {k: v for k, v in before.items() if k not in keys}
    assert {k: v for k, v in after.items() if k not in keys and k not in ("id", "meta")} == before


def test_editing_the_first_given_name_keeps_the_second():
    stored = {
        "resourceType": "Patient",
        "name": [{"family": "Roe", "given": ["Ann", "Marie"]}, {"use": "maiden", "family": "Old"}],
        "address": [{"line": ["1 Main Street", "Apt 2"], "city": "Springfield"}],
    }
    updated = edit("patients", stored, given_name="Anna", address_line="2 Main Street")
    assert updated["name"] == [
        {"family": "Roe", "given": ["Anna", "Marie"]},
        {"use": "maiden", "family": "Old"},
    ]
    assert updated["address"][0]["line"] == ["2 Main Street", "Apt 2"]


@pytest.mark.parametrize(
    ("name", "stored"),
    [
        (
            "prescriptions",
            {
                "resourceType": "MedicationRequest",
                "status": "active",
                "intent": "order",
                "medicationCodeableConcept": {"text": "Amoxicillin"},
                "subject": {"reference": "Patient/p1"},
            },
        ),
        (
            "vaccines",
            {
                "resourceType": "Immunization",
                "status": "completed",
                "vaccineCode": {"text": "Flu"},
                "patient": {"reference": "Patient/p1"},
                "occurrenceDateTime": "2024-01-01T10:00:00Z",
            },
        ),
        (
            "procedures",
            {
                "resourceType": "Procedure",
                "status": "completed",
                "code": {"text": "Suture"},
                "subject": {"reference": "Patient/p1"},
            },
        ),
    ],
)
def test_editing_the_first_note_keeps_the_second(name, stored):
    stored["note"] = [{"text": "first"}, {"text": "second", "authorString": "Dr Who"}]
    updated = edit(name, stored, notes="edited")
    assert updated["note"] == [{"text": "edited"}, {"text": "second", "authorString": "Dr Who"}]
    assert edit(name, stored, status="entered-in-error")["note"] == stored["note"]


def test_an_emergency_encounter_stays_an_emergency_and_keeps_its_reasons():
    stored = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"},
        "subject": {"reference": "Patient/p1", "display": "Ann Roe"},
        "participant": [
            {"individual": {"reference": "Practitioner/d1", "display": "Dr Who"}},
        ],
        "reasonCode": [{"text": "Chest pain"}, {"text": "Dizziness"}],
    }
    updated = edit("records", stored, reason="Chest pain, resolved")
    assert updated["reasonCode"] == [{"text": "Chest pain, resolved"}, {"text": "Dizziness"}]
    unchanged_except(stored, updated, "reasonCode")


def test_references_of_another_type_read_as_none_and_are_kept():
    stored = {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "original-order",
        "medicationReference": {"reference": "#med"},
        "contained": [{"resourceType": "Medication", "id": "med", "code": {"text": "Amoxicillin"}}],
        "subject": {"reference": "Patient/p1", "display": "Ann Roe"},
        "requester": {"reference": "Organization/o1"},
    }
    simple = from_fhir(MAPPINGS["prescriptions"], {"id": "r1", **stored})
    assert simple["prescriber_id"] is None and simple["patient_id"] == "p1"
    updated = edit("prescriptions", stored, notes="with food")
    assert updated["note"] == [{"text": "with food"}]
    unchanged_except(stored, updated, "note")
    procedure = {
        "resourceType": "Procedure",
        "status": "in-progress",
        "code": {"text": "Suture"},
        "subject": {"reference": "Patient/p1"},
        "contained": [{"resourceType": "Practitioner", "id": "c1", "name": [{"family": "C"}]}],
        "performer": [{"actor": {"reference": "#c1"}}],
    }
    assert from_fhir(MAPPINGS["procedures"], procedure)["performer_id"] is None
    unchanged_except(procedure, edit("procedures", procedure, notes="x"), "note")


def test_a_performed_period_reads_as_its_start_and_an_edit_replaces_it():
    stored = {
        "resourceType": "Procedure",
        "status": "completed",
        "code": {"text": "Suture"},
        "subject": {"reference": "Patient/p1"},
        "performedPeriod": {"start": "2024-01-01T10:00:00Z", "end": "2024-01-01T11:00:00Z"},
    }
    assert from_fhir(MAPPINGS["procedures"], stored)["performed_at"] == "2024-01-01T10:00:00Z"
    unchanged_except(stored, edit("procedures", stored, notes="x"), "note")
    updated = edit("procedures", stored, performed_at="2024-02-01T10:00:00Z")
    assert updated["performedDateTime"] == "2024-02-01T10:00:00Z"
    assert "performedPeriod" not in updated


def vital(**extra: object) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                        "display": "vital-signs",
                    }
                ]
            }
        ],
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2024-01-01",
        **extra,
    }


def test_editing_a_vital_keeps_its_codings_interpretation_and_other_components():
    weight = vital(
        code={
            "coding": [
                {"system": LOINC, "code": "29463-7", "display": "Body Weight"},
                {"system": SNOMED, "code": "27113001"},
            ],
            "text": "Weight",
        },
        valueQuantity={"value": 70, "unit": "kg", "system": UCUM, "code": "kg"},
        interpretation=[{"text": "normal"}],
    )
    updated = edit("vitals", weight, value=71)
    assert updated["valueQuantity"]["value"] == 71
    unchanged_except(weight, updated, "valueQuantity")
    pressure = vital(
        code={
            "coding": [{"system": LOINC, "code": "85354-9"}, {"system": SNOMED, "code": "75367002"}]
        },
        component=[
            {
                "code": {
                    "coding": [
                        {"system": LOINC, "code": "8480-6"},
                        {"system": SNOMED, "code": "271649006"},
                    ]
                },
                "valueQuantity": {"value": 120, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
                "interpretation": [{"text": "N"}],
            },
            {
                "code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                "valueQuantity": {"value": 80, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
            },
            {
                "code": {"coding": [{"system": LOINC, "code": "8478-0"}]},
                "valueQuantity": {"value": 93, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
            },
        ],
    )
    updated = edit("vitals", pressure, systolic=130)
    expected = copy.deepcopy(pressure)
    expected["component"][0]["valueQuantity"]["value"] = 130
    unchanged_except(expected, updated)


def test_a_value_in_another_unit_or_shape_is_not_shown_as_a_number_of_ours_and_is_kept():
    pounds = vital(
        code={"coding": [{"system": LOINC, "code": "29463-7"}]},
        valueQuantity={"value": 154, "unit": "lb", "system": UCUM, "code": "[lb_av]"},
    )
    assert from_fhir(MAPPINGS["vitals"], pounds)["value"] is None
    unchanged_except(pounds, edit("vitals", pounds, notes="after lunch"), "note")
    in_words = vital(
        code={"coding": [{"system": LOINC, "code": "8867-4"}]},
        valueCodeableConcept={"text": "fast"},
    )
    unchanged_except(in_words, edit("vitals", in_words, notes="x"), "note")
    with pytest.raises(InvalidInput):  # a new heart rate still needs its number
        to_fhir(MAPPINGS["vitals"], {**from_fhir(MAPPINGS["vitals"], in_words), "id": None})
    weeks = {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"text": "Amoxicillin"},
        "subject": {"reference": "Patient/p1"},
        "dispenseRequest": {
            "expectedSupplyDuration": {"value": 2, "unit": "weeks", "system": UCUM, "code": "wk"}
        },
    }
    assert from_fhir(MAPPINGS["prescriptions"], weeks)["duration_days"] is None
    unchanged_except(weeks, edit("prescriptions", weeks, refills=1), "dispenseRequest")
    assert edit("prescriptions", weeks, refills=1)["dispenseRequest"] == {
        **weeks["dispenseRequest"],
        "numberOfRepeatsAllowed": 1,
    }


PARTNER_APPOINTMENT = {
    "resourceType": "Appointment",
    "status": "booked",
    "start": "2026-12-01T09:00:00Z",
    "end": "2026-12-01T09:30:00Z",
    "participant": [
        {"actor": {"reference": "Location/room-4", "display": "Room 4"}, "status": "accepted"},
        {
            "actor": {"reference": "https://ehr.example.org/fhir/Practitioner/d1"},
            "required": "required",
            "status": "tentative",
        },
        {
            "actor": {"reference": "Patient/p1/_history/3", "display": "Ann Roe"},
            "status": "accepted",
        },
    ],
}


def test_appointment_participants_are_found_by_type_not_by_position():
    simple = from_fhir(MAPPINGS["appointments"], {"id": "a1", **PARTNER_APPOINTMENT})
    assert (simple["patient_id"], simple["doctor_id"]) == ("p1", "d1")
    unchanged_except(
        PARTNER_APPOINTMENT, edit("appointments", PARTNER_APPOINTMENT, notes="x"), "comment"
    )
    moved = edit("appointments", PARTNER_APPOINTMENT, doctor_id="d2")
    expected = copy.deepcopy(PARTNER_APPOINTMENT["participant"])
    expected[1]["actor"] = {"reference": "Practitioner/d2"}  # its required and status stay
    assert moved["participant"] == expected


def test_a_new_appointment_gets_one_accepted_participant_of_each_type():
    made = to_fhir(
        MAPPINGS["appointments"],
        {
            "patient_id": "p1",
            "doctor_id": "d1",
            "start": "2026-12-01T09:00:00Z",
            "end": "2026-12-01T09:30:00Z",
        },
    )
    assert made["participant"] == [
        {"actor": {"reference": "Patient/p1"}, "status": "accepted"},
        {"actor": {"reference": "Practitioner/d1"}, "status": "accepted"},
    ]
    assert validate(made) == []


def test_a_changed_code_drops_the_display_and_translations_of_the_old_one():
    flu = {
        "resourceType": "Immunization",
        "status": "completed",
        "patient": {"reference": "Patient/p1"},
        "occurrenceDateTime": "2024-10-01T09:00:00Z",
        "vaccineCode": {
            "coding": [
                {"system": "http://hl7.org/fhir/sid/cvx", "code": "140", "display": "Influenza"},
                {"system": "urn:oid:1.2.36.1.2001.1005.17", "code": "FLUVAX"},
            ],
            "text": "Influenza, seasonal",
        },
    }
    unchanged_except(flu, edit("vaccines", flu, lot_number="L1"), "lotNumber")
    covid = edit("vaccines", flu, vaccine="COVID-19", vaccine_code="208")
    assert covid["vaccineCode"] == {
        "coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "208"}],
        "text": "COVID-19",
    }
    unchanged_except(flu, covid, "vaccineCode")
    # A code where there was none of that system joins the codings there are.
    other = {**flu, "vaccineCode": {"coding": [flu["vaccineCode"]["coding"][1]], "text": "Flu"}}
    added = edit("vaccines", other, vaccine_code="141")
    assert added["vaccineCode"]["coding"] == [
        {"system": "urn:oid:1.2.36.1.2001.1005.17", "code": "FLUVAX"},
        {"system": "http://hl7.org/fhir/sid/cvx", "code": "141"},
    ]


def test_clearing_what_an_item_needs_removes_the_item_not_just_the_field():
    stored = {
        "resourceType": "Procedure",
        "status": "completed",
        "code": {"text": "Suture"},
        "subject": {"reference": "Patient/p1"},
        "note": [{"text": "first", "authorString": "Dr A"}, {"text": "second"}],
        "performer": [{"actor": {"reference": "Practitioner/d1"}, "function": {"text": "surgeon"}}],
    }
    cleared = edit("procedures", stored, notes=None, performer_id=None)  # edit() validates it
    assert cleared["note"] == [{"text": "second"}] and "performer" not in cleared
    unchanged_except(stored, cleared, "note", "performer")
    patient = {"resourceType": "Patient", "address": [{"city": "Springfield", "line": ["1 Main"]}]}
    kept = edit("patients", {**patient, "name": [{"family": "Roe"}]}, city=None)
    assert kept["address"] == [{"line": ["1 Main"]}]  # an address without a city is still one
