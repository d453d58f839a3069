"""Every parameter type, prefix and modifier against the Synthea sample data, on SQLite and
PostgreSQL. Each expected set of ids is computed here by a plain filter over the stored JSON,
never by the search engine.
"""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from search_support import FHIR, JSON, Loaded

from vitasync_fhir.fhir.search import query

pytestmark = pytest.mark.synthea


def fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def search(loaded: Loaded, path: str, *pairs: tuple[str, str], headers: dict | None = None) -> dict:
    answer = loaded.client.get(f"/fhir/{path}", params=list(pairs), headers=headers or {})
    assert answer.status_code == 200, answer.text
    return answer.json()


def found(loaded: Loaded, path: str, *pairs: tuple[str, str], mode: str = "match") -> set[str]:
    """Ids of one search's entries of `mode` (all in one page)."""
    bundle = search(loaded, path, *pairs, ("_count", "1000"))
    assert not [link for link in bundle.get("link", []) if link["relation"] == "next"]
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode}


def refs(loaded: Loaded, path: str, *pairs: tuple[str, str], mode: str = "match") -> set[str]:
    bundle = search(loaded, path, *pairs, ("_count", "1000"))
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == mode
    }


def refers(value: object, target: str) -> bool:
    return isinstance(value, dict) and value.get("reference") == target


def codings(concept: dict | None) -> list[dict]:
    return list((concept or {}).get("coding", []))


def has_code(concept: dict | None, code: str, system: str | None = None) -> bool:
    return any(
        c.get("code") == code and (system is None or c.get("system") == system)
        for c in codings(concept)
    )


# -- date ranges, written from the specification's table -----------------------------------------

LOW = datetime(1, 1, 1, tzinfo=UTC)
HIGH = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


def span(text: str) -> tuple[datetime, datetime]:
    if len(text) == 4:
        start = datetime(int(text), 1, 1, tzinfo=UTC)
        return start, start.replace(year=start.year + 1)
    if len(text) == 7:
        start = datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=UTC)
        end = (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else start.replace(month=start.month + 1)
        )
        return start, end
    if len(text) == 10:
        start = datetime.fromisoformat(text).replace(tzinfo=UTC)
        return start, start + timedelta(days=1)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    fraction = text.split(".", 1)[1] if "." in text else ""
    digits = len([c for c in fraction if c.isdigit()])
    return moment, moment + (timedelta(seconds=10**-digits) if digits else timedelta(seconds=1))


def period_span(period: dict) -> tuple[datetime, datetime]:
    low = span(period["start"])[0] if "start" in period else LOW
    high = span(period["end"])[1] if "end" in period else HIGH
    return low, high


def date_matches(prefix: str, target: tuple[datetime, datetime], value: str) -> bool:
    (tl, th), (sl, sh) = target, span(value)
    contained = sl <= tl and th <= sh
    return {
        "eq": contained,
        "ne": not contained,
        "gt": th > sh,
        "lt": tl < sl,
        "ge": th > sh or contained,
        "le": tl < sl or contained,
        "sa": tl >= sh,
        "eb": th <= sl,
    }[prefix]


def observation_span(obs: dict) -> tuple[datetime, datetime] | None:
    if "effectiveDateTime" in obs:
        return span(obs["effectiveDateTime"])
    if "effectivePeriod" in obs:
        return period_span(obs["effectivePeriod"])
    return None


# == string ========================================================================================


def name_parts(resource: dict) -> list[str]:
    out = []
    for name in resource.get("name", []):
        out += [
            name.get("family", ""),
            *name.get("given", []),
            *name.get("prefix", []),
            *name.get("suffix", []),
        ]
    return [p for p in out if p]


