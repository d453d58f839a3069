"""Every resource type the R4B models validate can be stored and read back."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
from factories import FHIR_JSON

from vitasync_fhir.fhir import validation
from vitasync_fhir.fhir.models import resource_types

PRIMITIVE_SAMPLES = {
    "boolean": True,
    "integer": 1,
    "positiveInt": 1,
    "unsignedInt": 0,
    "decimal": 1.5,
    "string": "x",
    "markdown": "x",
    "code": "x",
    "id": "x1",
    "uri": "http://example.org/x",
    "url": "http://example.org/x",
    "canonical": "http://example.org/x",
    "oid": "urn:oid:1.2.3",
    "uuid": "urn:uuid:7d3b0e44-3c4e-4b8a-9a56-0c4f6cf1b1aa",
    "base64Binary": "eA==",
    "date": "2020-01-01",
    "dateTime": "2020-01-01T10:00:00Z",
    "instant": "2020-01-01T10:00:00Z",
    "time": "10:00:00",
    "xhtml": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>',
}
SPECIAL = {
    "Narrative": {"status": "generated", "div": PRIMITIVE_SAMPLES["xhtml"]},
    "Reference": {"display": "x"},
    "Resource": {"resourceType": "Basic", "code": {"text": "x"}},
}


@cache
def table() -> dict:
    path = Path(validation.__file__).with_name("definitions") / "r4-elements.json"
    return json.loads(path.read_text())


def value_of(type_name: str, valueset: int, depth: int = 0) -> object:
    if type_name in SPECIAL:
        return SPECIAL[type_name]
    if type_name in table()["primitives"]:
        if valueset >= 0:
            codes = table()["valuesets"][valueset]["codes"]
            return next(iter(codes.values()))[0]
        return PRIMITIVE_SAMPLES[type_name]
    return minimal(type_name, depth + 1)


def minimal(type_name: str, depth: int = 0) -> dict:
    """The smallest instance of a type: its required elements, or one simple element."""
    spec = table()["types"][type_name]
    elements = spec["elements"]
    wanted = list(spec.get("required", []))
    if not wanted:
        simple = [k for k, (t, _, _, _) in elements.items() if t in PRIMITIVE_SAMPLES and k != "id"]
        wanted = simple[:1]
    instance: dict = {}
    for name in wanted:
        key = name if name in elements else next(k for k, v in elements.items() if v[2] == name)
        element_type, many, _, valueset = elements[key]
        value = value_of(element_type, valueset, depth)
        instance[key] = [value] if many else value
    return instance


# Types with domain rules of their own (fhir/rules.py) need a minimal instance those rules accept.
RULED = {
    "Subscription": {
        "status": "off",
        "criteria": "MedicationRequest?status=active",
        "channel": {"type": "rest-hook", "endpoint": "https://example.org/hook"},
    },
}


@pytest.mark.parametrize("resource_type", sorted(resource_types()))
def test_every_type_can_be_stored(client, resource_type):
    resource = {
        "resourceType": resource_type,
        **minimal(resource_type),
        **RULED.get(resource_type, {}),
    }
    resource.pop("id", None)
    problems = validation.validate(resource)
    assert problems == [], problems
    created = client.post(f"/fhir/{resource_type}", json=resource, headers=FHIR_JSON)
    if resource_type == "AuditEvent":  # the audit trail is written by the server alone
        assert created.status_code == 403
        return
    assert created.status_code == 201, created.text
    read = client.get(f"/fhir/{resource_type}/{created.json()['id']}")
    assert read.status_code == 200
    assert {k: v for k, v in read.json().items() if k not in ("id", "meta")} == resource
