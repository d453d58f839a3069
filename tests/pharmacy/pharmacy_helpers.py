"""Factories of the pharmacy tests: a patient, prescriptions with dispenseRequest, dispenses."""

from __future__ import annotations

import base64

import orjson
from factories import FHIR_JSON, create, patient


def new_patient(client) -> str:  # type: ignore[no-untyped-def]
    return create(client, patient())["id"]


def prescription(
    *,
    patient_id: str,
    status: str = "active",
    repeats: int | None = None,
    quantity: float | None = None,
    valid: tuple[str | None, str | None] | None = None,
) -> dict:
    resource: dict = {
        "resourceType": "MedicationRequest",
        "status": status,
        "intent": "order",
        "subject": {"reference": f"Patient/{patient_id}"},
        "medicationCodeableConcept": {"text": "Amoxicillin 500 mg capsule"},
    }
    dispense: dict = {}
    if repeats is not None:
        dispense["numberOfRepeatsAllowed"] = repeats
    if quantity is not None:
        dispense["quantity"] = {"value": quantity, "unit": "capsule"}
    if valid is not None:
        start, end = valid
        dispense["validityPeriod"] = {k: v for k, v in (("start", start), ("end", end)) if v}
    if dispense:
        resource["dispenseRequest"] = dispense
    return resource


def dispense(*, request_id: str, patient_id: str, quantity: float = 21, **extra) -> dict:
    resource: dict = {
        "resourceType": "MedicationDispense",
        "status": "completed",
        "authorizingPrescription": [{"reference": f"MedicationRequest/{request_id}"}],
        "subject": {"reference": f"Patient/{patient_id}"},
        "medicationCodeableConcept": {"text": "Amoxicillin 500 mg capsule"},
        "quantity": {"value": quantity, "unit": "capsule"},
        "whenHandedOver": "2026-11-27T10:00:00Z",
    }
    resource.update(extra)
    return resource


def patch_status(status: str) -> list[dict]:
    return [{"op": "replace", "path": "/status", "value": status}]


def binary_patch(operations: list[dict]) -> dict:
    return {
        "resourceType": "Binary",
        "contentType": "application/json-patch+json",
        "data": base64.b64encode(orjson.dumps(operations)).decode(),
    }


def put(client, resource: dict, **headers: str):  # type: ignore[no-untyped-def]
    return client.put(
        f"/fhir/{resource['resourceType']}/{resource['id']}",
        json=resource,
        headers={**FHIR_JSON, **headers},
    )


JSON_PATCH = {"Content-Type": "application/json-patch+json"}
