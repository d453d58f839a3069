"""The pure parts of search: dates as ranges, value parsing and escaping, the compiled
expressions and what a resource is indexed under."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from vitasync_fhir.auth import audit
from vitasync_fhir.auth.policy import Caller
from vitasync_fhir.fhir.outcomes import FhirError
from vitasync_fhir.fhir.search import (
    dates,
    fhirpath,
    index,
    paging,
    params,
    registry,
    summary,
    values,
)


def _us(*args: int) -> int:
    return dates.micros(datetime(*args, tzinfo=UTC))


# -- dates --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("2019", _us(2019, 1, 1), _us(2020, 1, 1)),
        ("2019-02", _us(2019, 2, 1), _us(2019, 3, 1)),
        ("2019-12", _us(2019, 12, 1), _us(2020, 1, 1)),
        ("2019-02-28", _us(2019, 2, 28), _us(2019, 3, 1)),
        ("2019-02-28T10:30", _us(2019, 2, 28, 10, 30), _us(2019, 2, 28, 10, 31)),
        ("2019-02-28T10:30:05Z", _us(2019, 2, 28, 10, 30, 5), _us(2019, 2, 28, 10, 30, 6)),
        (
            "2019-02-28T10:30:05.25Z",
            _us(2019, 2, 28, 10, 30, 5) + 250_000,
            _us(2019, 2, 28, 10, 30, 5) + 260_000,
        ),
        ("2019-02-28T10:30:05+02:00", _us(2019, 2, 28, 8, 30, 5), _us(2019, 2, 28, 8, 30, 6)),
        (
            "2019-02-28T10:30:05",
            _us(2019, 2, 28, 10, 30, 5),
            _us(2019, 2, 28, 10, 30, 6),
        ),  # no zone: UTC
    ],
)
def test_dates_cover_their_precision(text: str, low: int, high: int) -> None:
    assert dates.parse_range(text) == (low, high)


@pytest.mark.parametrize(
    "text", ["notadate", "2019-13", "2019-02-30", "19", "2019-02-28T25:00", "2019-02-28T10"]
)
def test_malformed_dates_are_refused(text: str) -> None:
    assert dates.parse_range(text) is None


def test_periods_are_open_where_a_side_is_missing() -> None:
    assert dates.period_range({"start": "2019"}) == (_us(2019, 1, 1), dates.MAX)
    assert dates.period_range({"end": "2019-05-01"}) == (dates.MIN, _us(2019, 5, 2))
    assert dates.period_range({}) is None


# -- escaping and values ------------------------------------------------------------------------


def test_escaped_separators_are_not_separators() -> None:
    assert params.split_escaped(r"a\,b,c", ",") == [r"a\,b", "c"]
    assert params.unescape(r"a\,b\$c\|d\\e") == r"a,b$c|d\e"
    assert params.parse_token("t", r"http://x|a\|b") == params.TokenValue("http://x", "a|b")


def test_tokens_distinguish_any_system_no_system_and_system_only() -> None:
    assert params.parse_token("t", "c").system is params.ANY_SYSTEM
    assert params.parse_token("t", "|c") == params.TokenValue(None, "c")
    assert params.parse_token("t", "s|") == params.TokenValue("s", None)


@pytest.mark.parametrize(
    ("text", "prefix", "low", "high"),
    [
        ("100", "eq", 99.5, 100.5),
        ("gt100.00", "gt", 99.995, 100.005),
        ("le1e2", "le", 50, 150),
        ("-5", "eq", -5.5, -4.5),
    ],
)
def test_numbers_carry_their_implicit_precision(
    text: str, prefix: str, low: float, high: float
) -> None:
    number = params.parse_number("n", text)
    assert (number.prefix, number.low, number.high) == (
        prefix,
        pytest.approx(low),
        pytest.approx(high),
    )


def test_bad_values_name_their_parameter() -> None:
    with pytest.raises(params.Skip) as caught:
        params.parse_date("birthdate", "notadate")
    assert caught.value.name == "birthdate"
    with pytest.raises(params.Skip):
        params.parse_number("probability", "gtabc")


def test_unknown_parameters_are_a_400_naming_them() -> None:
    with pytest.raises(FhirError) as caught:
        params.parse_query(("Patient",), [("nmae", "x")], base="", max_count=10)
    assert caught.value.status == 400
    assert caught.value.issues[0].expression == "nmae"


def test_lenient_handling_keeps_what_it_ignored() -> None:
    query = params.parse_query(
        ("Patient",), [("nmae", "x"), ("name", "y")], base="", max_count=10, lenient=True
    )
    assert [c.name for c in query.criteria] == ["name"]
    assert [i.expression for i in query.ignored] == ["nmae"]


def test_chains_and_reverse_chains_are_read() -> None:
    query = params.parse_query(
        ("Observation",), [("subject:Patient.name", "x")], base="", max_count=5
    )
    assert query.criteria[0].chain[0][0] == "Patient"
    assert query.criteria[0].chain[0][1].param.code == "name"
    query = params.parse_query(
        ("Patient",), [("_has:Observation:patient:code", "1")], base="", max_count=5
    )
    assert query.criteria[0].has == ("Observation", "patient")


def test_normalized_strings_drop_accents_and_case() -> None:
    assert values.normalize("Ĺéa MÜLLER") == "lea muller"
    assert values.normalize("Straße") == "strasse"


# -- compiled expressions -------------------------------------------------------------------------


def test_every_definition_but_one_compiles() -> None:
    fallbacks = []
    for resource_type in (
        "Observation",
        "Patient",
        "Encounter",
        "MedicationRequest",
        "Bundle",
        "Condition",
    ):
        for param in registry.params_for(resource_type).values():
            if param.type in ("composite", "special") or param.code in registry.COLUMN_PARAMS:
                continue
            compiled = fhirpath.compile_expression(
                param.expression, resource_type, registry.elements()
            )
            if not compiled.compiled:
                fallbacks.append(f"{resource_type}.{param.code}")
    # Bundle's composition and message select a whole resource: not offered (registry._NOT_OFFERED).
    assert sorted(fallbacks) == ["Patient.deceased"]


def test_compiled_walkers_know_choice_types_and_filters() -> None:
    compiled = fhirpath.compile_expression(
        "Observation.subject.where(resolve() is Patient) | (Observation.value as Quantity)",
        "Observation",
        registry.elements(),
    )
    observation = {
        "resourceType": "Observation",
        "subject": {"reference": "Patient/1"},
        "valueQuantity": {"value": 3},
    }
    assert compiled.walk(observation) == [
        ({"reference": "Patient/1"}, "Reference"),
        ({"value": 3}, "Quantity"),
    ]
    observation["subject"] = {"reference": "Group/1"}
    observation["valueString"] = "x"
    del observation["valueQuantity"]
    assert compiled.walk(observation) == []


# -- what gets indexed ----------------------------------------------------------------------------

BLOOD_PRESSURE = {
    "resourceType": "Observation",
    "id": "bp",
    "status": "final",
    "code": {
        "coding": [{"system": "http://loinc.org", "code": "55284-4", "display": "Blood Pressure"}]
    },
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2019-05-01T10:00:00Z",
    "component": [
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "valueQuantity": {
                "value": 141,
                "system": "http://unitsofmeasure.org",
                "code": "mm[Hg]",
            },
        },
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
            "valueQuantity": {"value": 85, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
        },
    ],
}


def test_blood_pressure_components_are_indexed() -> None:
    rows = index.extract("Observation", BLOOD_PRESSURE)
    codes = {(p, c) for p, _s, c, _t in rows["token"] if c}
    assert ("combo-code", "8480-6") in codes and ("component-code", "8462-4") in codes
    assert ("code", "8480-6") not in codes
    composite = {(r[0], r[2], r[8]) for r in rows["composite"]}
    assert ("combo-code-value-quantity", "8480-6", 141.0) in composite
    assert ("component-code-value-quantity", "8462-4", 85.0) in composite
    assert {("patient", "Patient", "p1", None), ("subject", "Patient", "p1", None)} <= rows[
        "reference"
    ]
    assert index.compartments("Observation", "bp", rows) == {"p1"}


def test_identifiers_are_indexed_by_type_and_references_by_identifier() -> None:
    patient = {
        "resourceType": "Patient",
        "identifier": [
            {
                "system": "urn:mrn",
                "value": "7",
                "type": {"coding": [{"system": "urn:v2", "code": "MR"}], "text": "MRN"},
            }
        ],
        "generalPractitioner": [{"identifier": {"system": "urn:npi", "value": "99"}}],
    }
    rows = index.extract("Patient", patient)
    assert ("identifier", "urn:mrn", "7", "mrn") in rows["token"]
    assert ("identifier:of-type", "urn:v2", "MR|7", None) in rows["token"]
    assert ("general-practitioner:identifier", "urn:npi", "99", None) in rows["token"]


def test_cursors_round_trip_and_refuse_other_sorts() -> None:
    moment = datetime(2020, 1, 1, tzinfo=UTC)
    cursor = paging.encode("-_lastUpdated", [moment, "abc"], previous=True)
    assert paging.decode(cursor, "-_lastUpdated", ["instant", "text"]) == ([moment, "abc"], True)
    with pytest.raises(FhirError):
        paging.decode(cursor, "_id", ["text"])
    with pytest.raises(FhirError):
        paging.decode("garbage!", "_id", ["text"])


def _walked(resource_type: str, resource: dict) -> index.Rows:
    """Index rows by walking every plan, past the memo of repeated elements."""
    rows: index.Rows = {name: set() for name in index.INDEX_TABLES}
    index._extract(index.plans(resource_type), resource, rows)
    return rows


def _read_event(role: str, patient: str) -> dict:
    caller = Caller(role=role, scopes=(), user_id="u1", fhir_user="Practitioner/d1", jti="j1")
    return audit.audit_event(
        caller,
        action="read",
        resource_type="Observation",
        resource_id=f"obs-{patient}",
        outcome="success",
        source_ip="10.0.0.7",
        patient_id=patient,
    )


def test_parameters_know_the_elements_they_read() -> None:
    roots = {plan.code: plan.roots for plan in index.plans("AuditEvent")}
    assert roots["agent"] == ("agent",) and roots["date"] == ("recorded",)
    # patient reads both agent.who and entity.what
    assert roots["patient"] == ("agent", "entity")


def test_repeated_elements_give_the_rows_a_walk_gives() -> None:
    index._MEMO.clear()
    first, second = _read_event("doctor", "p1"), _read_event("doctor", "p2")
    other_role = _read_event("nurse", "p2")
    for event in (first, second, other_role, first):  # the last is all repeats
        assert index.extract("AuditEvent", event) == _walked("AuditEvent", event)
    rows = index.extract("AuditEvent", second)
    assert ("patient", "Patient", "p2", None) in rows["reference"]
    assert ("patient", "Patient", "p1", None) not in rows["reference"]
    assert not any("nurse" in str(row) for row in rows["token"])  # the nurse's agent rows
    bp = dict(BLOOD_PRESSURE, subject={"reference": "Patient/p9"})
    for resource in (BLOOD_PRESSURE, bp, BLOOD_PRESSURE):
        assert index.extract("Observation", resource) == _walked("Observation", resource)


# -- _summary and _elements ------------------------------------------------------------------------


def _kept(resource: dict, **options: object) -> set[str]:
    trimmed = summary.trim(json.dumps(resource), resource["resourceType"], **options)  # type: ignore[arg-type]
    return set(json.loads(trimmed)) - {"resourceType", "id", "meta"}


def test_elements_keep_choice_types_but_not_names_that_only_start_alike() -> None:
    report = {
        "resourceType": "DiagnosticReport",
        "id": "r1",
        "status": "final",
        "code": {"text": "panel"},
        "effectiveDateTime": "2020-01-01",
        "conclusion": "fine",
        "conclusionCode": [{"text": "fine"}],
    }
    assert _kept(report, summary=None, elements=["conclusion"]) == {"conclusion", "status", "code"}
    assert _kept(report, summary=None, elements=["effective"]) >= {"effectiveDateTime"}
    assert "effectiveDateTime" in _kept(report, summary="true", elements=None)  # effective[x]
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "valueQuantity": {"value": 1},
        "_valueQuantity": {"id": "v"},
    }
    for name in ("value", "value[x]", "valueQuantity"):
        assert _kept(observation, summary=None, elements=[name]) == {
            "status",
            "code",
            "valueQuantity",
            "_valueQuantity",
        }
    verification = {"resourceType": "VerificationResult", "status": "validated"}
    verification["statusDate"] = "2020-01-01T00:00:00Z"
    assert _kept(verification, summary=None, elements=["target"]) == {"status"}
    coverage = {
        "resourceType": "Coverage",
        "status": "active",
        "subscriber": {"reference": "Patient/1"},
        "subscriberId": "s-1",
        "beneficiary": {"reference": "Patient/1"},
        "payor": [{"reference": "Organization/1"}],
    }
    assert "subscriberId" not in _kept(coverage, summary=None, elements=["subscriber"])


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("100", 99.5, 100.5),
        ("100.0", 99.95, 100.05),
        ("1e2", 50, 150),  # one significant figure: a unit of the last is 100
        ("1.0e2", 95, 105),
        ("1.00e2", 99.5, 100.5),  # three significant figures, as 100
        ("0.5e1", 4.5, 5.5),
    ],
)
def test_exponent_numbers_take_their_significant_figures_from_the_mantissa(
    text: str, low: float, high: float
) -> None:
    number = params.parse_number("n", text)
    assert (number.value, number.low, number.high) == (
        pytest.approx(float(text)),
        pytest.approx(low),
        pytest.approx(high),
    )
