"""Every error leaves through `error_response`.

OperationOutcome on /fhir, `{"error", "detail"}` everywhere else.
"""

from __future__ import annotations

import logging
import sqlite3

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from vitasync_fhir.fhir.outcomes import FhirError, Issue, outcome_bytes

log = logging.getLogger("vitasync_fhir")

_HTTP_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    409: "conflict",
    410: "deleted",
    412: "conflict",
    413: "too-long",
    415: "not-supported",
    422: "processing",
    429: "throttled",
    503: "transient",
}
_API_ERRORS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    410: "gone",
    412: "precondition_failed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


def error_response(
    request: Request, status: int, issues: list[Issue], *, headers: dict[str, str] | None = None
) -> Response:
    """The one place that renders an error for any path."""
    if request.url.path.startswith("/fhir"):
        return Response(
            content=outcome_bytes(issues),
            status_code=status,
            media_type="application/fhir+json; charset=utf-8",
            headers=headers,
        )
    detail: object = (
        issues[0].diagnostics
        if len(issues) == 1
        else [{"field": i.expression, "message": i.diagnostics} for i in issues]
    )
    if len(issues) == 1 and issues[0].expression:
        detail = [{"field": issues[0].expression, "message": issues[0].diagnostics}]
    return JSONResponse(
        {"error": _API_ERRORS.get(status, "error"), "detail": detail},
        status_code=status,
        headers=headers,
    )


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette names only the first route's)."""
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


# Raised by SQLAlchemy, or by psycopg itself on the read pool (readpool.py, whose wait timeout is
# one too); a statement timeout is psycopg's QueryCanceled, an OperationalError.
_DATABASE_ERRORS = (DBAPIError, PoolTimeout, psycopg.Error)
_UNAVAILABLE = (PoolTimeout, OperationalError, psycopg.OperationalError)


def _transient(error: Exception) -> bool:
    if isinstance(error, _UNAVAILABLE):
        return True
    if isinstance(error, DBAPIError):
        return error.connection_invalidated or "statement timeout" in str(error.orig)
    return False


# Statements the database refuses for their shape, however often they are sent: PostgreSQL's
# program_limit_exceeded class (54001 "stack depth limit exceeded", too many columns or
# arguments) and SQLite's equivalents, which only their message tells from a busy database.
_SQLITE_TOO_COMPLEX = (
    "Expression tree is too large",
    "parser stack overflow",
    "too many SQL variables",
    "too many terms in compound SELECT",
    "too many arguments on function",
    "too many columns",
)


def _too_complex(error: Exception) -> bool:
    cause = getattr(error, "orig", error)
    if isinstance(cause, psycopg.Error):  # by SQLSTATE: StatementTooComplex is no subclass of
        return (cause.sqlstate or "").startswith("54")  # ProgramLimitExceeded in psycopg
    return isinstance(cause, sqlite3.OperationalError) and str(cause).startswith(
        _SQLITE_TOO_COMPLEX
    )


def _nul_text(error: Exception) -> bool:
    """PostgreSQL refused a NUL character in text (psycopg raises it before sending)."""
    cause = getattr(error, "orig", error)
    return isinstance(cause, psycopg.DataError) and "NUL" in str(cause)


def install(app: FastAPI) -> None:
    @app.exception_handler(FhirError)
    async def _fhir(request: Request, error: FhirError) -> Response:
        return error_response(request, error.status, error.issues, headers=error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> Response:
        code = _HTTP_CODES.get(error.status_code, "processing")
        message = str(error.detail) if error.detail else "Error"
        headers = dict(error.headers or {})
        if error.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return error_response(request, error.status_code, [Issue(code, message)], headers=headers)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, error: ClientDisconnect) -> Response:
        # The client closed the connection before its body arrived (a load generator ending
        # its round, a browser tab closed): nothing was done and nobody reads the answer.
        log.info("client went away during %s %s", request.method, request.url.path)
        message = "The connection closed before the request's body arrived"
        return error_response(request, 400, [Issue("incomplete", message)])

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError) -> Response:
        issues = [
            Issue(
                "invalid", str(e.get("msg")), expression=".".join(str(p) for p in e.get("loc", ()))
            )
            for e in error.errors()
        ]
        status = 400 if request.url.path.startswith("/fhir") else 422
        return error_response(request, status, issues or [Issue("invalid", "Invalid request")])

    async def _database(request: Request, error: Exception) -> Response:
        if _nul_text(error):  # every edge should refuse NUL; this catches one that did not
            return error_response(
                request, 400, [Issue("invalid", "Text cannot contain NUL (0x00) characters")]
            )
        if _too_complex(error):  # no retry helps: not the database being unavailable
            log.warning("statement too complex: %s", getattr(error, "orig", error))
            message = "The request is too complex for the database; use fewer values or parameters"
            return error_response(request, 400, [Issue("too-costly", message)])
        if not _transient(error):
            return await _unexpected(request, error)
        log.warning("database unavailable: %s", error.__class__.__name__)
        return error_response(
            request,
            503,
            [Issue("transient", "The database is unavailable; retry shortly")],
            headers={"Retry-After": "2"},
        )

    for kind in _DATABASE_ERRORS:
        app.add_exception_handler(kind, _database)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(request, 500, [Issue("exception", "Internal server error")])
