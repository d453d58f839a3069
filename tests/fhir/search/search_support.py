"""Loading the small Synthea bundles and a few hand-made resources into a test server, keeping the
stored resources as plain JSON (references rewritten as the server rewrote them) so that tests can
compute what a search must find without asking the search engine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from fastapi.testclient import TestClient
from support import create_postgres_database

from vitasync_fhir import migrations

BASE_URL = "http://testserver"
FHIR = f"{BASE_URL}/fhir"
BUNDLES = (
    "practitionerInformation1559319163815.json",
    "hospitalInformation1559319163815.json",
    "Clemente_Kreiger_1484a42d-0eaf-4654-9cbf-6b050a5cd73b.json",
    "Buster_Hoeger_ad2e3fc5-2b5d-4cb9-8d03-9ea0f4ac8423.json",
    "Liz_Conn_27c911c6-f045-4ffa-af5d-6eba57ac94b2.json",
)
JSON = {"Content-Type": "application/fhir+json"}


@dataclass
class Loaded:
    """The loaded server and what it stores, references rewritten as the server rewrote them."""

    client: TestClient
    resources: dict[tuple[str, str], dict] = field(default_factory=dict)
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    extras: dict[str, str] = field(default_factory=dict)  # name -> "Type/id" of hand-made resources

    def of(self, resource_type: str) -> list[dict]:
        return [r for (t, _), r in self.resources.items() if t == resource_type]

    def ids(self, resource_type: str, keep=lambda r: True) -> set[str]:  # type: ignore[no-untyped-def]
        return {r["id"] for r in self.of(resource_type) if keep(r)}

    def get(self, reference: str) -> dict:
        resource_type, _, resource_id = reference.partition("/")
        return self.resources[(resource_type, resource_id)]


def _rewrite(value: object, ids: dict[str, str]) -> object:
    if isinstance(value, dict):
        return {
            k: (ids.get(v, v) if k == "reference" and isinstance(v, str) else _rewrite(v, ids))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_rewrite(v, ids) for v in value]
    return value


def load_bundle(loaded: Loaded, path: Path) -> None:
    bundle = json.loads(path.read_text())
    answer = loaded.client.post("/fhir", content=path.read_bytes(), headers=JSON)
    assert answer.status_code == 200, answer.text[:2000]
    ids: dict[str, str] = {}
    for request_entry, response_entry in zip(bundle["entry"], answer.json()["entry"], strict=True):
        location = response_entry["response"]["location"].removeprefix(FHIR + "/")
        ids[request_entry["fullUrl"]] = location.split("/_history/")[0]
    for entry in bundle["entry"]:
        reference = ids[entry["fullUrl"]]
        resource_type, _, resource_id = reference.partition("/")
        resource = _rewrite(entry["resource"], ids)
        assert isinstance(resource, dict)
        resource["id"] = resource_id
        loaded.resources[(resource_type, resource_id)] = resource


def _create(loaded: Loaded, name: str, resource: dict) -> str:
    answer = loaded.client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=JSON)
    assert answer.status_code == 201, answer.text
    stored = answer.json()
    reference = f"{stored['resourceType']}/{stored['id']}"
    loaded.resources[(stored["resourceType"], stored["id"])] = stored
    loaded.extras[name] = reference
    return reference


def load_extras(loaded: Loaded) -> None:
    """Resources for what Synthea lacks: accents, escaped characters, meta fields, numbers, units,
    partial dates, identifiers in references, uris."""
    lea = _create(
        loaded,
        "lea",
        {
            "resourceType": "Patient",
            "meta": {
                "tag": [{"system": "urn:test:tags", "code": "extra"}],
                "security": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                        "code": "R",
                    }
                ],
                "profile": ["http://example.org/fhir/StructureDefinition/test-patient"],
                "source": "urn:test:source#1",
            },
            "identifier": [{"system": "urn:test:esc", "value": "a,b$c|d"}],
            "name": [{"family": "Müller-Ñúñez", "given": ["Ĺéa"]}],
            "gender": "female",
            "birthDate": "1984-07",
            "telecom": [{"system": "phone", "value": "555-0100"}],
            "generalPractitioner": [{"identifier": {"system": "urn:test:npi", "value": "npi-1"}}],
        },
    )
    _create(
        loaded,
        "zoe",
        {
            "resourceType": "Patient",
            "meta": {"tag": [{"system": "urn:test:tags", "code": "extra"}]},
            "name": [{"family": "Zeta", "given": ["Zoë"]}],
            "gender": "female",
            "deceasedDateTime": "2020-02-02T10:00:00Z",
        },
    )
    ucum = "http://unitsofmeasure.org"
    _create(
        loaded,
        "obs-mg",
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"code": "no-system-code"}], "text": "Special test"},
            "subject": {"reference": lea},
            "effectivePeriod": {"start": "2019-01-01T00:00:00Z", "end": "2019-01-31T00:00:00Z"},
            "valueQuantity": {"value": 5.4, "unit": "mg", "system": ucum, "code": "mg"},
        },
    )
    _create(
        loaded,
        "obs-ug",
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "urn:test:codes", "code": "no-system-code"}]},
            "subject": {"reference": lea},
            "effectiveDateTime": "2019-01-15",
            "valueQuantity": {"value": 5400, "unit": "ug", "system": ucum, "code": "ug"},
        },
    )
    _create(
        loaded,
        "obs-kg",
        {
            "resourceType": "Observation",
            "status": "preliminary",
            "code": {"coding": [{"system": "urn:test:codes", "code": "weight"}]},
            "subject": {"reference": lea},
            "effectiveDateTime": "2019-02",
            "valueQuantity": {"value": 100, "unit": "kg"},
        },
    )
    _create(
        loaded,
        "obs-string",
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "urn:test:codes", "code": "note"}]},
            "subject": {"reference": lea},
            "valueString": "Hello, World",
        },
    )
    for name, probability in (("risk-quarter", 0.25), ("risk-half", 0.5), ("risk-high", 12)):
        _create(
            loaded,
            name,
            {
                "resourceType": "RiskAssessment",
                "status": "final",
                "subject": {"reference": lea},
                "prediction": [{"probabilityDecimal": probability}],
            },
        )
    for name, url in (
        ("vs-ab", "http://example.org/fhir/ValueSet/a/b"),
        ("vs-a", "http://example.org/fhir/ValueSet/a"),
    ):
        _create(loaded, name, {"resourceType": "ValueSet", "status": "active", "url": url})


def postgres_database(name: str) -> str:
    url = create_postgres_database(name)
    migrations.upgrade(url)
    return url
