"""Patient/$everything: `start` and `end` (care dates), and the type-level form."""

from __future__ import annotations

import base64

from factories import create, observation, patient
from fastapi.testclient import TestClient
from operations_support import populate
from test_op_everything import _pages, _split

from vitasync_fhir.fhir.operations import everything
from vitasync_fhir.fhir.search.registry import compartment_types, params_for


def _dated_record(client: TestClient) -> tuple[str, dict[str, tuple[str, str]]]:
    pid = create(client, patient(family="Dated"))["id"]
    ref = f"Patient/{pid}"
    doc = create(client, {"resourceType": "Practitioner", "name": [{"family": "Old"}]})["id"]

    def made(resource: dict) -> tuple[str, str]:
        return resource["resourceType"], create(client, resource)["id"]

    record = {
        "patient": ("Patient", pid),
        "obs2019": made(observation(patient_ref=ref, effectiveDateTime="2019-05-01")),
        "obs2020": made(observation(patient_ref=ref, effectiveDateTime="2020-03-15T10:00:00Z")),
        "obs2021": made(observation(patient_ref=ref, effectiveDateTime="2021-07")),
        "undated": made(observation(patient_ref=ref)),
        # Over the new year: in a range starting 2020-01-01 and in one ending 2019-12-31
        "encounter": made(
            {
                "resourceType": "Encounter",
                "status": "finished",
                "class": {"code": "AMB"},
                "subject": {"reference": ref},
                "period": {"start": "2019-12-20", "end": "2020-01-05"},
            }
        ),
        "old_encounter": made(
            {
                "resourceType": "Encounter",
                "status": "finished",
                "class": {"code": "AMB"},
                "subject": {"reference": ref},
                "period": {"start": "2015-02-01", "end": "2015-02-01"},
                "participant": [{"individual": {"reference": f"Practitioner/{doc}"}}],
            }
        ),
        # Onset in 2018, recorded in 2020: either date puts it in a range
        "condition": made(
            {
                "resourceType": "Condition",
                "subject": {"reference": ref},
                "code": {"text": "Asthma"},
                "onsetDateTime": "2018-04-01",
                "recordedDate": "2020-02-01",
            }
        ),
        "prescription": made(
            {
                "resourceType": "MedicationRequest",
                "status": "active",
                "intent": "order",
                "subject": {"reference": ref},
                "medicationCodeableConcept": {"text": "Salbutamol"},
                "authoredOn": "2022-01-10",
            }
        ),
    }
    record["doctor"] = ("Practitioner", doc)
    return pid, record


def _record(
    client: TestClient, url: str, **headers: str
) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    matches, includes = _split(_pages(client, url, **headers))
    assert len(matches) == len(set(matches))
    return set(matches), includes


def test_start_and_end_keep_what_was_cared_for_in_the_range(client: TestClient) -> None:
    pid, r = _dated_record(client)
    url = f"/fhir/Patient/{pid}/$everything"
    always = {r["patient"], r["undated"]}

    matches, includes = _record(client, f"{url}?start=2020-01-01&end=2020-12-31&_count=2")
    assert matches == always | {r["obs2020"], r["encounter"], r["condition"]}
    assert includes == set()  # the Practitioner only the 2015 Encounter names is left out

    matches, _ = _record(client, f"{url}?end=2019-12-31")
    expected = {r["obs2019"], r["encounter"], r["condition"], r["old_encounter"]}
    assert matches == always | expected

    matches, _ = _record(client, f"{url}?start=2021")
    assert matches == always | {r["obs2021"], r["prescription"]}

    # A day's precision: the 2020-03-15T10:00Z Observation is in 2020-03-15, not in 2020-03-16
    matches, _ = _record(client, f"{url}?start=2020-03-15&end=2020-03-15")
    assert matches == always | {r["obs2020"]}
    matches, _ = _record(client, f"{url}?start=2020-03-16&end=2020-03-31")
    assert matches == always

    whole, includes = _record(client, url)
    assert whole == set(r.values()) - {r["doctor"]}
    assert includes == {r["doctor"]}


def test_start_and_end_are_dates(client: TestClient) -> None:
    pid = create(client, patient(family="Bad"))["id"]
    for query, name in (("start=soon", "start"), ("end=2020-13", "end"), ("end=ge2020", "end")):
        answer = client.get(f"/fhir/Patient/{pid}/$everything?{query}")
        assert answer.status_code == 400, query
        issue = answer.json()["issue"][0]
        assert issue["code"] == "invalid" and issue["expression"] == [name]
    twice = client.get(f"/fhir/Patient/{pid}/$everything?start=2020&start=2021")
    assert twice.status_code == 400


def test_start_and_end_may_be_posted(client: TestClient) -> None:
    pid, r = _dated_record(client)
    parameters = {
        "resourceType": "Parameters",
        "parameter": [{"name": "start", "valueDate": "2022-01-01"}],
    }
    answer = client.post(f"/fhir/Patient/{pid}/$everything", json=parameters)
    assert answer.status_code == 200, answer.text
    matches, _ = _split([answer.json()])
    assert set(matches) == {r["patient"], r["undated"], r["prescription"]}


def test_care_dates_are_search_parameters_of_compartment_types() -> None:
    for resource_type, codes in everything.CARE_DATES.items():
        assert resource_type in compartment_types()
        for code in codes:
            found = params_for(resource_type).get(code)
            assert found is not None and found.type == "date", (resource_type, code)


def test_everything_of_every_patient_the_caller_may_see(client: TestClient, signed_in) -> None:  # type: ignore[no-untyped-def]
    people = populate(client, patients=2)
    mine, theirs = people.patients
    both = people.records[mine] | people.records[theirs]
    matches, includes = _record(client, "/fhir/Patient/$everything?_count=3")
    assert matches == both
    assert includes == {
        ("Practitioner", people.practitioner),
        ("Organization", people.organization),
    }
    posted = client.post("/fhir/Patient/$everything")
    assert posted.status_code == 200 and posted.json()["total"] == len(both)

    own = signed_in(role="patient", patient_id=mine)
    matches, _ = _record(client, "/fhir/Patient/$everything?_count=2", **own)
    assert matches == people.records[mine]
    typed, _ = _record(client, "/fhir/Patient/$everything?_type=Patient", **own)
    assert typed == {("Patient", mine)}

    trail = client.get("/fhir/AuditEvent", params={"_count": 1000}).json().get("entry", [])
    queries = [
        (base64.b64decode(entity["query"]).decode(), event)
        for event in (e["resource"] for e in trail)
        for entity in event.get("entity", [])
        if "query" in entity
    ]
    whose = [
        {e["what"]["reference"] for e in event["entity"] if "what" in e}
        for text, event in queries
        if text.startswith("$everything") and "_type=Patient" in text
    ]
    assert whose == [{f"Patient/{mine}"}]


def test_type_level_start_and_end(client: TestClient) -> None:
    pid, r = _dated_record(client)
    other = create(client, patient(family="Other"))["id"]
    late = create(client, observation(patient_ref=f"Patient/{other}", effectiveDateTime="2023"))
    matches, _ = _record(client, "/fhir/Patient/$everything?start=2022-06-01")
    assert matches == {r["patient"], r["undated"], ("Patient", other), ("Observation", late["id"])}
