"""$print on MedicationRequest: the prescription PDF that /print_prescription gives."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from vitasync_fhir.auth.access import AccessDep
from vitasync_fhir.db import SessionDep
from vitasync_fhir.documents.router import PDF, Paper, prescription_response

router = APIRouter()

OPERATIONS: list[dict] = []  # an instance operation of MedicationRequest: listed on the type
TYPE_OPERATIONS = {
    "MedicationRequest": [
        {
            "name": "print",
            "definition": "http://vitasync.example.org/fhir/OperationDefinition/MedicationRequest-print",
        }
    ]
}


@router.get("/MedicationRequest/{resource_id}/$print", responses={200: PDF[200]})
async def print_medication_request(
    resource_id: str, request: Request, session: SessionDep, access: AccessDep, paper: Paper = None
) -> Response:
    """The prescription as a PDF attachment (`paper`: A4 or letter)."""
    return await prescription_response(request, session, access, resource_id, paper)
