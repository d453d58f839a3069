import json
import tarfile
import time
from pathlib import Path

import orjson
import pytest

from vitasync_fhir.fhir.validation import TABLE_PATH, Problem, validate

SYNTHEA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "synthea-r4"
needs_synthea = pytest.mark.skipif(
    not SYNTHEA.is_dir(), reason=f"the Synthea sample data is not at {SYNTHEA}"
)


def observation(**elements: object) -> dict:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, **elements}


def patient(**elements: object) -> dict:
    return {"resourceType": "Patient", **elements}


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, problems
    return problems[0]


def where(problems: list[Problem]) -> set[tuple[str, str]]:
    return {(p.code, p.expression) for p in problems}


# -- valid resources --------------------------------------------------------------------------


def test_valid_resources_have_no_problems():
    assert validate(patient()) == []
    assert validate(observation(valueQuantity={"value": 1.5, "unit": "mg"})) == []
    assert (
        validate(
            patient(
                id="p-1.a",
                active=True,
                gender="female",
                birthDate="2020-02-29",
                name=[{"family": "Doe", "given": ["Jean\u00a0Pierre", "Zoë"]}],
                multipleBirthInteger=2,
                text={
                    "status": "generated",
                    "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>',
                },
            )
        )
        == []
    )


# -- what the models let through --------------------------------------------------------------


def test_boolean_given_as_a_string_is_rejected():
    problem = only(validate(patient(active="yes")))
    assert (problem.code, problem.expression) == ("value", "Patient.active")


def test_code_outside_its_required_value_set_is_rejected():
    problem = only(validate(patient(gender="robot")))
    assert (problem.code, problem.expression) == ("code-invalid", "Patient.gender")
    assert "administrative-gender" in problem.diagnostics


@pytest.mark.parametrize(
    ("resource", "expression"),
    [
        (observation(status="done"), "Observation.status"),
        (
            {
                "resourceType": "MedicationRequest",
                "status": "active",
                "intent": "wish",
                "medicationCodeableConcept": {"text": "x"},
                "subject": {"reference": "Patient/1"},
            },
            "MedicationRequest.intent",
        ),
        ({"resourceType": "Bundle", "type": "pile"}, "Bundle.type"),
        (
            observation(valueQuantity={"value": 1, "comparator": "~"}),
            "Observation.valueQuantity.comparator",
        ),
    ],
)
def test_required_bindings(resource, expression):
    problem = only(validate(resource))
    assert (problem.code, problem.expression) == ("code-invalid", expression)


def test_required_binding_of_a_codeable_concept_checks_only_the_bound_system():
    allergy = {
        "resourceType": "AllergyIntolerance",
        "patient": {"reference": "Patient/1"},
        "clinicalStatus": {
            "coding": [
                {"system": "http://example.org/local", "code": "whatever"},
                {
                    "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                    "code": "bogus",
                },
            ]
        },
    }
    problem = only(validate(allergy))
    assert (problem.code, problem.expression) == (
        "code-invalid",
        "AllergyIntolerance.clinicalStatus.coding[1].code",
    )


def test_unknown_element_is_rejected():
    problem = only(validate(patient(favouriteColour="blue")))
    assert (problem.code, problem.expression) == ("structure", "Patient.favouriteColour")


def test_repeating_element_must_be_an_array():
    problem = only(validate(patient(name={"family": "Doe"})))
    assert (problem.code, problem.expression) == ("structure", "Patient.name")


def test_single_element_must_not_be_an_array():
    problem = only(validate(patient(gender=["male"])))
    assert (problem.code, problem.expression) == ("structure", "Patient.gender")


@pytest.mark.parametrize(
    "value", ["2019-13-01", "2019-02-30", "2019-02-29", "19-01-01", "2019/01/01"]
)
def test_bad_dates_are_rejected(value):
    problem = only(validate(patient(birthDate=value)))
    assert (problem.code, problem.expression) == ("value", "Patient.birthDate")