def test_string_is_a_case_and_accent_insensitive_prefix(synthea: Loaded) -> None:
    for value in ("kre", "KREIGER", "Mül", "mull", "lea", "dr", "z"):
        expected = synthea.ids(
            "Patient",
            lambda p: any(fold(x).startswith(fold(value)) for x in name_parts(p)),  # noqa: B023 (called at once)
        )
        assert found(synthea, "Patient", ("name", value)) == expected, value
    assert found(synthea, "Patient", ("name", "lea")) == {synthea.extras["lea"].split("/")[1]}
    expected = synthea.ids(
        "Practitioner", lambda p: any(fold(n["family"]).startswith("st") for n in p["name"])
    )
    assert expected and found(synthea, "Practitioner", ("family", "St")) == expected


def test_string_exact_and_contains(synthea: Loaded) -> None:
    lea = synthea.extras["lea"].split("/")[1]
    assert found(synthea, "Patient", ("family:exact", "Müller-Ñúñez")) == {lea}
    assert found(synthea, "Patient", ("family:exact", "muller-nunez")) == set()
    assert found(synthea, "Patient", ("family:exact", "Müller")) == set()
    for value in ("ÑÚÑ", "eig", "on"):
        expected = synthea.ids(
            "Patient",
            lambda p: any(fold(value) in fold(n.get("family", "")) for n in p["name"]),  # noqa: B023 (called at once)
        )
        assert found(synthea, "Patient", ("family:contains", value)) == expected, value


def test_string_address_parts(synthea: Loaded) -> None:
    def cities(resource: dict) -> list[str]:
        return [a.get("city", "") for a in resource.get("address", [])]

    expected = synthea.ids(
        "Organization", lambda o: any(fold(c).startswith("north") for c in cities(o))
    )
    assert expected and found(synthea, "Organization", ("address-city", "north")) == expected
    assert found(synthea, "Organization", ("address", "north")) >= expected


# == token =========================================================================================


def test_token_code_system_and_both(synthea: Loaded) -> None:
    loinc = "http://loinc.org"
    height = synthea.ids("Observation", lambda o: has_code(o["code"], "8302-2"))
    assert height and found(synthea, "Observation", ("code", "8302-2")) == height
    assert found(synthea, "Observation", ("code", f"{loinc}|8302-2")) == height
    assert found(synthea, "Observation", ("code", "http://snomed.info/sct|8302-2")) == set()
    no_system = synthea.ids(
        "Observation",
        lambda o: any(
            c.get("code") == "no-system-code" and "system" not in c for c in codings(o["code"])
        ),
    )
    assert len(no_system) == 1
    assert found(synthea, "Observation", ("code", "|no-system-code")) == no_system
    assert len(found(synthea, "Observation", ("code", "no-system-code"))) == 2
    with_loinc = synthea.ids(
        "Observation", lambda o: any(c.get("system") == loinc for c in codings(o["code"]))
    )
    assert found(synthea, "Observation", ("code", f"{loinc}|")) == with_loinc


def test_token_not_includes_resources_without_the_code(synthea: Loaded) -> None:
    expected = synthea.ids("Observation", lambda o: not has_code(o["code"], "8302-2"))
    assert found(synthea, "Observation", ("code:not", "8302-2")) == expected
    expected = synthea.ids("Patient", lambda p: p.get("gender") != "male")
    assert found(synthea, "Patient", ("gender:not", "male")) == expected


def test_token_text_matches_display_and_text(synthea: Loaded) -> None:
    def texts(concept: dict) -> list[str]:
        return [c.get("display", "") for c in codings(concept)] + [concept.get("text", "")]

    for value in ("body", "special", "Blood P"):
        expected = synthea.ids(
            "Observation",
            lambda o: any(fold(t).startswith(fold(value)) for t in texts(o["code"])),  # noqa: B023 (called at once)
        )
        assert expected and found(synthea, "Observation", ("code:text", value)) == expected, value


