"""HTTP for the pages a scanned QR code opens: /verify/{token}, its sign-in and the Fill action.

The link proves only that this server printed it. Whoever opens it signs in (the same accounts,
password check and throttle as /api/auth/login; the session is an ordinary access token in an
HttpOnly cookie scoped to /verify) and then reads the resource through `Resources` as themselves:
the role policy decides and every access, allowed or refused, is audited. A pharmacist who scans
a prescription lands on it with a Fill button that runs the /api fill action.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape
from sqlalchemy.ext.asyncio import AsyncSession

from vitasync_fhir.api import actions
from vitasync_fhir.api.service import ApiResources
from vitasync_fhir.auth import accounts, forms, policy, throttle, tokens
from vitasync_fhir.auth.access import Access
from vitasync_fhir.auth.deps import caller_for_claims
from vitasync_fhir.auth.oauth_routes import CSP, PAGE_HEADERS
from vitasync_fhir.auth.policy import Caller
from vitasync_fhir.auth.routes import WRONG_CREDENTIALS, audit_login
from vitasync_fhir.db import SessionDep
from vitasync_fhir.documents import links, prescription
from vitasync_fhir.fhir.outcomes import FhirError
from vitasync_fhir.fhir.service import Resources
from vitasync_fhir.mapping.spec import load_all

router = APIRouter(prefix="/verify", include_in_schema=False)
COOKIE = "vitasync_verify"
_pages = Environment(
    loader=ChoiceLoader(
        [
            FileSystemLoader(Path(__file__).with_name("pages")),
            FileSystemLoader(Path(__file__).parent.parent / "auth" / "templates"),
        ]
    ),
    autoescape=select_autoescape(["html"]),
)


def page(name: str, status: int = 200, **values: object) -> HTMLResponse:
    headers = {**PAGE_HEADERS, "Content-Security-Policy": CSP}
    return HTMLResponse(
        _pages.get_template(name).render(**values), status_code=status, headers=headers
    )


def refused(status: int, title: str, message: str) -> HTMLResponse:
    return page("refused.html", status, title=title, message=message)


async def session_caller(request: Request, session: AsyncSession) -> Caller | None:
    """The signed-in person of the /verify cookie, as the account is now; None if none."""
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    try:
        claims = tokens.decode_access_token(request.app.state.settings, token)
    except tokens.InvalidToken:
        return None
    if await tokens.is_revoked(session, claims["jti"]):
        return None
    return await caller_for_claims(session, claims)


def _form_key(request: Request, caller: Caller, token: str) -> str:
    """A per-session, per-link value the Fill form must echo (cookies alone can be forged into)."""
    secret = links.secret(request.app.state.settings).raw_value
    return hmac.new(secret, f"{caller.jti}|{token}".encode(), hashlib.sha256).hexdigest()


def _safe_next(value: str | None) -> str:
    if value and value.startswith(links.PATH) and "//" not in value and "\\" not in value:
        return value
    return links.PATH + "signed-in"


# -- sign-in ----------------------------------------------------------------------------------


@router.get("/sign-in", response_class=HTMLResponse)
async def sign_in_page(request: Request) -> Response:
    """The sign-in form; `next` is the verification link to return to."""
    return _login(_safe_next(request.query_params.get("next")))


def _login(next_: str, *, status: int = 200, error: str | None = None, email: str | None = None):  # type: ignore[no-untyped-def]
    return page(
        "login.html",
        status,
        client_name="VitaSync",
        params={"next": next_},
        action=links.PATH + "sign-in",
        error=error,
        email=email,
    )


@router.post("/sign-in", response_class=HTMLResponse)
async def sign_in(request: Request, session: SessionDep) -> Response:
    """Check the password (with the sign-in throttle) and open a /verify session."""
    if forms.from_elsewhere(request):
        return forms.refusal()
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    next_, email = _safe_next(form.get("next")), form.get("email", "")
    settings, database = request.app.state.settings, request.app.state.db
    keys = throttle.keys_for(email, request.client.host if request.client else None)
    wait = await database.run(lambda s: throttle.wait_seconds(s, keys))
    if wait:
        error = f"Too many failed sign-ins; try again in {wait} seconds"
        return _login(next_, status=429, error=error, email=email)
    user = await accounts.find_by_email(session, email)
    good = accounts.passwords.verify_password(
        user.password_hash if user else None, form.get("password", "")
    )
    if user is None or not good or not user.active:
        await database.run(lambda s: throttle.record_failure(s, settings, keys))
        await audit_login(request, None, user, "denied")
        return _login(next_, status=401, error=WRONG_CREDENTIALS, email=email)
    await database.run(lambda s: throttle.record_success(s, keys[:1]))
    if not user.verified:
        error = "Confirm your e-mail address before signing in"
        return _login(next_, status=403, error=error, email=email)
    issued = tokens.issue_access_token(
        settings,
        subject=user.id,
        scope=accounts.login_scope(user),
        fhir_user=user.fhir_user,
        patient=user.patient_id,
    )
    await audit_login(request, session, user, "success", jti=issued.jti)
    answer = RedirectResponse(next_, status_code=303)
    answer.set_cookie(
        COOKIE,
        issued.token,
        max_age=issued.expires_in,
        path=links.PATH.rstrip("/"),
        httponly=True,
        secure=settings.base_url.startswith("https://"),
        samesite="lax",
    )
    return answer


@router.get("/signed-in", response_class=HTMLResponse)
async def signed_in(request: Request, session: SessionDep) -> Response:
    """Where a sign-in without a link lands."""
    caller = await session_caller(request, session)
    if caller is None:
        return RedirectResponse(links.PATH + "sign-in", status_code=303)
    return refused(200, "Signed in", "Scan a VitaSync code to open the document it belongs to.")


@router.post("/sign-out", response_class=HTMLResponse)
async def sign_out(request: Request, session: SessionDep) -> Response:
    """End the /verify session: its token is revoked, the cookie dropped."""
    if forms.from_elsewhere(request):
        return forms.refusal()
    caller = await session_caller(request, session)
    if caller is not None and caller.jti and caller.expires_at:
        await tokens.revoke(session, caller.jti, caller.expires_at)
    answer = refused(200, "Signed out", "You are signed out.")
    answer.delete_cookie(COOKIE, path=links.PATH.rstrip("/"))
    return answer


# -- the link -------------------------------------------------------------------------------------


async def _open(request: Request, session: AsyncSession, token: str):  # type: ignore[no-untyped-def]
    """(link, caller) or the response that stops here: refused link, or sign in first."""
    try:
        link = links.read(request.app.state.settings, token)
    except links.LinkError as error:
        title = "This code has expired" if error.expired else "This code is not valid"
        return None, None, refused(410 if error.expired else 400, title, str(error))
    caller = await session_caller(request, session)
    if caller is None:
        target = links.PATH + "sign-in?next=" + quote(links.PATH + token, safe="")
        return link, None, RedirectResponse(target, status_code=303)
    return link, caller, None


@router.get("/{token}", response_class=HTMLResponse)
async def open_link(token: str, request: Request, session: SessionDep) -> Response:
    """The resource a QR code points to, as the signed-in person may see it."""
    link, caller, stop = await _open(request, session, token)
    if stop is not None:
        return stop
    access = Access.of_request(request, caller, session)
    resources = Resources(session, access)
    try:
        if link.resource_type == "MedicationRequest":
            sources = await prescription.gather(resources, link.resource_id, action="read")
            filled = await _filled(resources, link, request.query_params.get("filled"))
            return _prescription_page(request, caller, link, sources, filled=filled)
        found = await resources.read(link.resource_type, link.resource_id)
    except FhirError as error:
        return _refusal(error, link)
    resource = orjson.loads(found.content or "{}")
    return page(
        "resource.html",
        reference=link.reference,
        summary=_summary(resource),
        json=orjson.dumps(resource, option=orjson.OPT_INDENT_2).decode(),
        who=caller.role,
    )


async def _filled(resources: Resources, link: links.Link, dispense_id: str | None) -> str | None:
    """The id of the fill the page was sent back with, if it is a dispense of this prescription
    the caller may read: the query string is anyone's to write, the message is the server's."""
    if not dispense_id or len(dispense_id) > 64:
        return None
    try:
        found = await resources.read("MedicationDispense", dispense_id)
    except FhirError:
        return None
    dispense = orjson.loads(found.content or "{}")
    prescriptions = [r.get("reference") for r in dispense.get("authorizingPrescription", [])]
    return dispense_id if link.reference in prescriptions else None


def _refusal(error: FhirError, link: links.Link) -> HTMLResponse:
    if error.status == 410:
        return refused(410, "Deleted", f"{link.reference} has been deleted.")
    # 403 (the role may not use the type) and 404 (not in the caller's reach) alike: the code
    # itself proves the resource exists, so there is nothing left to hide by answering 404.
    return refused(
        403, "Not allowed", f"Your account may not open {link.reference}. This attempt is recorded."
    )


def _may_fill(caller: Caller, request_status: str | None) -> bool:
    return (
        request_status == "active"
        and policy.allowed(caller, "MedicationDispense", "create")
        and policy.allowed(caller, "MedicationRequest", "update")
    )


def _prescription_page(
    request: Request,
    caller: Caller,
    link: links.Link,
    sources: prescription.Sources,
    *,
    status: int = 200,
    error: str | None = None,
    filled: str | None = None,
) -> HTMLResponse:
    values = prescription.context(sources)
    return page(
        "prescription.html",
        status,
        **values,
        reference=link.reference,
        may_fill=_may_fill(caller, sources.request.get("status")),
        form_key=_form_key(request, caller, link.token),
        action=f"{links.PATH}{link.token}/fill",
        filled=filled,
        error=error,
        who=caller.role,
    )


@router.post("/{token}/fill", response_class=HTMLResponse)
async def fill(token: str, request: Request, session: SessionDep) -> Response:
    """Fill the prescription: a MedicationDispense, the request completed (the /api fill)."""
    link, caller, stop = await _open(request, session, token)
    if stop is not None:
        return stop
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    if not hmac.compare_digest(form.get("form_key", ""), _form_key(request, caller, token)):
        return refused(403, "Not allowed", "This form has expired; open the code again.")
    if link.resource_type != "MedicationRequest":
        return refused(400, "Not a prescription", f"{link.reference} cannot be filled.")
    database = request.app.state.db

    async def work(own: AsyncSession) -> dict:
        access = Access.of_request(request, caller, own)
        api = ApiResources(load_all()["prescriptions"], own, access, request.app.state.settings)
        return await actions.fill_prescription(api, link.resource_id, _fill_body(form))

    try:  # a unit of work of its own: a refused fill must leave nothing half-written
        done = await database.run(work)
    except FhirError as error:
        if error.status not in (409, 422):
            return _refusal(error, link)
        sources = await prescription.gather(
            Resources(session, Access.of_request(request, caller, session)),
            link.resource_id,
            action="read",
        )
        message = error.issues[0].diagnostics if error.issues else "It cannot be filled"
        return _prescription_page(request, caller, link, sources, status=409, error=message)
    target = f"{links.PATH}{token}?filled={quote(str(done['dispense_id']))}"
    return RedirectResponse(target, status_code=303)


def _fill_body(form: dict) -> dict:
    body: dict = {}
    if form.get("notes", "").strip():
        body["notes"] = form["notes"].strip()[:1000]
    return body


def _summary(resource: dict) -> list[tuple[str, str]]:
    """A few human lines for any resource type; the JSON below the page has the rest."""
    rows = []
    for name in ("status", "start", "end", "date", "authoredOn", "effectiveDateTime", "birthDate"):
        value = resource.get(name)
        if isinstance(value, str):
            rows.append((name, value))
    for name in ("code", "serviceType", "vaccineCode", "medicationCodeableConcept"):
        value = resource.get(name)
        value = value[0] if isinstance(value, list) and value else value
        text = prescription.text_of(value)
        if text:
            rows.append((name, text))
    if resource.get("name") and isinstance(resource["name"], list):
        rows.append(("name", prescription.name_of(resource["name"][0])))
    return rows
