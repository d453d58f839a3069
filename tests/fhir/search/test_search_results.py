"""What a search answers: sorting, keyset pages, totals, summaries, included resources, and the
other ways in (POST, across types, in a compartment), on SQLite and PostgreSQL against Synthea."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlsplit

import pytest
from search_support import FHIR, Loaded

pytestmark = pytest.mark.synthea


def fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def get(loaded: Loaded, path: str, *pairs: tuple[str, str]) -> dict:
    answer = loaded.client.get(f"/fhir/{path}" if path else "/fhir", params=list(pairs))
    assert answer.status_code == 200, answer.text
    return answer.json()


def follow(loaded: Loaded, url: str) -> dict:
    assert url.startswith(FHIR)
    answer = loaded.client.get(url.removeprefix("http://testserver"))
    assert answer.status_code == 200, answer.text
    return answer.json()


def link(bundle: dict, relation: str) -> str | None:
    return next((x["url"] for x in bundle.get("link", []) if x["relation"] == relation), None)


def ids(bundle: dict, mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def keys(bundle: dict, mode: str) -> set[str]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == mode
    }


# == _sort =========================================================================================


def test_sort_by_date_ascending_and_descending(synthea: Loaded) -> None:
    encounters = synthea.of("Encounter")
    ascending = [e["id"] for e in sorted(encounters, key=lambda e: (e["period"]["start"], e["id"]))]
    assert ids(get(synthea, "Encounter", ("_sort", "date"), ("_count", "100"))) == ascending
    descending = [
        e["id"]
        for e in sorted(encounters, key=lambda e: (e["period"]["end"], e["id"]), reverse=True)
    ]
    assert ids(get(synthea, "Encounter", ("_sort", "-date"), ("_count", "100"))) == descending


def test_sort_by_string_with_missing_values_last(synthea: Loaded) -> None:
    patients = synthea.of("Patient")
    with_birth = sorted(
        (p for p in patients if "birthDate" in p), key=lambda p: (p["birthDate"][:7], p["id"])
    )
    without = sorted(p["id"] for p in patients if "birthDate" not in p)
    answer = ids(get(synthea, "Patient", ("_sort", "birthdate")))
    assert answer[len(with_birth) :] == without
    assert set(answer[: len(with_birth)]) == {p["id"] for p in with_birth}
    families = sorted(patients, key=lambda p: (min(fold(n["family"]) for n in p["name"]), p["id"]))
    assert ids(get(synthea, "Patient", ("_sort", "family"))) == [p["id"] for p in families]


def test_sort_on_several_keys(synthea: Loaded) -> None:
    practitioners = synthea.of("Practitioner")
    # gender ascending, then family descending; ties broken by id in the direction of the last key
    expected = sorted(practitioners, key=lambda p: (p["id"],), reverse=True)
    expected = sorted(expected, key=lambda p: fold(p["name"][0]["family"]), reverse=True)
    expected = sorted(expected, key=lambda p: p["gender"])
    answer = ids(get(synthea, "Practitioner", ("_sort", "gender,-family"), ("_count", "500")))
    assert answer == [p["id"] for p in expected]


def test_sort_by_last_updated_and_id(synthea: Loaded) -> None:
    extras = [
        ref.split("/")[1] for name, ref in synthea.extras.items() if ref.startswith("Observation/")
    ]
    newest = ids(
        get(synthea, "Observation", ("_sort", "-_lastUpdated"), ("_count", str(len(extras))))
    )
    assert set(newest) == set(extras)
    assert ids(get(synthea, "Observation", ("_sort", "_id"), ("_count", "1000"))) == sorted(
        synthea.ids("Observation")
    )
    assert ids(get(synthea, "Observation", ("_sort", "-_id"), ("_count", "1000"))) == sorted(
        synthea.ids("Observation"), reverse=True
    )


def test_filtered_and_sorted_on_one_date_parameter_pages_in_order(synthea: Loaded) -> None:
    """`Encounter?date=ge…&_sort=±date`: filter and sort share the one index row of the period
    (a join that pages straight off the index); the order, and pages both ways, as computed here."""

    def instant(text: str) -> datetime:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))

    since = datetime(2015, 1, 1, tzinfo=UTC)
    chosen = [
        e
        for e in synthea.of("Encounter")
        if instant(e["period"]["end"]) > since + timedelta(days=1)
        or instant(e["period"]["start"]) >= since
    ]
    assert 3 < len(chosen) < len(synthea.of("Encounter"))
    expected = {
        "date": [
            e["id"] for e in sorted(chosen, key=lambda e: (instant(e["period"]["start"]), e["id"]))
        ],
        "-date": [
            e["id"]
            for e in sorted(
                chosen, key=lambda e: (instant(e["period"]["end"]), e["id"]), reverse=True
            )
        ],
    }
    for sort, order in expected.items():
        pages = [
            get(synthea, "Encounter", ("date", "ge2015-01-01"), ("_sort", sort), ("_count", "3"))
        ]
        while link(pages[-1], "next"):
            pages.append(follow(synthea, link(pages[-1], "next")))
        assert [i for page in pages for i in ids(page)] == order, sort
        back = [pages[-1]]
        while link(back[-1], "previous"):
            back.append(follow(synthea, link(back[-1], "previous")))
        assert [ids(p) for p in reversed(back)] == [ids(p) for p in pages], sort


# == pages =========================================================================================


def test_pages_walk_forward_and_back_without_gaps(synthea: Loaded) -> None:
    for sort in ("_id", "-date", "-_lastUpdated", "code,-date"):
        first = get(synthea, "Observation", ("_sort", sort), ("_count", "7"))
        pages = [first]
        while link(pages[-1], "next"):
            pages.append(follow(synthea, link(pages[-1], "next")))
        seen = [i for page in pages for i in ids(page)]
        assert len(seen) == len(set(seen)) == len(synthea.ids("Observation")), sort
        assert all(len(ids(page)) == 7 for page in pages[:-1])
        assert link(first, "previous") is None
        back = [pages[-1]]
        while link(back[-1], "previous"):
            back.append(follow(synthea, link(back[-1], "previous")))
        assert [ids(p) for p in reversed(back)] == [ids(p) for p in pages], sort
        query = dict(parse_qsl(urlsplit(link(first, "next")).query))
        assert query["_sort"] == sort and query["_count"] == "7" and "_cursor" in query


def test_count_zero_and_summary_count_answer_the_total_only(synthea: Loaded) -> None:
    for pairs in ((("_count", "0"),), (("_summary", "count"),)):
        bundle = get(synthea, "Observation", ("code", "8302-2"), *pairs)
        assert bundle["total"] == len(
            synthea.ids("Observation", lambda o: o["code"]["coding"][0]["code"] == "8302-2")
        )
        assert "entry" not in bundle


def test_totals(synthea: Loaded) -> None:
    everything = len(synthea.ids("Observation"))
    assert (
        get(synthea, "Observation", ("_total", "accurate"), ("_count", "2"))["total"] == everything
    )
    assert "total" not in get(synthea, "Observation", ("_count", "2"))
    assert "total" not in get(synthea, "Observation", ("_total", "none"), ("_count", "1000"))
    estimate = get(synthea, "Observation", ("_total", "estimate"), ("_count", "2"))["total"]
    assert isinstance(estimate, int) and estimate > 0
    assert get(synthea, "Patient")["total"] == len(
        synthea.ids("Patient")
    )  # one page: known for free


def test_count_is_capped_by_the_maximum(synthea: Loaded) -> None:
    bundle = get(synthea, "Observation", ("_count", "100000"))
    assert len(ids(bundle)) == min(len(synthea.ids("Observation")), 1000)


# == _summary and _elements ========================================================================


def _subsetted(resource: dict) -> bool:
    return any(t.get("code") == "SUBSETTED" for t in resource.get("meta", {}).get("tag", []))


def test_summary_and_elements(synthea: Loaded) -> None:
    summary = [e["resource"] for e in get(synthea, "Patient", ("_summary", "true"))["entry"]]
    assert all(
        _subsetted(p) and "text" not in p and "extension" not in p and "name" in p for p in summary
    )
    text = [e["resource"] for e in get(synthea, "Patient", ("_summary", "text"))["entry"]]
    assert all("name" not in p and "birthDate" not in p for p in text)
    data = [e["resource"] for e in get(synthea, "Patient", ("_summary", "data"))["entry"]]
    assert all("text" not in p and "name" in p for p in data)
    full = [e["resource"] for e in get(synthea, "Patient", ("_summary", "false"))["entry"]]
    assert all(not _subsetted(p) for p in full)
    elements = [
        e["resource"] for e in get(synthea, "Patient", ("_elements", "birthDate,gender"))["entry"]
    ]
    allowed = {"resourceType", "id", "meta", "birthDate", "gender"}
    assert all(set(p) <= allowed and _subsetted(p) for p in elements)
    observations = [
        e["resource"]
        for e in get(synthea, "Observation", ("_elements", "value"), ("_count", "50"))["entry"]
    ]
    assert any("valueQuantity" in o for o in observations)
    assert all(
        {"status", "code"} <= set(o) and "subject" not in o for o in observations
    )  # mandatory stay


# == _include and _revinclude ======================================================================


def test_include(synthea: Loaded) -> None:
    requests = synthea.of("MedicationRequest")
    bundle = get(synthea, "MedicationRequest", ("_include", "MedicationRequest:requester"))
    assert set(ids(bundle)) == {m["id"] for m in requests}
    assert keys(bundle, "include") == {m["requester"]["reference"] for m in requests}
    typed = get(
        synthea, "MedicationRequest", ("_include", "MedicationRequest:requester:Organization")
    )
    assert keys(typed, "include") == set()


def test_include_star_and_iterate(synthea: Loaded) -> None:
    requests = synthea.of("MedicationRequest")
    everything = {
        value["reference"]
        for m in requests
        for value in [
            m.get("subject"),
            m.get("encounter"),
            m.get("requester"),
        ]  # reasonReference is
        if value  # no search parameter of MedicationRequest, so `*` does not follow it
    }
    assert keys(get(synthea, "MedicationRequest", ("_include", "*")), "include") == everything
    encounters = {m["encounter"]["reference"] for m in requests}
    providers = {synthea.get(e)["serviceProvider"]["reference"] for e in encounters}
    bundle = get(
        synthea,
        "MedicationRequest",
        ("_include", "MedicationRequest:encounter"),
        ("_include:iterate", "Encounter:service-provider"),
    )
    assert keys(bundle, "include") == encounters | providers
    # without :iterate an _include only applies to the searched type, so it is refused
    plain = synthea.client.get(
        "/fhir/MedicationRequest",
        params=[
            ("_include", "MedicationRequest:encounter"),
            ("_include", "Encounter:service-provider"),
        ],
    )
    assert plain.status_code == 400 and plain.json()["issue"][0]["expression"] == ["_include"]


def test_revinclude_and_iterate(synthea: Loaded) -> None:
    buster = next(p for p in synthea.of("Patient") if p["name"][0]["family"] == "Hoeger")
    target = f"Patient/{buster['id']}"
    encounters = {
        f"Encounter/{e['id']}"
        for e in synthea.of("Encounter")
        if e["subject"]["reference"] == target
    }
    bundle = get(synthea, "Patient", ("_id", buster["id"]), ("_revinclude", "Encounter:patient"))
    assert ids(bundle) == [buster["id"]] and keys(bundle, "include") == encounters
    observations = {
        f"Observation/{o['id']}"
        for o in synthea.of("Observation")
        if o.get("encounter", {}).get("reference") in encounters
    }
    bundle = get(
        synthea,
        "Patient",
        ("_id", buster["id"]),
        ("_revinclude", "Encounter:patient"),
        ("_revinclude:iterate", "Observation:encounter"),
    )
    assert keys(bundle, "include") == encounters | observations


def test_revinclude_star(synthea: Loaded) -> None:
    target = next(iter(synthea.of("Encounter")))["serviceProvider"]["reference"]
    organization = synthea.get(target)

    def mentions(value: object) -> bool:
        if isinstance(value, dict):
            return value.get("reference") == target or any(mentions(v) for v in value.values())
        return isinstance(value, list) and any(mentions(v) for v in value)

    referring = {f"{t}/{i}" for (t, i), r in synthea.resources.items() if mentions(r)}
    bundle = get(synthea, "Organization", ("_id", organization["id"]), ("_revinclude", "*"))
    # `*` follows search parameters only; every Synthea reference to an Organization is one
    assert referring and keys(bundle, "include") == referring


def test_included_resources_are_not_matches(synthea: Loaded) -> None:
    bundle = get(synthea, "Encounter", ("_include", "Encounter:patient"), ("_count", "2"))
    assert len(ids(bundle)) == 2
    assert all(k.startswith("Patient/") for k in keys(bundle, "include"))


# == POST, across types, compartments ==============================================================


def test_post_search_equals_get(synthea: Loaded) -> None:
    pairs = [("code", "8302-2,29463-7"), ("_sort", "-date"), ("_count", "5")]
    got = get(synthea, "Observation", *pairs)
    posted = synthea.client.post(
        "/fhir/Observation/_search",
        data=dict(pairs),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert posted.status_code == 200, posted.text
    assert ids(posted.json()) == ids(got)
    assert link(posted.json(), "next") == link(got, "next")
    wrong = synthea.client.post("/fhir/Observation/_search", json={"code": "x"})
    assert wrong.status_code == 415


def test_search_across_types(synthea: Loaded) -> None:
    extra_tag = ("_tag", "urn:test:tags|extra")
    assert keys(get(synthea, "", extra_tag), "match") == {
        synthea.extras["lea"],
        synthea.extras["zoe"],
    }
    patients = {f"Patient/{i}" for i in synthea.ids("Patient")}
    organizations = {f"Organization/{i}" for i in synthea.ids("Organization")}
    bundle = get(synthea, "", ("_type", "Patient,Organization"), ("_count", "1000"))
    assert keys(bundle, "match") == patients | organizations
    starts = {
        f"Patient/{p['id']}"
        for p in synthea.of("Patient")
        if fold(p["name"][0]["family"]).startswith("k")
    }
    starts |= {
        f"Practitioner/{p['id']}"
        for p in synthea.of("Practitioner")
        if fold(p["name"][0]["family"]).startswith("k")
    }
    assert (
        keys(
            get(synthea, "", ("_type", "Patient,Practitioner"), ("family", "k"), ("_count", "500")),
            "match",
        )
        == starts
    )
    answer = synthea.client.get("/fhir", params={"_type": "Patient,Organization", "family": "k"})
    assert answer.status_code == 400  # Organization has no family


def test_compartment_search(synthea: Loaded) -> None:
    buster = next(p for p in synthea.of("Patient") if p["name"][0]["family"] == "Hoeger")
    target = f"Patient/{buster['id']}"
    observations = synthea.ids("Observation", lambda o: o["subject"]["reference"] == target)
    assert (
        set(ids(get(synthea, f"Patient/{buster['id']}/Observation", ("_count", "1000"))))
        == observations
    )
    heights = synthea.ids(
        "Observation",
        lambda o: (
            o["subject"]["reference"] == target and o["code"]["coding"][0]["code"] == "8302-2"
        ),
    )
    assert (
        set(ids(get(synthea, f"Patient/{buster['id']}/Observation", ("code", "8302-2")))) == heights
    )
    referring = {
        f"{t}/{i}"
        for (t, i), r in synthea.resources.items()
        if t
        in (
            "Encounter",
            "Observation",
            "Condition",
            "Claim",
            "ExplanationOfBenefit",
            "Immunization",
            "Procedure",
            "DiagnosticReport",
            "MedicationRequest",
            "CarePlan",
        )
        and any(r.get(field, {}).get("reference") == target for field in ("subject", "patient"))
    }
    everything = keys(get(synthea, f"Patient/{buster['id']}/*", ("_count", "1000")), "match")
    # Reading the patient's data wrote AuditEvents about them: they are in the compartment too.
    audits = {key for key in everything if key.startswith("AuditEvent/")}
    assert everything - audits == referring | {target}