def test_token_identifier_forms_and_of_type(synthea: Loaded) -> None:
    patient = next(p for p in synthea.of("Patient") if p["name"][0]["family"] == "Kreiger")
    ssn = next(
        i for i in patient["identifier"] if i.get("system") == "http://hl7.org/fhir/sid/us-ssn"
    )
    assert found(synthea, "Patient", ("identifier", ssn["value"])) == {patient["id"]}
    assert found(
        synthea, "Patient", ("identifier", f"http://hl7.org/fhir/sid/us-ssn|{ssn['value']}")
    ) == {patient["id"]}
    v2 = "http://terminology.hl7.org/CodeSystem/v2-0203"
    assert found(synthea, "Patient", ("identifier:of-type", f"{v2}|SS|{ssn['value']}")) == {
        patient["id"]
    }
    assert found(synthea, "Patient", ("identifier:of-type", f"{v2}|MR|{ssn['value']}")) == set()
    assert found(synthea, "Patient", ("identifier:text", "social")) == synthea.ids(
        "Patient",
        lambda p: any(
            fold(i.get("type", {}).get("text", "")).startswith("social")
            for i in p.get("identifier", [])
        ),
    )


def test_token_on_code_boolean_and_contact_point(synthea: Loaded) -> None:
    assert found(synthea, "Patient", ("gender", "female")) == synthea.ids(
        "Patient", lambda p: p["gender"] == "female"
    )
    deceased = synthea.ids(
        "Patient", lambda p: "deceasedDateTime" in p or p.get("deceasedBoolean") is True
    )
    assert deceased and found(synthea, "Patient", ("deceased", "true")) == deceased
    assert found(synthea, "Patient", ("deceased", "false")) == synthea.ids("Patient") - deceased
    phone = synthea.ids(
        "Patient", lambda p: any(t.get("value") == "555-0100" for t in p.get("telecom", []))
    )
    assert (
        found(synthea, "Patient", ("phone", "555-0100"))
        == phone
        == found(synthea, "Patient", ("telecom", "555-0100"))
    )


# == date ==========================================================================================


def test_date_precision_of_the_value(synthea: Loaded) -> None:
    for value in ("1984", "1984-07", "1984-07-02", "1988-03-16", "1986"):
        expected = synthea.ids(
            "Patient",
            lambda p: "birthDate" in p and date_matches("eq", span(p["birthDate"]), value),  # noqa: B023 (called at once)
        )
        assert found(synthea, "Patient", ("birthdate", value)) == expected, value
    # a birthDate of month precision is not inside one of its days
    assert synthea.extras["lea"].split("/")[1] in found(
        synthea, "Patient", ("birthdate", "1984-07")
    )
    assert synthea.extras["lea"].split("/")[1] not in found(
        synthea, "Patient", ("birthdate", "1984-07-02")
    )


