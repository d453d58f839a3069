"""The plain read, `GET /fhir/{type}/{id}` (or a vread, `.../_history/{vid}`) with nothing unusual
about it, answered without the framework's routing and dependency solving.

It is the server's commonest request, and most of its cost was FastAPI finding the route and
solving the dependencies (two sessions, the caller, the access layer) around a primary-key read.
This lane does the same work through the same pieces: `Resources.read` (or `vread`) with an
`Access` for the caller (so the policy, the compartment check and the audit trail are the ones
every path uses), `read_answer` for the headers, and `error_response` for a refusal. It takes a
request only when the caller's token was verified moments ago (`auth/recent.py`), and only when
there is no query string, no conditional header and no Origin (CORS); everything else, and any
failure that is not a FHIR answer (the database down, say), goes to the full application, which
answers it as before.
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from vitasync_fhir.auth import recent
from vitasync_fhir.auth.access import Access
from vitasync_fhir.db import unit_of_work
from vitasync_fhir.errors import error_response
from vitasync_fhir.fhir.models import resource_types
from vitasync_fhir.fhir.outcomes import FhirError
from vitasync_fhir.fhir.router import read_answer
from vitasync_fhir.fhir.service import Resources

_PATH = re.compile(r"/fhir/([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})(?:/_history/([0-9]{1,9}))?")
# Headers that change what a read answers: they take the full path.
_UNUSUAL = (b"if-none-match", b"if-modified-since", b"origin", b"prefer")


def _bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    token = None
    for name, value in headers:
        if name in _UNUSUAL:
            return None
        if name == b"authorization":
            scheme, _, rest = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not rest.strip():
                return None
            token = rest.strip()
    return token


class PlainReads:
    """ASGI middleware: the plain read's lane in front of the application."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["query_string"]:
            return await self.app(scope, receive, send)
        match = _PATH.fullmatch(scope["path"])
        if match is None or match[1] not in resource_types() or match[1] == "AuditEvent":
            return await self.app(scope, receive, send)
        token = _bearer(scope["headers"])
        caller = recent.get(token) if token is not None else None
        if caller is None:  # unverified lately: the full path checks the token and caches it
            return await self.app(scope, receive, send)
        request = Request(scope)
        state = scope["app"].state
        try:
            async with state.db.read_sessions() as session:
                async with unit_of_work(session):
                    access = Access(
                        caller,
                        source_ip=scope["client"][0] if scope.get("client") else None,
                        database=state.db,
                        session=session,
                        trail=state.audit_trail,
                    )
                    resources = Resources(session, access)
                    if match[3] is None:
                        version = await resources.read(match[1], match[2])
                    else:
                        version = await resources.vread(match[1], match[2], match[3])
            response = read_answer(request, version)
        except FhirError as error:
            response = error_response(request, error.status, error.issues, headers=error.headers)
        except Exception:  # noqa: BLE001 - the full path answers it (a 503, say) as it always has
            return await self.app(scope, receive, send)
        await response(scope, receive, send)