@pytest.mark.parametrize(
    "value", ["2019-02-30T10:00:00Z", "2019-01-01T10:00:00", "2019-01-01T25:00:00Z"]
)
def test_bad_date_times_are_rejected(value):
    problem = only(validate(observation(effectiveDateTime=value)))
    assert (problem.code, problem.expression) == ("value", "Observation.effectiveDateTime")


@pytest.mark.parametrize("value", ["5", 5.5, 5.0, True, 2**31])
def test_integer_must_be_a_json_integer_in_range(value):
    problem = only(validate(patient(multipleBirthInteger=value)))
    assert (problem.code, problem.expression) == ("value", "Patient.multipleBirthInteger")


def test_decimal_must_be_a_json_number():
    problem = only(validate(observation(valueQuantity={"value": "1.5"})))
    assert (problem.code, problem.expression) == ("value", "Observation.valueQuantity.value")


@pytest.mark.parametrize("value", ["", "   ", "\t"])
def test_empty_or_blank_strings_are_rejected(value):
    problem = only(validate(patient(name=[{"family": value}])))
    assert (problem.code, problem.expression) == ("value", "Patient.name[0].family")


def test_empty_array_is_rejected():
    problem = only(validate(patient(name=[])))
    assert (problem.code, problem.expression) == ("structure", "Patient.name")


def test_empty_object_is_rejected():
    problem = only(validate(patient(maritalStatus={})))
    assert (problem.code, problem.expression) == ("structure", "Patient.maritalStatus")


@pytest.mark.parametrize(
    ("resource", "expression"),
    [
        (patient(gender=None), "Patient.gender"),
        (patient(name=[None]), "Patient.name[0]"),
        (patient(name=[{"given": ["a", None]}]), "Patient.name[0].given[1]"),
    ],
)
def test_null_is_rejected(resource, expression):
    problem = only(validate(resource))
    assert (problem.code, problem.expression) == ("structure", expression)


def test_null_in_a_primitive_array_is_allowed_where_the_sibling_has_an_extension():
    extension = {"extension": [{"url": "http://example.org/x", "valueString": "y"}]}
    assert validate(patient(name=[{"given": ["a", None], "_given": [None, extension]}])) == []
    problem = only(validate(patient(name=[{"given": ["a", "b"], "_given": [None]}])))
    assert (problem.code, problem.expression) == ("structure", "Patient.name[0]._given")


def test_primitive_with_only_an_extension_satisfies_a_required_element():
    absent = {
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                "valueCode": "unknown",
            }
        ]
    }
    resource = {"resourceType": "Observation", "_status": absent, "code": {"text": "x"}}
    assert validate(resource) == []


def test_extension_sibling_of_a_complex_element_is_unknown():
    problem = only(validate(patient(_name=[{"id": "a"}])))
    assert (problem.code, problem.expression) == ("structure", "Patient._name")


def test_two_choices_of_one_element_are_rejected():
    problem = only(validate(observation(valueString="a", valueBoolean=True)))
    assert (problem.code, problem.expression) == ("structure", "Observation.value")


def test_choice_type_must_be_one_the_element_allows():
    problem = only(validate(observation(valueUri="http://example.org")))
    assert (problem.code, problem.expression) == ("structure", "Observation.valueUri")


@pytest.mark.parametrize("value", ["a b", "a_b", "x" * 65, "é"])
def test_bad_resource_id_is_rejected(value):
    problem = only(validate(patient(id=value)))
    assert (problem.code, problem.expression) == ("value", "Patient.id")


@pytest.mark.parametrize(
    "reference",
    [
        "Patient/1",
        "Patient/a-b.c/_history/2",
        "https://example.org/fhir/Patient/1",
        "urn:uuid:3f2504e0-4f89-11d3-9a0c-0305e82c3301",
        "urn:oid:1.2.840.113619",
    ],
)
def test_well_formed_references_are_accepted(reference):
    assert validate(observation(subject={"reference": reference})) == []


