"""HTTP for the FHIR REST interactions on single resources, history and the capability statement.

Search routes live in `fhir/search/routes.py`; batch and transaction Bundles in `fhir/bundles.py`.
Routes here only translate HTTP to `service.Resources` calls and back.
"""

from __future__ import annotations

from email.utils import format_datetime
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from vitasync_fhir.auth.access import AccessDep
from vitasync_fhir.db import ReadSessionDep, SessionDep
from vitasync_fhir.fhir import bundles, capability, history, outcomes, paths  # noqa: F401 - registers fhirtype
from vitasync_fhir.fhir.bundle_entries import parse_entries
from vitasync_fhir.fhir.headers import not_modified, preference
from vitasync_fhir.fhir.responses import (
    fhir_response,
    native_response,
    require_json_body,
    wants_native,
)
from vitasync_fhir.fhir.service import Resources, Saved, check_type, parse_json
from vitasync_fhir.fhir.store import Version

router = APIRouter()

JSON_PATCH = "application/json-patch+json"


def version_headers(
    request: Request, version: Version, *, location: bool = False
) -> dict[str, str]:
    headers = {
        "ETag": version.etag,
        "Last-Modified": format_datetime(version.last_updated, usegmt=True),
    }
    if location:
        base = request.app.state.settings.fhir_base
        headers["Location"] = (
            f"{base}/{version.resource_type}/{version.id}/_history/{version.version_id}"
        )
    return headers


def written(request: Request, saved: Saved) -> Response:
    """The answer to a create or update, shaped by the client's Prefer header."""
    status = 201 if saved.created else 200
    headers = version_headers(request, saved.version, location=True)
    returns = preference(request.headers.get("prefer")).returns
    if returns == "minimal":
        return fhir_response(request, None, status=status, headers=headers)
    if returns == "OperationOutcome":
        v = saved.version
        body = outcomes.written(v.resource_type, v.id, created=saved.created)
        return fhir_response(request, outcomes.dumps(body), status=status, headers=headers)
    return fhir_response(request, saved.version.content, status=status, headers=headers)


def read_answer(request: Request, version: Version) -> Response:
    headers = version_headers(request, version)
    if not_modified(
        version,
        if_none_match=request.headers.get("if-none-match"),
        if_modified_since=request.headers.get("if-modified-since"),
    ):
        return Response(status_code=304, headers=headers)
    if version.resource_type == "Binary" and version.content is not None:
        binary = orjson.loads(version.content)
        if wants_native(request, binary.get("contentType")):
            return native_response(binary, headers)
    return fhir_response(request, version.content, headers=headers)


async def _body(
    request: Request, *, media: tuple[str, ...] = ("application/fhir+json", "application/json")
) -> object:
    require_json_body(request, allowed=media)
    return parse_json(await request.body())


@router.get("/metadata", name="capabilities")
async def metadata(request: Request) -> Response:
    """The CapabilityStatement of this server (`mode` full or normative: the same statement;
    terminology: no TerminologyCapabilities is offered)."""
    mode = request.query_params.get("mode")
    if mode == "terminology":
        raise outcomes.FhirError(
            400, "not-supported", "This server offers no TerminologyCapabilities"
        )
    if mode not in (None, "full", "normative"):
        raise outcomes.bad_request(f"mode {mode!r} is not full, normative or terminology")
    return fhir_response(request, capability.statement_text(request.app))


@router.get("/_history", name="history-system")
async def system_history(request: Request, session: ReadSessionDep, access: AccessDep) -> Response:
    """All changes of the system, newest first."""
    return fhir_response(request, await history.page(request, session, access))


@router.get("/{resource_type:fhirtype}/_history", name="history-type")
async def type_history(
    resource_type: str, request: Request, session: ReadSessionDep, access: AccessDep
) -> Response:
    """All changes of one resource type, newest first."""
    check_type(resource_type)
    return fhir_response(
        request, await history.page(request, session, access, resource_type=resource_type)
    )


@router.get("/{resource_type:fhirtype}/{resource_id}/_history", name="history-instance")
async def instance_history(
    resource_type: str,
    resource_id: str,
    request: Request,
    session: ReadSessionDep,
    access: AccessDep,
) -> Response:
    """Every version of one resource, newest first."""
    await Resources(session, access).read_any(resource_type, resource_id)
    return fhir_response(
        request,
        await history.page(
            request, session, access, resource_type=resource_type, resource_id=resource_id
        ),
    )


@router.get("/{resource_type:fhirtype}/{resource_id}/_history/{version_id}", name="vread")
async def vread(
    resource_type: str,
    resource_id: str,
    version_id: str,
    request: Request,
    session: ReadSessionDep,
    access: AccessDep,
) -> Response:
    """One version of a resource."""
    version = await Resources(session, access).vread(resource_type, resource_id, version_id)
    return read_answer(request, version)


@router.head(
    "/{resource_type:fhirtype}/{resource_id}/_history/{version_id}",
    name="vread-head",
    include_in_schema=False,
)
async def vread_head(
    resource_type: str,
    resource_id: str,
    version_id: str,
    request: Request,
    session: ReadSessionDep,
    access: AccessDep,
) -> Response:
    """The headers of one version of a resource."""
    return _head(await vread(resource_type, resource_id, version_id, request, session, access))


