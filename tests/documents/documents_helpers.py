"""Test data for documents: a patient, a prescriber and a prescription, as FHIR resources."""

from __future__ import annotations

PASSWORD = "a long enough passphrase"


def practitioner(*, family: str = "Okafor", given: str = "Amara") -> dict:
    return {
        "resourceType": "Practitioner",
        "name": [{"family": family, "given": [given], "prefix": ["Dr."]}],
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}],
        "telecom": [{"system": "phone", "value": "+1 555 0100"}],
    }


def patient(*, family: str = "Lindqvist", given: str = "Maja") -> dict:
    return {
        "resourceType": "Patient",
        "name": [{"use": "official", "family": family, "given": [given]}],
        "birthDate": "1984-03-12",
        "gender": "female",
        "identifier": [
            {
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}
                    ]
                },
                "system": "urn:example:mrn",
                "value": "MRN-40221",
            }
        ],
        "address": [{"line": ["12 Harbour Road"], "city": "Springfield", "postalCode": "4021"}],
    }


def medication_request(*, patient_id: str, practitioner_id: str, dose: float = 500) -> dict:
    return {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "authoredOn": "2026-11-27T09:30:00Z",
        "subject": {"reference": f"Patient/{patient_id}"},
        "requester": {"reference": f"Practitioner/{practitioner_id}"},
        "medicationCodeableConcept": {
            "text": "Amoxicillin 500 mg capsule",
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "308191"}],
        },
        "dosageInstruction": [
            {
                "text": "One capsule three times a day",
                "doseAndRate": [{"doseQuantity": {"value": dose, "unit": "mg"}}],
                "route": {"text": "oral"},
                "timing": {
                    "repeat": {
                        "frequency": 3,
                        "period": 1,
                        "periodUnit": "d",
                        "boundsDuration": {"value": 7, "unit": "days"},
                    }
                },
                "patientInstruction": "Take with food",
            }
        ],
        "dispenseRequest": {
            "quantity": {"value": 21, "unit": "capsules"},
            "numberOfRepeatsAllowed": 1,
            "expectedSupplyDuration": {"value": 7, "unit": "days"},
        },
        "note": [{"text": "Finish the whole course"}],
    }
