"""$validate (R4 Resource-validate): the write path's validator, answered and never stored.

The body is the resource itself or a Parameters resource (`resource`, `mode`, `profile`). The
answer is 200 with an OperationOutcome listing every problem, each with its element path, or one
information issue "ok". Modes: create (content only), update (content, and the id must be the
URL's), delete (content ignored; the resource must exist and the caller must be allowed to delete
it). Only the base R4 definitions are known: another `profile` is reported as a warning.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from vitasync_fhir.auth.access import Access, AccessDep
from vitasync_fhir.db import SessionDep
from vitasync_fhir.fhir.models import resource_types
from vitasync_fhir.fhir.outcomes import FhirError, Issue, bad_request, dumps, outcome
from vitasync_fhir.fhir.responses import fhir_response, require_json_body
from vitasync_fhir.fhir.service import Resources, check_type, parse_json
from vitasync_fhir.fhir.validation import validate

router = APIRouter()
# Resource-validate is a type and instance operation of every type (not a system one).
OPERATIONS: list[dict] = []
TYPE_OPERATIONS = {
    name: [
        {
            "name": "validate",
            "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
        }
    ]
    for name in resource_types()
}
MODES = ("create", "update", "delete", "profile")
BASE_PROFILE = "http://hl7.org/fhir/StructureDefinition/"


def _parameters(body: dict) -> tuple[object, str | None, str | None]:
    """(resource, mode, profile) of a Parameters body."""
    resource, mode, profile = None, None, None
    parameters = body.get("parameter") or []
    if not isinstance(parameters, list):
        raise bad_request("Parameters.parameter must be an array", expression="parameter")
    for parameter in parameters:
        if not isinstance(parameter, dict):
            raise bad_request("Parameters.parameter must hold objects")
        name = parameter.get("name")
        if name == "resource":
            resource = parameter.get("resource")
        elif name == "mode":
            mode = parameter.get("valueCode") or parameter.get("valueString")
        elif name == "profile":
            profile = parameter.get("valueUri") or parameter.get("valueCanonical")
        else:
            raise bad_request(f"$validate takes no parameter {name!r}", expression="parameter")
    return resource, mode, profile


def _request(body: object, resource_type: str) -> tuple[object, str, str | None]:
    if not isinstance(body, dict):
        raise bad_request("The body must be a JSON object: a resource or a Parameters")
    mode: str | None = None
    profile: str | None = None
    resource: object = body
    if body.get("resourceType") == "Parameters" and resource_type != "Parameters":
        resource, mode, profile = _parameters(body)
    mode = mode or "create"
    if mode not in MODES:
        raise bad_request(f"mode {mode!r} is not one of {', '.join(MODES)}", expression="mode")
    if resource is None and mode != "delete":
        raise bad_request("The Parameters hold no resource to validate", expression="resource")
    return resource, mode, profile


def content_issues(resource: object, resource_type: str) -> list[Issue]:
    if not isinstance(resource, dict):
        return [Issue("structure", "The resource must be a JSON object", expression=resource_type)]
    found = resource.get("resourceType")
    if found != resource_type:
        text = f"The resource's type {found!r} is not the request's {resource_type!r}"
        return [Issue("invalid", text, expression="resourceType")]
    return [
        Issue(p.code, p.diagnostics, expression=p.expression)
        for p in validate(resource, expected_type=resource_type)
    ]


async def _mode_issues(
    resources: Resources, resource_type: str, resource_id: str | None, mode: str, resource: object
) -> list[Issue]:
    access: Access = resources.access
    if mode == "update":
        if resource_id is None:
            return [Issue("required", "mode update needs the resource's id in the URL")]
        found = resource.get("id") if isinstance(resource, dict) else None
        if found != resource_id:
            text = f"The resource's id {found!r} must equal the id in the URL {resource_id!r}"
            return [Issue("invalid", text, expression=f"{resource_type}.id")]
        return await _permitted(access, resource_type, "update")
    if mode == "delete":
        if resource_id is None:
            return [Issue("required", "mode delete needs the resource's id in the URL")]
        current = await resources.read(resource_type, resource_id)
        issues = await _permitted(access, resource_type, "delete")
        if not issues:
            try:
                await access.require_visible(resource_type, resource_id, current.content, "delete")
            except FhirError as error:
                issues = error.issues
        return issues
    return []


async def _permitted(access: Access, resource_type: str, interaction: str) -> list[Issue]:
    try:
        await access.require(resource_type, interaction)
    except FhirError as error:
        return error.issues
    return []


async def _validate(
    request: Request,
    session: SessionDep,
    access: Access,
    resource_type: str,
    resource_id: str | None,
) -> Response:
    check_type(resource_type)
    await access.require(resource_type, "$validate")
    require_json_body(request)
    resource, mode, profile = _request(parse_json(await request.body()), resource_type)
    issues = [] if mode == "delete" else content_issues(resource, resource_type)
    resources = Resources(session, access)
    issues += await _mode_issues(resources, resource_type, resource_id, mode, resource)
    if profile and profile != BASE_PROFILE + resource_type:
        issues.append(
            Issue(
                "not-supported",
                f"Profile {profile} is not known here; validated against the base R4 definition",
                severity="warning",
                expression="profile",
            )
        )
    if not any(i.severity == "error" for i in issues):
        issues.insert(0, Issue("informational", "ok", severity="information"))
    return fhir_response(request, dumps(outcome(issues)))


@router.post("/{resource_type}/$validate")
async def validate_type(
    resource_type: str, request: Request, session: SessionDep, access: AccessDep
) -> Response:
    """Validate a resource (or a Parameters with resource and mode) without storing it."""
    return await _validate(request, session, access, resource_type, None)


@router.post("/{resource_type}/{resource_id}/$validate")
async def validate_instance(
    resource_type: str, resource_id: str, request: Request, session: SessionDep, access: AccessDep
) -> Response:
    """Validate a resource as an update or deletion of this resource, without storing anything."""
    return await _validate(request, session, access, resource_type, resource_id)