@router.get("/{resource_type:fhirtype}/{resource_id}", name="read")
async def read(
    resource_type: str,
    resource_id: str,
    request: Request,
    session: ReadSessionDep,
    access: AccessDep,
) -> Response:
    """The current version of a resource."""
    version = await Resources(session, access).read(resource_type, resource_id)
    return read_answer(request, version)


@router.head("/{resource_type:fhirtype}/{resource_id}", name="read-head", include_in_schema=False)
async def read_head(
    resource_type: str,
    resource_id: str,
    request: Request,
    session: ReadSessionDep,
    access: AccessDep,
) -> Response:
    """The headers of the current version of a resource."""
    return _head(await read(resource_type, resource_id, request, session, access))


def _head(answer: Response) -> Response:
    """GET's status and headers, Content-Length included, without its body (RFC 9110 9.3.2).
    Out of the OpenAPI text, so the CapabilityStatement, read from it, is unchanged."""
    return Response(status_code=answer.status_code, headers=dict(answer.headers))


@router.post("/{resource_type:fhirtype}", name="create")
async def create(
    resource_type: str, request: Request, session: SessionDep, access: AccessDep
) -> Response:
    """Create a resource; `If-None-Exist` makes it conditional."""
    check_type(resource_type)
    data = await _body(request)
    saved = await Resources(session, access).create(
        resource_type, data, if_none_exist=request.headers.get("if-none-exist")
    )
    return written(request, saved)


@router.put("/{resource_type:fhirtype}/{resource_id}", name="update")
async def update(
    resource_type: str, resource_id: str, request: Request, session: SessionDep, access: AccessDep
) -> Response:
    """Update a resource, or create it with this id."""
    check_type(resource_type)
    data = await _body(request)
    saved = await Resources(session, access).update(
        resource_type, resource_id, data, if_match=request.headers.get("if-match")
    )
    return written(request, saved)


@router.put("/{resource_type:fhirtype}", name="update-conditional")
async def conditional_update(
    resource_type: str, request: Request, session: SessionDep, access: AccessDep
) -> Response:
    """Update the one resource that matches the search in the query string."""
    check_type(resource_type)
    query = _condition(request)
    data = await _body(request)
    saved = await Resources(session, access).conditional_update(
        resource_type, query, data, if_match=request.headers.get("if-match")
    )
    return written(request, saved)


@router.patch("/{resource_type:fhirtype}/{resource_id}", name="patch")
async def patch(
    resource_type: str, resource_id: str, request: Request, session: SessionDep, access: AccessDep
) -> Response:
    """Apply a JSON Patch to a resource."""
    check_type(resource_type)
    operations = await _body(request, media=(JSON_PATCH,))
    saved = await Resources(session, access).patch(
        resource_type, resource_id, operations, if_match=request.headers.get("if-match")
    )
    return written(request, saved)


@router.patch("/{resource_type:fhirtype}", name="patch-conditional")
async def conditional_patch(
    resource_type: str, request: Request, session: SessionDep, access: AccessDep
) -> Response:
    """Apply a JSON Patch to the one resource that matches the search in the query string."""
    check_type(resource_type)
    query = _condition(request)
    operations = await _body(request, media=(JSON_PATCH,))
    saved = await Resources(session, access).conditional_patch(
        resource_type, query, operations, if_match=request.headers.get("if-match")
    )
    return written(request, saved)


@router.delete("/{resource_type:fhirtype}/{resource_id}", name="delete")
async def delete(
    resource_type: str, resource_id: str, request: Request, session: SessionDep, access: AccessDep
) -> Response:
    """Delete a resource (its history stays)."""
    version = await Resources(session, access).delete(
        resource_type, resource_id, if_match=request.headers.get("if-match")
    )
    return _deleted(request, version)


@router.delete("/{resource_type:fhirtype}", name="delete-conditional")
async def conditional_delete(
    resource_type: str, request: Request, session: SessionDep, access: AccessDep
) -> Response:
    """Delete the one resource that matches the search in the query string."""
    version = await Resources(session, access).conditional_delete(
        resource_type, _condition(request), if_match=request.headers.get("if-match")
    )
    return _deleted(request, version)


_NOT_CRITERIA = ("_format", "_pretty")


def _condition(request: Request) -> str:
    pairs = [(k, v) for k, v in request.query_params.multi_items() if k not in _NOT_CRITERIA]
    query = "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs)
    if not query:
        raise outcomes.bad_request("A conditional interaction needs search criteria in the URL")
    return query


def _deleted(request: Request, version: Version | None) -> Response:
    headers = {"ETag": version.etag} if version else {}
    if preference(request.headers.get("prefer")).returns == "OperationOutcome":
        body = outcomes.deleted(version is not None)
        return fhir_response(request, outcomes.dumps(body), headers=headers)
    return Response(status_code=204, headers=headers)


@router.post("", name="batch-transaction")
async def batch_or_transaction(
    request: Request, session: SessionDep, access: AccessDep
) -> Response:
    """Process a batch or transaction Bundle."""
    data = await _body(request)
    settings = request.app.state.settings
    prefer = preference(request.headers.get("prefer"))
    kind, entries = parse_entries(data, settings.fhir_base, limit=settings.max_bundle_entries)
    if kind == "transaction":
        text = await bundles.transaction(session, settings, entries, access, prefer=prefer)
    else:
        text = await bundles.batch(request.app.state.db, entries, access, prefer=prefer)
    return fhir_response(request, text)