@pytest.mark.parametrize("prefix", ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"])
def test_date_prefixes_on_instants_and_periods(synthea: Loaded, prefix: str) -> None:
    for value in ("2013-12-11", "2013-12-11T13:55:57+00:00", "2019-01", "2019-01-15", "2015"):

        def observation_match(o: dict) -> bool:
            target = observation_span(o)
            return target is not None and date_matches(prefix, target, value)  # noqa: B023 (called at once)

        expected = synthea.ids("Observation", observation_match)
        assert found(synthea, "Observation", ("date", f"{prefix}{value}")) == expected, value
        expected = synthea.ids(
            "Encounter",
            lambda e: date_matches(prefix, period_span(e["period"]), value),  # noqa: B023 (called at once)
        )
        assert found(synthea, "Encounter", ("date", f"{prefix}{value}")) == expected, value


@pytest.mark.parametrize(
    ("low", "high"),
    [("ge2019-06-01", "lt2019-07-01"), ("gt2015", "le2016-03"), ("ge2019", "le2013")],
)
def test_date_ranges_anded_on_one_parameter(synthea: Loaded, low: str, high: str) -> None:
    """`date=ge…&date=lt…`: the engine tests a single-valued parameter's one row for both."""

    def both(spans: list) -> bool:
        return any(date_matches(low[:2], s, low[2:]) for s in spans) and any(
            date_matches(high[:2], s, high[2:]) for s in spans
        )

    for resource_type, spans_of in (
        ("Encounter", lambda r: [period_span(r["period"])]),
        ("Observation", lambda r: [s] if (s := observation_span(r)) else []),
    ):
        expected = synthea.ids(resource_type, lambda r: both(spans_of(r)))  # noqa: B023
        assert found(synthea, resource_type, ("date", low), ("date", high)) == expected


def test_date_criteria_on_a_repeating_element_may_match_different_values(synthea: Loaded) -> None:
    goal = {
        "resourceType": "Goal",
        "lifecycleStatus": "active",
        "description": {"text": "two targets"},
        "subject": {"reference": "Patient/" + synthea.extras["lea"].split("/")[1]},
        "target": [{"dueDate": "2020-01-10"}, {"dueDate": "2020-12-10"}],
    }
    made = synthea.client.post("/fhir/Goal", json=goal, headers=JSON)
    assert made.status_code == 201
    pairs = (("target-date", "ge2020-06-01"), ("target-date", "lt2020-03-01"))
    assert made.json()["id"] in found(synthea, "Goal", *pairs)  # one value each, not one both
    synthea.client.delete(f"/fhir/Goal/{made.json()['id']}")


def test_date_approximately(synthea: Loaded) -> None:
    value = "2015-06-15"
    low, high = span(value)
    gap = max(abs(datetime.now(UTC) - low), abs(datetime.now(UTC) - high)) / 10
    expected = synthea.ids(
        "Encounter",
        lambda e: (
            period_span(e["period"])[0] < high + gap and period_span(e["period"])[1] > low - gap
        ),
    )
    assert expected and found(synthea, "Encounter", ("date", f"ap{value}")) == expected


def test_date_without_zone_is_utc(synthea: Loaded) -> None:
    moment = "2013-12-11T13:55:57"
    expected = synthea.ids("Observation", lambda o: o.get("effectiveDateTime") == moment + "+00:00")
    assert expected and found(synthea, "Observation", ("date", moment)) == expected


# == number and quantity ===========================================================================


def _number_matches(prefix: str, target: float, text: str) -> bool:
    value = Decimal(text)
    half = Decimal(5) * Decimal(10) ** (value.as_tuple().exponent - 1)
    t = Decimal(str(target))
    return {
        "eq": value - half <= t < value + half,
        "ne": not (value - half <= t < value + half),
        "gt": t > value,
        "lt": t < value,
        "ge": t >= value,
        "le": t <= value,
        "sa": t > value,
        "eb": t < value,
        "ap": abs(t - value) <= abs(value) / 10,
    }[prefix]


@pytest.mark.parametrize("prefix", ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"])
def test_number_prefixes(synthea: Loaded, prefix: str) -> None:
    for value in ("0.25", "0.3", "0.5", "12", "1e1", "0.250"):
        expected = synthea.ids(
            "RiskAssessment",
            lambda r: any(
                _number_matches(prefix, p["probabilityDecimal"], value)  # noqa: B023 (called at once)
                for p in r["prediction"]
            ),
        )
        assert found(synthea, "RiskAssessment", ("probability", f"{prefix}{value}")) == expected, (
            value
        )


@pytest.mark.parametrize("prefix", ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"])
def test_quantity_prefixes(synthea: Loaded, prefix: str) -> None:
    def values(o: dict) -> list[float]:
        return [o["valueQuantity"]["value"]] if "valueQuantity" in o else []

    for value in ("185", "72", "100", "5.4", "60"):
        expected = synthea.ids(
            "Observation",
            lambda o: any(_number_matches(prefix, v, value) for v in values(o)),  # noqa: B023 (called at once)
        )
        assert found(synthea, "Observation", ("value-quantity", f"{prefix}{value}")) == expected, (
            value
        )


def test_quantity_units(synthea: Loaded) -> None:
    ucum = "http://unitsofmeasure.org"

    def quantity(o: dict) -> dict:
        return o.get("valueQuantity", {})

    expected = synthea.ids(
        "Observation",
        lambda o: quantity(o).get("code") == "mg" and quantity(o).get("system") == ucum,
    )
    assert (
        expected and found(synthea, "Observation", ("value-quantity", f"5.4|{ucum}|mg")) == expected
    )
    assert found(synthea, "Observation", ("value-quantity", f"5.4|{ucum}|ug")) == set()
    assert found(synthea, "Observation", ("value-quantity", "100||kg")) == {
        synthea.extras["obs-kg"].split("/")[1]
    }
    expected = synthea.ids(
        "Observation", lambda o: quantity(o).get("code") == "cm" and quantity(o)["value"] > 150
    )
    assert (
        expected
        and found(synthea, "Observation", ("value-quantity", f"gt150|{ucum}|cm")) == expected
    )


# == reference =====================================================================================


def test_reference_forms(synthea: Loaded) -> None:
    patient = next(p for p in synthea.of("Patient") if p["name"][0]["family"] == "Hoeger")
    target = f"Patient/{patient['id']}"
    expected = synthea.ids("Observation", lambda o: refers(o.get("subject"), target))
    assert expected
    for value in (target, patient["id"], f"{FHIR}/{target}"):
        assert found(synthea, "Observation", ("subject", value)) == expected, value
        assert found(synthea, "Observation", ("patient", value)) == expected, value
    assert found(synthea, "Observation", ("subject:Patient", patient["id"])) == expected
    assert found(synthea, "Observation", ("subject:Group", patient["id"])) == set()
    assert (
        found(synthea, "Observation", ("subject", "http://elsewhere.example/fhir/" + target))
        == set()
    )


def test_reference_identifier(synthea: Loaded) -> None:
    lea = synthea.extras["lea"].split("/")[1]
    assert found(synthea, "Patient", ("general-practitioner:identifier", "urn:test:npi|npi-1")) == {
        lea
    }
    assert found(synthea, "Patient", ("general-practitioner:identifier", "npi-1")) == {lea}
    assert (
        found(synthea, "Patient", ("general-practitioner:identifier", "urn:other|npi-1")) == set()
    )


def test_chains(synthea: Loaded) -> None:
    buster = next(p for p in synthea.of("Patient") if p["name"][0]["family"] == "Hoeger")
    expected = synthea.ids(
        "Observation", lambda o: refers(o.get("subject"), f"Patient/{buster['id']}")
    )
    assert found(synthea, "Observation", ("subject:Patient.name", "buster")) == expected
    assert found(synthea, "Observation", ("patient.family", "HOEG")) == expected
    assert found(synthea, "Observation", ("subject.name", "buster")) == expected

    def provider_city(e: dict) -> str:
        org = synthea.get(e["serviceProvider"]["reference"]) if "serviceProvider" in e else {}
        return org.get("address", [{}])[0].get("city", "")

    city = provider_city(next(iter(synthea.of("Encounter"))))
    encounters = {
        f"Encounter/{e['id']}" for e in synthea.of("Encounter") if provider_city(e) == city
    }
    expected = synthea.ids(
        "Observation", lambda o: o.get("encounter", {}).get("reference") in encounters
    )
    assert (
        expected
        and found(synthea, "Observation", ("encounter.service-provider.address-city", city))
        == expected
    )


@pytest.fixture(params=["gathered", "per-target"])
def reverse_chain_shape(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both SQL shapes of a reverse chain: sources gathered first (few sources) and each target
    probing for one source (many sources), forced by the threshold between them."""
    per_target = request.param == "per-target"
    monkeypatch.setattr(query, "DENSE_SOURCES", 1 if per_target else 10**9)
    monkeypatch.setattr(query, "DENSE_SHARE", 0.0)
    return str(request.param)


def test_reverse_chains(synthea: Loaded, reverse_chain_shape: str) -> None:
    def with_bp(p: dict) -> bool:
        return any(
            refers(o.get("subject"), f"Patient/{p['id']}") and has_code(o["code"], "55284-4")
            for o in synthea.of("Observation")
        )

    expected = synthea.ids("Patient", with_bp)
    assert (
        expected
        and found(synthea, "Patient", ("_has:Observation:patient:code", "55284-4")) == expected
    )
    expected = synthea.ids(
        "Patient",
        lambda p: any(
            refers(m.get("subject"), f"Patient/{p['id']}") and m["status"] == "stopped"
            for m in synthea.of("MedicationRequest")
        ),
    )
    assert (
        found(synthea, "Patient", ("_has:MedicationRequest:subject:status", "stopped")) == expected
    )
    practitioners_of_buster = {
        e["participant"][0]["individual"]["reference"].split("/")[1]
        for e in synthea.of("Encounter")
        if synthea.get(e["subject"]["reference"])["name"][0]["family"] == "Hoeger"
    }
    assert (
        found(synthea, "Practitioner", ("_has:Encounter:practitioner:patient.name", "buster"))
        == practitioners_of_buster
    )
    paged: list[str] = []
    bundle = search(
        synthea, "Patient", ("_has:Observation:patient:code", "55284-4"), ("_count", "1")
    )
    while True:
        paged.extend(e["resource"]["id"] for e in bundle.get("entry", []))
        following = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not following:
            break
        bundle = synthea.client.get(following[0]).json()
    assert sorted(paged) == sorted(synthea.ids("Patient", with_bp))


# == uri ===========================================================================================


def test_uri_exact_below_above(synthea: Loaded) -> None:
    ab, a = synthea.extras["vs-ab"].split("/")[1], synthea.extras["vs-a"].split("/")[1]
    assert found(synthea, "ValueSet", ("url", "http://example.org/fhir/ValueSet/a")) == {a}
    assert found(synthea, "ValueSet", ("url:below", "http://example.org/fhir/ValueSet/a")) == {
        a,
        ab,
    }
    assert found(synthea, "ValueSet", ("url:below", "http://example.org/fhir/ValueSet/a/b")) == {ab}
    assert found(synthea, "ValueSet", ("url:above", "http://example.org/fhir/ValueSet/a/b/c")) == {
        a,
        ab,
    }
    assert found(synthea, "ValueSet", ("url:above", "http://example.org/fhir/ValueSet/a")) == {a}


# == composite =====================================================================================


def _components(o: dict, code: str) -> list[dict]:
    return [c for c in o.get("component", []) if has_code(c["code"], code)]


def test_blood_pressure_through_components(synthea: Loaded) -> None:
    systolic = synthea.ids("Observation", lambda o: bool(_components(o, "8480-6")))
    assert systolic
    assert found(synthea, "Observation", ("code", "8480-6")) == set()
    assert found(synthea, "Observation", ("component-code", "8480-6")) == systolic
    assert found(synthea, "Observation", ("combo-code", "http://loinc.org|8480-6")) == systolic
    panels = synthea.ids("Observation", lambda o: has_code(o["code"], "55284-4"))
    assert found(synthea, "Observation", ("combo-code", "55284-4")) == panels
    for prefix, limit in (("gt", 120), ("lt", 110), ("ge", 140), ("le", 100)):
        expected = synthea.ids(
            "Observation",
            lambda o: any(
                _number_matches(prefix, c["valueQuantity"]["value"], str(limit))  # noqa: B023 (called at once)
                for c in _components(o, "8480-6")
            ),
        )
        assert (
            found(
                synthea,
                "Observation",
                ("combo-code-value-quantity", f"http://loinc.org|8480-6${prefix}{limit}"),
            )
            == expected
        )
        assert (
            found(
                synthea, "Observation", ("component-code-value-quantity", f"8480-6${prefix}{limit}")
            )
            == expected
        )
    diastolic = synthea.ids(
        "Observation",
        lambda o: any(c["valueQuantity"]["value"] < 80 for c in _components(o, "8462-4")),
    )
    assert (
        found(
            synthea,
            "Observation",
            ("component-code-value-quantity", "8462-4$lt80|http://unitsofmeasure.org|mm[Hg]"),
        )
        == diastolic
    )


def test_other_composites(synthea: Loaded) -> None:
    tall = synthea.ids(
        "Observation", lambda o: has_code(o["code"], "8302-2") and o["valueQuantity"]["value"] > 170
    )
    assert (
        tall
        and found(synthea, "Observation", ("code-value-quantity", "http://loinc.org|8302-2$gt170"))
        == tall
    )
    smokers = synthea.ids(
        "Observation",
        lambda o: (
            has_code(o["code"], "72166-2") and has_code(o.get("valueCodeableConcept"), "266919005")
        ),
    )
    assert (
        found(
            synthea,
            "Observation",
            ("code-value-concept", "72166-2$http://snomed.info/sct|266919005"),
        )
        == smokers
    )
    assert found(synthea, "Observation", ("code-value-string", "urn:test:codes|note$hello")) == {
        synthea.extras["obs-string"].split("/")[1]
    }


# == :missing, common parameters, OR and AND, escaping ============================================


def test_missing_on_every_type(synthea: Loaded) -> None:
    cases = [
        ("Patient", "birthdate", lambda p: "birthDate" not in p),  # date
        ("Patient", "name", lambda p: not p.get("name")),  # string
        ("Patient", "identifier", lambda p: not p.get("identifier")),  # token
        ("Observation", "encounter", lambda o: "encounter" not in o),  # reference
        ("Observation", "value-quantity", lambda o: "valueQuantity" not in o),  # quantity
        ("RiskAssessment", "probability", lambda r: False),  # number
        ("ValueSet", "url", lambda v: "url" not in v),  # uri
        (
            "Observation",
            "combo-code-value-quantity",
            lambda o: "valueQuantity" not in o and not o.get("component"),
        ),
    ]
    for resource_type, code, lacks in cases:
        missing = synthea.ids(resource_type, lacks)
        assert found(synthea, resource_type, (f"{code}:missing", "true")) == missing, code
        assert (
            found(synthea, resource_type, (f"{code}:missing", "false"))
            == synthea.ids(resource_type) - missing
        ), code


def test_common_parameters(synthea: Loaded) -> None:
    some = sorted(synthea.ids("Observation"))[:3]
    assert found(synthea, "Observation", ("_id", ",".join(some))) == set(some)
    assert found(synthea, "Observation", ("_id", some[0])) == {some[0]}
    before = synthea.loaded_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    extras = {ref.split("/")[1] for ref in synthea.extras.values() if ref.startswith("Patient/")}
    assert found(synthea, "Patient", ("_lastUpdated", f"gt{before}")) == extras
    assert (
        found(synthea, "Patient", ("_lastUpdated", f"lt{before}"))
        == synthea.ids("Patient") - extras
    )
    assert found(
        synthea, "Patient", ("_lastUpdated", f"ge{synthea.loaded_at.year}")
    ) == synthea.ids("Patient")
    tagged = synthea.ids(
        "Practitioner",
        lambda p: any(t["code"] == "synthea-5-2019" for t in p.get("meta", {}).get("tag", [])),
    )
    assert (
        tagged
        and found(
            synthea, "Practitioner", ("_tag", "https://smarthealthit.org/tags|synthea-5-2019")
        )
        == tagged
    )
    lea = synthea.extras["lea"].split("/")[1]
    assert found(synthea, "Patient", ("_security", "R")) == {lea}
    assert found(
        synthea, "Patient", ("_profile", "http://example.org/fhir/StructureDefinition/test-patient")
    ) == {lea}
    assert found(synthea, "Patient", ("_source", "urn:test:source#1")) == {lea}


def test_or_with_commas_and_with_repetition(synthea: Loaded) -> None:
    either = synthea.ids(
        "Observation", lambda o: has_code(o["code"], "8302-2") or has_code(o["code"], "29463-7")
    )
    assert found(synthea, "Observation", ("code", "8302-2,29463-7")) == either
    window = synthea.ids(
        "Encounter",
        lambda e: (
            date_matches("ge", period_span(e["period"]), "2010")
            and date_matches("lt", period_span(e["period"]), "2014")
        ),
    )
    assert found(synthea, "Encounter", ("date", "ge2010"), ("date", "lt2014")) == window
    both = synthea.ids(
        "Observation",
        lambda o: (
            has_code(o["code"], "8302-2")
            and refers(o.get("subject"), f"Patient/{next(iter(synthea.ids('Patient')))}")
        ),
    )
    first_patient = next(iter(synthea.ids("Patient")))
    assert found(synthea, "Observation", ("code", "8302-2"), ("patient", first_patient)) == both


def test_escaped_separators(synthea: Loaded) -> None:
    lea = synthea.extras["lea"].split("/")[1]
    assert found(synthea, "Patient", ("identifier", r"urn:test:esc|a\,b\$c\|d")) == {lea}
    assert found(synthea, "Patient", ("identifier", r"a\,b\$c\|d")) == {lea}
    assert found(synthea, "Patient", ("identifier", r"a,b")) == set()  # two values: "a" or "b"
    assert found(synthea, "Observation", ("value-string", r"Hello\, W")) == {
        synthea.extras["obs-string"].split("/")[1]
    }


# == errors ========================================================================================


@pytest.mark.parametrize(
    ("path", "pairs", "named"),
    [
        ("Patient", [("nmae", "x")], "nmae"),
        ("Patient", [("birthdate", "notadate")], "birthdate"),
        ("Patient", [("birthdate", "xx2019")], "birthdate"),
        ("Patient", [("_count", "abc")], "_count"),
        ("Patient", [("_sort", "unknown")], "_sort"),
        ("Patient", [("name:fuzzy", "x")], "name:fuzzy"),
        ("Patient", [("birthdate:exact", "2019")], "birthdate:exact"),
        ("Patient", [("gender:missing", "maybe")], "gender:missing"),
        ("Observation", [("value-quantity", "big")], "value-quantity"),
        ("Observation", [("combo-code-value-quantity", "8480-6")], "combo-code-value-quantity"),
        ("Observation", [("subject:Patient.nmae", "x")], "subject:Patient.nmae"),
        ("Observation", [("subject:Medication", "x")], "subject:Medication"),
        ("Patient", [("_has:Observation:patient:nope", "x")], "_has:Observation:patient:nope"),
        ("Patient", [("_include", "Patient:nope")], "_include"),
        ("Patient", [("_summary", "maybe")], "_summary"),
        ("Patient", [("_total", "some")], "_total"),
        ("Patient", [("_cursor", "bm9wZQ")], "_cursor"),
        ("RiskAssessment", [("probability", "1e99999999")], "probability"),
        ("Patient", [("name", "a\x00b")], "name"),
        ("Patient", [("birthdate", "0000")], "birthdate"),
    ],
)
def test_bad_parameters_answer_400_naming_them(
    synthea: Loaded, path: str, pairs: list, named: str
) -> None:
    answer = synthea.client.get(f"/fhir/{path}", params=pairs)
    assert answer.status_code == 400, answer.text
    outcome = answer.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] in ("invalid", "not-supported")
    assert (
        named in outcome["issue"][0].get("expression", [])
        or named in outcome["issue"][0]["diagnostics"]
    )


def test_unknown_types_answer_404(synthea: Loaded) -> None:
    for path in ("/fhir/Nonsense", "/fhir/Patient/1/Nonsense"):
        answer = synthea.client.get(path)
        assert answer.status_code == 404, path
        assert answer.json()["issue"][0]["code"] in ("not-supported", "not-found")


def test_lenient_handling_ignores_and_reports(synthea: Loaded) -> None:
    bundle = search(
        synthea,
        "Patient",
        ("nmae", "x"),
        ("gender", "male"),
        headers={"Prefer": "handling=lenient"},
    )
    matches = {e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "match"}
    assert matches == synthea.ids("Patient", lambda p: p["gender"] == "male")
    outcomes = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert len(outcomes) == 1 and outcomes[0]["issue"][0]["expression"] == ["nmae"]
    assert "nmae" not in next(link["url"] for link in bundle["link"] if link["relation"] == "self")
    strict = synthea.client.get(
        "/fhir/Patient", params={"nmae": "x"}, headers={"Prefer": "handling=strict"}
    )
    assert strict.status_code == 400