@pytest.mark.parametrize(
    "reference",
    [
        "Patient/",
        "Patient",
        "Robot/1",
        "Patient?identifier=x",
        "Patient/1/_history/",
        "urn:uuid:x",
        "#",
        "#a b",
        "ftp://example.org/Patient/1",
    ],
)
def test_malformed_references_are_rejected(reference):
    problems = validate(observation(subject={"reference": reference}))
    if reference == "#":  # a reference to the containing resource itself is allowed
        assert problems == []
        return
    assert ("value", "Observation.subject.reference") in where(problems)


def test_required_elements_are_reported():
    problems = validate({"resourceType": "Observation"})
    assert where(problems) == {
        ("required", "Observation.status"),
        ("required", "Observation.code"),
    }


def test_required_choice_is_reported():
    problem = only(
        validate(
            {
                "resourceType": "MedicationRequest",
                "status": "active",
                "intent": "order",
                "subject": {"reference": "Patient/1"},
            }
        )
    )
    assert (problem.code, problem.expression) == ("required", "MedicationRequest.medication")


def test_simple_quantity_has_no_comparator():
    dose = {"doseAndRate": [{"doseQuantity": {"value": 1, "comparator": "<"}}]}
    request = {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"text": "x"},
        "subject": {"reference": "Patient/1"},
        "dosageInstruction": [dose],
    }
    problem = only(validate(request))
    assert problem.expression == (
        "MedicationRequest.dosageInstruction[0].doseAndRate[0].doseQuantity.comparator"
    )


# -- resource types ---------------------------------------------------------------------------


@pytest.mark.parametrize("resource_type", ["SubscriptionTopic", "Citation", "User", "Robot"])
def test_types_that_are_not_r4_resources_are_rejected(resource_type):
    problem = only(validate({"resourceType": resource_type}))
    assert (problem.code, problem.expression) == ("invalid", "resourceType")


def test_expected_type_must_match():
    problem = only(validate(patient(), expected_type="Observation"))
    assert (problem.code, problem.expression) == ("invalid", "resourceType")
    assert validate(patient(), expected_type="Patient") == []


@pytest.mark.parametrize(
    "value", [[patient()], "Patient", None, 5, True, {}, {"id": "1"}, {"resourceType": 5}]
)
def test_anything_that_is_not_a_resource_gives_problems_not_exceptions(value):
    problem = only(validate(value))
    assert problem.code == "invalid"


def test_r4_elements_that_r4b_dropped_are_accepted_and_r4b_additions_are_not():
    r4_only = {"url": "http://x.org/e", "valueMeta": {"versionId": "1"}}
    assert validate(patient(extension=[r4_only])) == []
    r4b_only = {"url": "http://x.org/e", "valueCodeableReference": {"concept": {"text": "x"}}}
    problem = only(validate(patient(extension=[r4b_only])))
    assert problem.expression == "Patient.extension[0].valueCodeableReference"


def test_medplum_additions_to_meta_are_not_r4():
    problem = only(validate(patient(meta={"project": "p1"})))
    assert (problem.code, problem.expression) == ("structure", "Patient.meta.project")


# -- nested resources -------------------------------------------------------------------------


def test_contained_resource_errors_carry_their_path():
    problems = validate(
        patient(
            contained=[
                {
                    "resourceType": "Observation",
                    "status": "maybe",
                    "code": {"text": "x"},
                    "colour": "red",
                }
            ]
        )
    )
    assert where(problems) == {
        ("code-invalid", "Patient.contained[0].status"),
        ("structure", "Patient.contained[0].colour"),
    }


def test_contained_resources_do_not_contain_resources():
    inner = {"resourceType": "Patient", "contained": [{"resourceType": "Patient"}]}
    problem = only(validate(patient(contained=[inner])))
    assert problem.expression == "Patient.contained[0].contained"


def test_bundle_entries_and_parameters_are_validated_as_resources():
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": patient(active="no"), "request": {"method": "POST", "url": "Patient"}},
        ],
    }
    assert where(validate(bundle)) == {("value", "Bundle.entry[0].resource.active")}
    parameters = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "p", "resource": {"resourceType": "SubscriptionTopic"}},
        ],
    }
    assert where(validate(parameters)) == {
        ("invalid", "Parameters.parameter[0].resource.resourceType"),
    }


