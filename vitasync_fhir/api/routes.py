"""HTTP for /api: one set of routes per mapping file, plus the actions of the seed README.

Routes only read the request and answer; the rules are in api/service.py and api/actions.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from vitasync_fhir.api import actions, schemas
from vitasync_fhir.api.service import ApiResources
from vitasync_fhir.auth.access import AccessDep
from vitasync_fhir.db import ReadSessionDep, SessionDep
from vitasync_fhir.fhir.outcomes import FhirError
from vitasync_fhir.mapping.spec import Mapping, load_all

ERRORS = {status: {"model": schemas.Error} for status in (400, 401, 403, 404, 409, 422)}


async def _json(request: Request, *, optional: bool = False) -> dict:
    raw = await request.body()
    if not raw and optional:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise FhirError(400, "invalid", "The body is not valid JSON") from None
    if not isinstance(body, dict):
        raise FhirError(400, "invalid", "The body must be a JSON object")
    return body


def _api(mapping: Mapping, request: Request, session, access) -> ApiResources:  # type: ignore[no-untyped-def]
    return ApiResources(mapping, session, access, request.app.state.settings)


Action = Callable[[ApiResources, str, dict], Awaitable[dict]]


def resource_router(mapping: Mapping) -> APIRouter:
    """list, create, get, update and delete for one mapping (appointments: no update or delete)."""
    router = APIRouter(prefix=f"/api/{mapping.name}", tags=[mapping.name])
    out, page = schemas.output_model(mapping), schemas.page_model(mapping)
    body = schemas.body_schema(mapping)
    title = mapping.name.rstrip("s")

    @router.get("", responses={200: {"model": page}, **ERRORS}, summary=f"List {mapping.name}")
    async def list_(request: Request, session: ReadSessionDep, access: AccessDep) -> Response:
        """Filter with the query parameters; page with page, per_page; sort=field,-field."""
        found = await _api(mapping, request, session, access).list(dict(request.query_params))
        return JSONResponse(found)

    @router.post(
        "",
        status_code=201,
        responses={201: {"model": out}, **ERRORS},
        openapi_extra=body,
        summary=f"Create a {title}",
    )
    async def create(request: Request, session: SessionDep, access: AccessDep) -> Response:
        api = _api(mapping, request, session, access)
        data = await _json(request)
        made = await (
            actions.book(api, data) if mapping.name == "appointments" else api.create(data)
        )
        return JSONResponse(made, status_code=201)

    @router.get(
        "/{resource_id}", responses={200: {"model": out}, **ERRORS}, summary=f"Get a {title}"
    )
    async def get(
        resource_id: str, request: Request, session: ReadSessionDep, access: AccessDep
    ) -> Response:
        api = _api(mapping, request, session, access)
        found = await api.get(resource_id)
        if mapping.name == "records":
            found["linked"] = await actions.linked(api, resource_id, found)
        return JSONResponse(found)

    if mapping.name != "appointments":
        for method, partial, summary, description in UPDATES:
            router.add_api_route(
                "/{resource_id}",
                _update_route(mapping, partial=partial),
                methods=[method],
                responses={200: {"model": out}, **ERRORS},
                openapi_extra=body,
                summary=f"{summary} {title}",
                description=description,
            )

        @router.delete(
            "/{resource_id}", status_code=204, responses=ERRORS, summary=f"Delete a {title}"
        )
        async def delete(
            resource_id: str, request: Request, session: SessionDep, access: AccessDep
        ) -> Response:
            await _api(mapping, request, session, access).delete(resource_id)
            return Response(status_code=204)

    for path, action, summary in ACTIONS.get(mapping.name, ()):
        router.add_api_route(
            f"/{{resource_id}}/{path}",
            _action_route(mapping, action),
            methods=["POST"],
            responses={200: {"model": out}, **ERRORS},
            summary=summary,
        )
    return router


# method, partial, summary, description: PUT replaces a record, PATCH changes some fields.
UPDATES = (
    (
        "PUT",
        False,
        "Update a",
        "Replace the record: a field left out is cleared, or takes its default. Send the "
        "`version` you read: 409 if it changed since.",
    ),
    (
        "PATCH",
        True,
        "Change some fields of a",
        "Change only the fields sent (null clears one); the others stay as they are. A "
        "`version` sent must be the current one: 409 if it changed since.",
    ),
)


def _update_route(mapping: Mapping, *, partial: bool):  # type: ignore[no-untyped-def]
    async def run(
        resource_id: str, request: Request, session: SessionDep, access: AccessDep
    ) -> Response:
        api = _api(mapping, request, session, access)
        data = await _json(request)
        if mapping.name == "records":
            data.pop("linked", None)  # what get() adds; a record sent back as read is valid
        return JSONResponse(await api.update(resource_id, data, partial=partial))

    return run


def _action_route(mapping: Mapping, action: Action):  # type: ignore[no-untyped-def]
    async def run(
        resource_id: str, request: Request, session: SessionDep, access: AccessDep
    ) -> Response:
        api = _api(mapping, request, session, access)
        return JSONResponse(await action(api, resource_id, await _json(request, optional=True)))

    return run


ACTIONS: dict[str, tuple[tuple[str, Action, str], ...]] = {
    "prescriptions": (
        ("fill", actions.fill_prescription, "Fill: record a dispense, complete the prescription"),
    ),
    "procedures": (("perform", actions.perform_procedure, "Mark the procedure performed"),),
    "appointments": (
        ("reschedule", actions.reschedule, "Move the appointment (body: start, end)"),
        ("cancel", actions.cancel, "Cancel the appointment (body: reason, refund)"),
    ),
}


def routers() -> list[APIRouter]:
    """One router per mapping file; a broken mapping stops the start with its message."""
    return [resource_router(mapping) for mapping in load_all().values()]
