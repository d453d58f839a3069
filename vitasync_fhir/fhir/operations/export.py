"""Bulk Data $export (FHIR Bulk Data Access IG v2): kick-off, status, cancel and file download.

Kick-off (`GET /$export`, `/Patient/$export`, `/Group/{id}/$export`, with `Prefer: respond-async`)
answers 202 with the status URL in Content-Location. The status URL answers 202 with X-Progress
and Retry-After while the job runs, then 200 with the manifest; DELETE cancels (202) and removes
the files, after which the status URL answers 404, as it does once the files expired. Every URL
takes the bearer token of the caller who started the export (or an admin's). The job itself is in
vitasync_fhir/export/.
"""

from __future__ import annotations

from email.utils import format_datetime

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from vitasync_fhir.auth.access import Access, AccessDep
from vitasync_fhir.auth.policy import Caller, patient_of
from vitasync_fhir.db import SessionDep
from vitasync_fhir.export import service
from vitasync_fhir.export.request import parse_kickoff
from vitasync_fhir.fhir.headers import Preference, preference
from vitasync_fhir.fhir.outcomes import FhirError, bad_request, dumps, information
from vitasync_fhir.fhir.responses import fhir_response, response_media_type
from vitasync_fhir.fhir.service import Resources, check_id

router = APIRouter()
DEFINITION = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/"
# System level here; the Patient and Group levels are the same `export` on those types
# (TYPE_OPERATIONS), as the Bulk Data CapabilityStatement lists them.
OPERATIONS = [{"name": "export", "definition": DEFINITION + "export"}]
TYPE_OPERATIONS = {
    "Patient": [{"name": "export", "definition": DEFINITION + "patient-export"}],
    "Group": [{"name": "export", "definition": DEFINITION + "group-export"}],
}
NDJSON = "application/fhir+ndjson"


def _prefer(request: Request) -> Preference:
    return preference(request.headers.get("prefer"))


def _require_async(request: Request) -> None:
    if not _prefer(request).respond_async:
        raise bad_request("$export runs asynchronously: send the header Prefer: respond-async")
    response_media_type(request)  # the kick-off's OperationOutcome is JSON: 406 otherwise


def _may_export_system(caller: Caller) -> bool:
    if caller.role == "admin":
        return True
    return any(
        s.context == "system" and s.resource_type == "*" and {"r", "s"} <= set(s.letters)
        for s in caller.scopes
    )


async def _members(session: SessionDep, access: Access, group_id: str) -> list[str]:
    group = await Resources(session, access).read("Group", group_id)
    data = orjson.loads(group.content or "{}")
    members = []
    for member in data.get("member") or []:
        # One of our Patients (relative, or with our base): another server's Patient/1 is not ours.
        member_id = patient_of(member.get("entity"), base=access.base)
        if member.get("inactive") is True or member_id is None:
            continue
        members.append(member_id)
    return list(dict.fromkeys(members))


async def _kickoff(
    request: Request,
    session: SessionDep,
    access: Access,
    level: str,
    group_id: str | None = None,
) -> Response:
    _require_async(request)
    caller = access.caller
    if caller is None:  # pragma: no cover - AccessDep always carries a caller
        raise FhirError(401, "login", "Authentication is required")
    if level == "system" and not _may_export_system(caller):
        await access.record_denial(None, "$export")
        raise FhirError(
            403, "forbidden", "A system export needs a backend-services token (system/*.rs)"
        )
    if level != "system":
        await access.require("Patient", "$export")
    settings = request.app.state.settings
    try:
        export = parse_kickoff(
            list(request.query_params.multi_items()),
            level=level,
            caller=caller,
            lenient=_prefer(request).lenient,
            base=settings.fhir_base,
        )
    except FhirError as error:
        if error.status == 403:  # a type the caller may not export
            await access.record_denial(None, "$export")
        raise
    if group_id is not None:
        export.members = await _members(session, access, group_id)
    # The public address (the server may sit behind a proxy), as the status URL has it.
    query = request.url.query
    url = settings.base_url.rstrip("/") + request.url.path + (f"?{query}" if query else "")
    job_id = await service.start(session, settings, caller, export, url=url, group_id=group_id)
    await access.audited(session, "operation", None, query=f"$export {request.url.query}")
    status_url = f"{settings.fhir_base}/_export/{job_id}"
    body = dumps(information(f"The export has started; poll {status_url}"))
    return fhir_response(request, body, status=202, headers={"Content-Location": status_url})


@router.get("/$export")
async def export_system(request: Request, session: SessionDep, access: AccessDep) -> Response:
    """Start a Bulk Data export of the whole system (a backend-services token)."""
    return await _kickoff(request, session, access, "system")


@router.get("/Patient/$export")
async def export_patients(request: Request, session: SessionDep, access: AccessDep) -> Response:
    """Start a Bulk Data export of every patient's compartment."""
    return await _kickoff(request, session, access, "patient")


@router.get("/Group/{group_id}/$export")
async def export_group(
    group_id: str, request: Request, session: SessionDep, access: AccessDep
) -> Response:
    """Start a Bulk Data export of the compartments of the Group's patient members."""
    check_id(group_id)
    return await _kickoff(request, session, access, "group", group_id)


def _caller(access: Access) -> Caller:
    if access.caller is None:  # pragma: no cover - AccessDep always carries a caller
        raise FhirError(401, "login", "Authentication is required")
    return access.caller


@router.get("/_export/{job_id}")
async def export_status(
    job_id: str, request: Request, session: SessionDep, access: AccessDep
) -> Response:
    """The status of an export: 202 while it runs, then 200 with the manifest."""
    settings = request.app.state.settings
    found = await service.status(session, settings, _caller(access), job_id)
    if not found.done:
        headers = {"X-Progress": found.progress, "Retry-After": str(service.RETRY_AFTER_SECONDS)}
        return Response(status_code=202, headers=headers)
    headers = {}
    if found.expires is not None:
        headers["Expires"] = format_datetime(found.expires, usegmt=True)
    return Response(content=dumps(found.manifest), media_type="application/json", headers=headers)


@router.delete("/_export/{job_id}")
async def export_cancel(
    job_id: str, request: Request, session: SessionDep, access: AccessDep
) -> Response:
    """Cancel an export (or delete a finished one) and remove its files."""
    await service.cancel(session, request.app.state.settings, _caller(access), job_id)
    body = dumps(information(f"Export {job_id} is cancelled and its files removed"))
    return fhir_response(request, body, status=202)


@router.get("/_export/{job_id}/{file_name}")
async def export_file(
    job_id: str, file_name: str, request: Request, session: SessionDep, access: AccessDep
) -> Response:
    """One NDJSON file of a finished export."""
    settings = request.app.state.settings
    asked = f"_export/{job_id}/{file_name}"
    try:
        path = await service.file_path(session, settings, _caller(access), job_id, file_name)
    except FhirError:
        await access.record_denial(None, "$export", query=asked)
        raise
    # The file holds what the kick-off was audited for; its download is an access of its own.
    await access.audited(session, "$export", None, query=asked)
    return FileResponse(path, media_type=NDJSON)
