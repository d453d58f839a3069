"""Search over HTTP: by type (GET and POST _search), across types, and in a Patient compartment.

Routes only read the request and answer; the rules are in service.py, the SQL in query.py.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from vitasync_fhir.auth.access import Access, AccessDep
from vitasync_fhir.db import ReadSessionDep
from vitasync_fhir.fhir.headers import preference
from vitasync_fhir.fhir.outcomes import FhirError
from vitasync_fhir.fhir.responses import fhir_response
from vitasync_fhir.fhir.search import service
from vitasync_fhir.fhir.search.registry import compartment_types
from vitasync_fhir.fhir.search.service import Search

router = APIRouter()
FORM = "application/x-www-form-urlencoded"


def _lenient(request: Request) -> bool:
    return preference(request.headers.get("prefer")).lenient


def _pairs(request: Request) -> list[tuple[str, str]]:
    return list(request.query_params.multi_items())


async def _form_pairs(request: Request) -> list[tuple[str, str]]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM:
        raise FhirError(
            415, "not-supported", f"POST _search takes a {FORM} body, not {content_type or 'none'}"
        )
    form = await request.form()
    return [(name, value) for name, value in form.multi_items() if isinstance(value, str)]


async def _answer(
    request: Request, session: ReadSessionDep, access: Access, search: Search
) -> Response:
    settings = request.app.state.settings
    body = await service.search_for(access, session, settings, search, query=request.url.query)
    return fhir_response(request, body)


@router.get("")
async def search_system(request: Request, session: ReadSessionDep, access: AccessDep) -> Response:
    """Search across resource types (`_type` names them; without it, all types)."""
    pairs = _pairs(request)
    types = service.system_types(pairs)
    return await _answer(
        request, session, access, Search(types, pairs, "", lenient=_lenient(request), system=True)
    )


@router.post("/_search")
async def search_system_post(
    request: Request, session: ReadSessionDep, access: AccessDep
) -> Response:
    """Search across resource types with the parameters in a form body."""
    pairs = _pairs(request) + await _form_pairs(request)
    types = service.system_types(pairs)
    return await _answer(
        request, session, access, Search(types, pairs, "", lenient=_lenient(request), system=True)
    )


@router.get("/Patient/{patient_id}/{resource_type}")
async def search_compartment(
    patient_id: str,
    resource_type: str,
    request: Request,
    session: ReadSessionDep,
    access: AccessDep,
) -> Response:
    """Search the resources of one type (or `*`, all) in a Patient's compartment."""
    if resource_type == "*":
        types = compartment_types()
    else:
        service.check_type(resource_type)
        if resource_type not in compartment_types():
            raise FhirError(
                400, "invalid", f"{resource_type} resources are never in a Patient compartment"
            )
        types = (resource_type,)
    search = Search(
        types,
        _pairs(request),
        f"Patient/{patient_id}/{resource_type}",
        lenient=_lenient(request),
        system=len(types) > 1,
        compartment=patient_id,
    )
    return await _answer(request, session, access, search)


@router.get("/{resource_type}")
async def search_type(
    resource_type: str, request: Request, session: ReadSessionDep, access: AccessDep
) -> Response:
    """Search the resources of one type."""
    service.check_type(resource_type)
    search = Search((resource_type,), _pairs(request), resource_type, lenient=_lenient(request))
    return await _answer(request, session, access, search)


@router.post("/{resource_type}/_search")
async def search_type_post(
    resource_type: str, request: Request, session: ReadSessionDep, access: AccessDep
) -> Response:
    """Search the resources of one type with the parameters in a form body."""
    service.check_type(resource_type)
    pairs = _pairs(request) + await _form_pairs(request)
    search = Search((resource_type,), pairs, resource_type, lenient=_lenient(request))
    return await _answer(request, session, access, search)
