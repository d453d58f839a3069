"""(c) A pharmacy system (a backend service with the pharmacist role) finds a patient's active
prescriptions, dispenses one and marks it completed, with fhirpy."""

from __future__ import annotations

import pytest
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import ForbiddenError

from conformance.scenarios.partners import Returned
from conformance.stage import Stage


@pytest.fixture
def pharmacy(stage: Stage, pharmacy_token: str) -> SyncFHIRClient:
    return SyncFHIRClient(stage.fhir, authorization=f"Bearer {pharmacy_token}")


def test_a_pharmacy_fills_a_prescription(stage: Stage, pharmacy: SyncFHIRClient):
    returned = Returned(stage, "pharmacy")
    patients = pharmacy.resources("Patient").search(family="Conn").fetch()
    returned.add(p.serialize() for p in patients)
    assert [p["id"] for p in patients] == [stage.other_patient_id]
    patient = patients[0]

    active = (
        pharmacy.resources("MedicationRequest")
        .search(subject=f"Patient/{patient['id']}", status="active")
        .fetch_all()
    )
    returned.add(r.serialize() for r in active)
    assert len(active) == 1
    prescription = active[0]
    assert prescription["meta"]["versionId"] == "1"

    dispense = pharmacy.resource(
        "MedicationDispense",
        status="completed",
        medicationCodeableConcept=prescription["medicationCodeableConcept"],
        subject={"reference": f"Patient/{patient['id']}"},
        authorizingPrescription=[{"reference": f"MedicationRequest/{prescription['id']}"}],
        quantity={"value": 30, "unit": "tablet"},
        whenHandedOver="2026-11-27T10:00:00Z",
    )
    dispense.save()
    assert dispense["id"] and dispense["meta"]["versionId"] == "1"
    returned.add([dispense.serialize()])

    prescription["status"] = "completed"
    prescription.save()
    assert prescription["meta"]["versionId"] == "2"
    returned.add([prescription.serialize()])

    still_active = (
        pharmacy.resources("MedicationRequest")
        .search(subject=f"Patient/{patient['id']}", status="active")
        .fetch_all()
    )
    assert still_active == []
    dispensed = (
        pharmacy.resources("MedicationDispense")
        .search(prescription=f"MedicationRequest/{prescription['id']}")
        .fetch_all()
    )
    returned.add(d.serialize() for d in dispensed)
    assert [d["id"] for d in dispensed] == [dispense["id"]]
    again = pharmacy.reference("MedicationRequest", prescription["id"]).to_resource()
    returned.add([again.serialize()])
    assert again["status"] == "completed"


def test_a_pharmacy_sees_no_clinical_notes(stage: Stage, pharmacy: SyncFHIRClient):
    with pytest.raises(ForbiddenError) as refused:
        pharmacy.resources("Observation").search(subject=f"Patient/{stage.patient_id}").fetch()
    assert '"code":"forbidden"' in str(refused.value)
    with pytest.raises(ForbiddenError):
        pharmacy.resource("Patient", name=[{"family": "Intruder"}]).save()
