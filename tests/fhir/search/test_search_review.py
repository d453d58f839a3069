"""Findings of a review of search against R4 (search.html, token and `:missing`): `system|code` on
elements of type `code`, and `:missing` on references that name no stored resource. Each test
makes its own data on a fresh SQLite or PostgreSQL database."""

from __future__ import annotations

from fastapi.testclient import TestClient

JSON = {"Content-Type": "application/fhir+json"}
GENDER = "http://hl7.org/fhir/administrative-gender"
OBSERVATION_STATUS = "http://hl7.org/fhir/observation-status"


def create(client: TestClient, resource: dict) -> str:
    answer = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=JSON)
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def ids(client: TestClient, path: str, **params: str) -> set[str]:
    answer = client.get(f"/fhir/{path}", params=params)
    assert answer.status_code == 200, answer.text
    return {e["resource"]["id"] for e in answer.json().get("entry", [])}


def observation(status: str, subject: dict | None = None, **extra: object) -> dict:
    resource = {
        "resourceType": "Observation",
        "status": status,
        "code": {"coding": [{"system": "urn:test:codes", "code": "review"}]},
        **extra,
    }
    if subject is not None:
        resource["subject"] = subject
    return resource


def test_a_code_element_matches_the_system_of_its_required_binding(client: TestClient) -> None:
    male = create(client, {"resourceType": "Patient", "gender": "male"})
    female = create(client, {"resourceType": "Patient", "gender": "female"})
    final = create(client, observation("final"))
    amended = create(client, observation("amended"))

    assert ids(client, "Patient", gender="male") == {male}
    assert ids(client, "Patient", gender=f"{GENDER}|male") == {male}
    assert ids(client, "Patient", gender=f"{GENDER}|male,{GENDER}|female") == {male, female}
    assert ids(client, "Patient", gender=f"{GENDER}|") == {male, female}
    assert ids(client, "Patient", **{"gender:not": f"{GENDER}|male"}) == {female}
    # a system that is not the binding's, and a code of another system, match nothing
    assert ids(client, "Patient", gender="http://example.org/gender|male") == set()
    assert ids(client, "Patient", gender=f"{OBSERVATION_STATUS}|male") == set()
    # the code has a system, an implicit one: `|code` asks for a code without any
    assert ids(client, "Patient", gender="|male") == set()

    assert ids(client, "Observation", status=f"{OBSERVATION_STATUS}|final") == {final}
    both = f"{OBSERVATION_STATUS}|final,{OBSERVATION_STATUS}|amended"
    assert ids(client, "Observation", status=both) == {final, amended}
    assert ids(client, "Observation", status=f"{GENDER}|final") == set()


def test_missing_sees_contained_and_identifier_references(client: TestClient) -> None:
    patient = create(client, {"resourceType": "Patient", "name": [{"family": "Present"}]})
    stored = create(client, observation("final", {"reference": f"Patient/{patient}"}))
    contained = create(
        client,
        observation(
            "final",
            {"reference": "#p1"},
            contained=[{"resourceType": "Patient", "id": "p1", "gender": "other"}],
        ),
    )
    by_identifier = create(
        client, observation("final", {"identifier": {"system": "urn:test:mrn", "value": "42"}})
    )
    absent = create(client, observation("final"))

    assert ids(client, "Observation", **{"subject:missing": "true"}) == {absent}
    assert ids(client, "Observation", **{"subject:missing": "false"}) == {
        stored,
        contained,
        by_identifier,
    }
    # the contained reference's row serves `:missing` only
    assert ids(client, "Observation", subject="#p1") == set()
    assert ids(client, "Observation", subject=f"Patient/{patient}") == {stored}


def test_missing_sees_a_contained_coverage(client: TestClient) -> None:
    patient = create(client, {"resourceType": "Patient", "name": [{"family": "Insured"}]})
    organization = create(client, {"resourceType": "Organization", "name": "Payer"})
    claim = {
        "resourceType": "ExplanationOfBenefit",
        "status": "active",
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/claim-type",
                    "code": "institutional",
                }
            ]
        },
        "use": "claim",
        "patient": {"reference": f"Patient/{patient}"},
        "created": "2024-01-01",
        "insurer": {"reference": f"Organization/{organization}"},
        "provider": {"reference": f"Organization/{organization}"},
        "outcome": "complete",
    }
    coverage = {
        "resourceType": "Coverage",
        "id": "coverage",
        "status": "active",
        "beneficiary": {"reference": f"Patient/{patient}"},
        "payor": [{"reference": f"Organization/{organization}"}],
    }
    contained = create(
        client,
        {
            **claim,
            "contained": [coverage],
            "insurance": [{"focal": True, "coverage": {"reference": "#coverage"}}],
        },
    )
    stored_coverage = create(client, {k: v for k, v in coverage.items() if k != "id"})
    stored = create(
        client,
        {
            **claim,
            "insurance": [
                {"focal": True, "coverage": {"reference": f"Coverage/{stored_coverage}"}}
            ],
        },
    )

    # insurance.coverage is mandatory: every EOB has one, contained or stored
    assert ids(client, "ExplanationOfBenefit", **{"coverage:missing": "true"}) == set()
    assert ids(client, "ExplanationOfBenefit", **{"coverage:missing": "false"}) == {
        contained,
        stored,
    }
