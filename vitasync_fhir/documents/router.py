"""HTTP for documents: the prescription PDF (three addresses, one document) and QR codes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from vitasync_fhir.api import schemas
from vitasync_fhir.auth.access import AccessDep
from vitasync_fhir.db import SessionDep
from vitasync_fhir.documents import qr, service
from vitasync_fhir.fhir.service import Resources, check_id

router = APIRouter()

Paper = Annotated[str | None, Query(description="A4 or letter; default the paper_size setting")]
ERRORS = {s: {"model": schemas.Error} for s in (400, 401, 403, 404, 410, 422, 503)}
PDF = {
    200: {"content": {"application/pdf": {}}, "description": "The prescription as a PDF"},
    **ERRORS,
}
# Patient data: never kept by a shared cache or the browser's.
PRIVATE = {"Cache-Control": "private, no-store"}


def pdf_response(document: service.Document) -> Response:
    headers = {
        **PRIVATE,
        "Content-Disposition": f'attachment; filename="{document.filename}"',
        "X-Render-Cache": "hit" if document.cached else "miss",
    }
    return Response(document.data, media_type="application/pdf", headers=headers)


async def prescription_response(
    request: Request, session: SessionDep, access: AccessDep, resource_id: str, paper: str | None
) -> Response:
    check_id(resource_id)
    document = await service.prescription_pdf(
        Resources(session, access),
        request.app.state.settings,
        request.app.state,
        resource_id,
        paper=paper,
    )
    return pdf_response(document)


@router.get("/print_prescription/{resource_id}", tags=["documents"], responses=PDF)
async def print_prescription(
    resource_id: str, request: Request, session: SessionDep, access: AccessDep, paper: Paper = None
) -> Response:
    """The prescription (a MedicationRequest) as a PDF attachment, with its QR code."""
    return await prescription_response(request, session, access, resource_id, paper)


@router.get("/api/prescriptions/{resource_id}/pdf", tags=["prescriptions"], responses=PDF)
async def prescription_pdf(
    resource_id: str, request: Request, session: SessionDep, access: AccessDep, paper: Paper = None
) -> Response:
    """The prescription as a PDF attachment (the same document as /print_prescription)."""
    return await prescription_response(request, session, access, resource_id, paper)


@router.get(
    "/get_qr/{resource_id}",
    tags=["documents"],
    responses={200: {"content": {t: {} for t in qr.FORMATS.values()}}, **ERRORS},
)
async def get_qr(
    resource_id: str,
    request: Request,
    session: SessionDep,
    access: AccessDep,
    format: Annotated[str, Query(description="png or svg")] = "png",
    size: Annotated[int, Query(description="Width in pixels")] = qr.DEFAULT_SIZE,
) -> Response:
    """A QR code of a signed, expiring link to a resource you may read (the link: X-QR-URL)."""
    code = await service.qr_code(
        Resources(session, access), request.app.state.settings, resource_id, fmt=format, size=size
    )
    headers = {
        **PRIVATE,
        "Content-Disposition": f'attachment; filename="{code.filename}"',
        "X-QR-URL": code.url,
        "Link": f'<{code.url}>; rel="related"',
    }
    return Response(code.data, media_type=code.media_type, headers=headers)