def test_every_problem_of_a_resource_is_reported():
    resource = patient(
        id="a b",
        active="yes",
        gender="robot",
        name={"family": "Doe"},
        birthDate="2019-02-30",
        telecom=[],
        favouriteColour="blue",
        deceasedBoolean=False,
        deceasedDateTime="2019",
        multipleBirthInteger="5",
    )
    assert where(validate(resource)) == {
        ("value", "Patient.id"),
        ("value", "Patient.active"),
        ("code-invalid", "Patient.gender"),
        ("structure", "Patient.name"),
        ("value", "Patient.birthDate"),
        ("structure", "Patient.telecom"),
        ("structure", "Patient.favouriteColour"),
        ("structure", "Patient.deceased"),
        ("value", "Patient.multipleBirthInteger"),
    }


# -- bounded cost -----------------------------------------------------------------------------


def nested_extension(inner: object) -> dict:
    if inner is None:
        return {"url": "http://x.org/e", "valueString": "x"}
    return {"url": "http://x.org/e", "extension": [inner]}


def nest(depth: int, wrap) -> object:
    value = None
    for _ in range(depth):
        value = wrap(value)
    return value


@pytest.mark.parametrize(
    "resource",
    [
        patient(extension=[nest(10_000, nested_extension)]),
        patient(unknown=nest(10_000, lambda inner: {"a": inner})),
        patient(gender=nest(10_000, lambda inner: [inner])),
        nest(
            10_000,
            lambda inner: {
                "resourceType": "Parameters",
                "parameter": [{"name": "p", "resource": inner or patient()}],
            },
        ),
    ],
    ids=["extensions", "unknown-objects", "arrays-in-a-primitive", "parameters"],
)
def test_deep_nesting_is_refused_quickly(resource):
    validate(patient())  # loads the table, so that only the walk is timed
    started = time.perf_counter()
    problem = only(validate(resource))
    assert time.perf_counter() - started < 0.5
    assert problem.code == "too-costly"


def test_too_many_elements_are_refused():
    problem = only(validate(patient(name=[{"family": "Doe"}] * 200_000)))
    assert problem.code == "too-costly"
    assert validate(patient(name=[{"family": "Doe"}] * 1_000)) == []


# -- the table --------------------------------------------------------------------------------


def test_table_is_plain_r4():
    table = json.loads(TABLE_PATH.read_text())
    assert table["fhirVersion"] == "4.0.1"
    assert set(table["types"]["Meta"]["elements"]) == {
        "id",
        "extension",
        "versionId",
        "lastUpdated",
        "source",
        "profile",
        "security",
        "tag",
    }
    assert "url" not in table["types"]["Binary"]["elements"]
    assert "SubscriptionStatus" not in table["resources"]


# -- Synthea ----------------------------------------------------------------------------------


def bundle_problems(bundle: dict) -> list[tuple[str, Problem]]:
    return [
        (entry["resource"].get("resourceType"), problem)
        for entry in bundle["entry"]
        for problem in validate(entry["resource"])
    ]


@pytest.mark.synthea
@needs_synthea
@pytest.mark.parametrize("name", sorted(p.name for p in SYNTHEA.glob("*.json")) or ["none"])
def test_synthea_bundles_validate_cleanly(name):
    bundle = orjson.loads((SYNTHEA / name).read_bytes())
    assert bundle_problems(bundle) == []
    assert validate(bundle) == []


@pytest.mark.synthea
@needs_synthea
def test_synthea_archive_sample_validates_cleanly():
    checked = 0
    with tarfile.open(SYNTHEA / "synthea-r4-617-patients.tar.xz") as archive:
        for member in archive:
            if not member.isfile() or not member.name.endswith(".json"):
                continue
            with archive.extractfile(member) as file:  # type: ignore[union-attr]
                bundle = orjson.loads(file.read())
            assert bundle_problems(bundle) == [], member.name
            checked += 1
            if checked == 30:
                break
    assert checked == 30
