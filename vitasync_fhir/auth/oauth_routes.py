"""HTTP for the OAuth2 server (/oauth2/*) and discovery (/.well-known/*).

OAuth answers keep the shape RFC 6749 mandates (`error`, `error_description`), which OAuth
clients parse; so these routes answer errors themselves instead of through `errors.py`.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from authlib.oauth2.rfc6749.errors import (
    AccessDeniedError,
    InvalidClientError,
    InvalidRequestError,
    OAuth2Error,
)
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from vitasync_fhir.auth import accounts, forms, keys, oauth, policy, throttle, tokens
from vitasync_fhir.auth import scopes as smart
from vitasync_fhir.auth.deps import bearer_token, caller_for_claims
from vitasync_fhir.auth.oauth import AuthorizationRequest, NotRedirectable, RedirectError
from vitasync_fhir.auth.routes import audit_login
from vitasync_fhir.db import SessionDep

router = APIRouter(tags=["OAuth2"])
well_known = APIRouter(tags=["discovery"])

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# same-origin, not no-referrer: no address of ours reaches another site (the app a consent sends
# back to, say), while the forms' posts still name their origin, which auth/forms.py checks
# (under no-referrer browsers send `Origin: null`, which is anybody's).
PAGE_HEADERS = {**NO_STORE, "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin"}
CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; form-action 'self'"
_pages = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=select_autoescape(["html"]),
)


def page(
    name: str, status: int = 200, *, redirect_to: str | None = None, **values: object
) -> HTMLResponse:
    """A page that cannot be framed; its forms post here, or redirect on to the app's URI."""
    csp = CSP
    if redirect_to:  # browsers apply form-action to the redirect that follows a form post
        parts = urlsplit(redirect_to)
        csp += f" {parts.scheme}://{parts.netloc}"
    headers = {**PAGE_HEADERS, "Content-Security-Policy": csp}
    return HTMLResponse(
        _pages.get_template(name).render(**values), status_code=status, headers=headers
    )


def oauth_error(error: OAuth2Error, request: Request) -> JSONResponse:
    """RFC 6749 5.2: the error as JSON; a 401 to a client that authenticated with the
    Authorization header names that header's scheme in WWW-Authenticate."""
    headers = dict(NO_STORE)
    scheme = request.headers.get("authorization", "").partition(" ")[0]
    if error.status_code == 401 and scheme:
        headers["WWW-Authenticate"] = f'{scheme} realm="VitaSync FHIR", error="{error.error}"'
    return JSONResponse(
        dict(error.get_body()), status_code=error.status_code or 400, headers=headers
    )


def redirect(uri: str, values: dict[str, str | None]) -> RedirectResponse:
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query += [(k, v) for k, v in values.items() if v is not None]
    return RedirectResponse(urlunsplit(parts._replace(query=urlencode(query))), status_code=303)


def error_redirect(error: RedirectError) -> RedirectResponse:
    return redirect(error.redirect_uri, {**dict(error.error.get_body()), "state": error.state})


# -- /oauth2/authorize --------------------------------------------------------------------------


@router.get("/oauth2/authorize", response_class=HTMLResponse)
async def authorize(request: Request, session: SessionDep) -> Response:
    """Start a SMART authorization: check the request, then show the sign-in page."""
    params = dict(request.query_params)
    try:
        checked = await oauth.check_authorization_request(
            session, request.app.state.settings, params
        )
    except NotRedirectable as error:
        return page("error.html", 400, message=str(error))
    except RedirectError as error:
        return error_redirect(error)
    return _login_page(checked, params)


def _login_page(
    checked: AuthorizationRequest,
    params: dict,
    *,
    status: int = 200,
    error: str | None = None,
    email: str | None = None,
) -> HTMLResponse:
    hidden = {**checked.params(), "aud": params.get("aud", "")}
    hidden["scope"] = params.get("scope", checked.scope)
    return page(
        "login.html",
        status,
        client_name=checked.client.name,
        params=hidden,
        error=error,
        email=email,
        action="/oauth2/authorize",
        redirect_to=checked.redirect_uri,
    )


@router.post("/oauth2/authorize", response_class=HTMLResponse)
async def authorize_step(request: Request, session: SessionDep) -> Response:
    """The sign-in form and the consent form post here."""
    if forms.from_elsewhere(request):
        return forms.refusal()
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    if form.get("step") == "consent":
        return await _consent(request, session, form)
    settings = request.app.state.settings
    try:
        checked = await oauth.check_authorization_request(session, settings, form)
    except NotRedirectable as error:
        return page("error.html", 400, message=str(error))
    except RedirectError as error:
        return error_redirect(error)
    return await _sign_in(request, session, checked, form)


async def _sign_in(
    request: Request, session: SessionDep, checked: AuthorizationRequest, form: dict
) -> Response:
    settings = request.app.state.settings
    database = request.app.state.db
    email = form.get("email", "")
    address = request.client.host if request.client else None
    keys_ = throttle.keys_for(email, address)
    wait = await database.run(lambda s: throttle.wait_seconds(s, keys_))
    if wait:
        return _login_page(
            checked,
            form,
            status=429,
            email=email,
            error=f"Too many failed sign-ins; try again in {wait} seconds",
        )
    user = await accounts.find_by_email(session, email)
    good = accounts.passwords.verify_password(
        user.password_hash if user else None, form.get("password", "")
    )
    if user is None or not good or not user.active:
        await database.run(lambda s: throttle.record_failure(s, settings, keys_))
        await audit_login(request, None, user, "denied")
        return _login_page(
            checked,
            form,
            status=401,
            email=email,
            error="The e-mail address or the password is wrong",
        )
    await database.run(lambda s: throttle.record_success(s, keys_[:1]))
    if not user.verified:
        return _login_page(
            checked,
            form,
            status=403,
            email=email,
            error="Confirm your e-mail address before signing in",
        )
    await audit_login(request, session, user, "success")
    return _consent_page(settings, user, checked)


def _consent_page(
    settings, user: accounts.User, checked: AuthorizationRequest, *, error: str | None = None
) -> HTMLResponse:  # type: ignore[no-untyped-def]
    scope = oauth.grant_for(user, checked, patient_id="?" if user.role != "patient" else None)
    pick_patient = _picks_patient(user, checked)
    return page(
        "consent.html",
        400 if error else 200,
        client_name=checked.client.name,
        email=user.email,
        scopes=[{"scope": s, "text": describe(s)} for s in scope.split()],
        transaction=oauth.consent_token(settings, user, checked),
        pick_patient=pick_patient,
        error=error,
        action="/oauth2/authorize",
        redirect_to=checked.redirect_uri,
    )


async def _consent(request: Request, session: SessionDep, form: dict) -> Response:
    settings = request.app.state.settings
    try:
        consent = oauth.read_consent_token(settings, form.get("transaction", ""))
    except tokens.InvalidToken:
        return page(
            "error.html", 400, message="The sign-in has expired; start again from the application"
        )
    user_id, params = consent["sub"], consent["req"]
    if await tokens.is_revoked(session, consent["jti"]):  # a form is answered once
        return page(
            "error.html", 400, message="This request was answered already; start again from the app"
        )
    try:
        checked = await oauth.check_authorization_request(
            session, settings, {**params, "aud": settings.fhir_base}
        )
    except NotRedirectable as error:
        return page("error.html", 400, message=str(error))
    except RedirectError as error:
        return error_redirect(error)
    user = await accounts.get_user(session, user_id)
    if user is None or not user.active:
        return page("error.html", 400, message="The account is no longer active")
    if form.get("decision") != "allow":
        await tokens.revoke(session, consent["jti"], consent["exp"])
        denied = AccessDeniedError(description="The user did not allow access")
        return error_redirect(RedirectError(denied, checked.redirect_uri, checked.state))
    patient_id = (form.get("patient") or "").strip() or None if user.role != "patient" else None
    if _picks_patient(user, checked) and patient_id is None:
        return _consent_page(settings, user, checked, error="Choose the patient the app opens")
    if patient_id is not None and not await _may_launch(session, user, patient_id):
        return _consent_page(settings, user, checked, error="That patient cannot be opened")
    await tokens.revoke(session, consent["jti"], consent["exp"])
    scope = oauth.grant_for(user, checked, patient_id=patient_id)
    code = await oauth.issue_code(
        session, settings, user, checked, scope=scope, patient_id=patient_id
    )
    return redirect(checked.redirect_uri, {"code": code, "state": checked.state})


def _picks_patient(user: accounts.User, checked: AuthorizationRequest) -> bool:
    """A staff member signing in to an app that asked for a patient (launch/patient) names one."""
    return user.role != "patient" and "launch/patient" in smart.parse(checked.scope).other


async def _may_launch(session: SessionDep, user: accounts.User, patient_id: str) -> bool:
    from vitasync_fhir.fhir.outcomes import FhirError
    from vitasync_fhir.fhir.service import Resources

    caller = policy.Caller(
        role=user.role, scopes=(smart.Scope("user", "Patient", "r"),), user_id=user.id
    )
    try:
        found = await Resources(session).read("Patient", patient_id)
    except FhirError:
        return False
    return found.content is not None and policy.may_see(caller, "Patient", found.content)


LETTER_WORDS = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}
CONTEXT_WORDS = {
    "patient": "the selected patient's",
    "user": "records you can see:",
    "system": "all",
}
OTHER_WORDS = {
    "openid": "Know who you are",
    "fhirUser": "Know your user record (FHIR resource)",
    "profile": "Know your profile",
    "launch/patient": "Know which patient is in context",
    "offline_access": "Keep access while you are away (refresh token)",
}


def describe(scope: str) -> str:
    parsed = smart.parse_scope(scope)
    if parsed is None:
        return OTHER_WORDS.get(scope, scope)
    verbs = ", ".join(LETTER_WORDS[x] for x in parsed.letters)
    what = "all data" if parsed.resource_type == "*" else f"{parsed.resource_type} records"
    return f"{verbs.capitalize()} {CONTEXT_WORDS[parsed.context]} {what}"


# -- /oauth2/token, /oauth2/revoke, /oauth2/introspect --------------------------------------------


async def _form(request: Request) -> dict[str, str]:
    return {k: v for k, v in (await request.form()).items() if isinstance(v, str)}


@router.post("/oauth2/token")
async def token(request: Request, session: SessionDep) -> JSONResponse:
    """Exchange a code, a refresh token, or a client assertion (client_credentials) for tokens."""
    form = await _form(request)
    try:
        _one_way(request, form)
        answer = await oauth.token(session, request.app.state.db, request.app.state.settings, form)
    except OAuth2Error as error:
        return oauth_error(error, request)  # answered, not raised: replays' revocations commit
    return JSONResponse(
        {k: v for k, v in answer.items() if not k.startswith("_")}, headers=NO_STORE
    )


async def _requesting_client(
    request: Request, session: SessionDep, form: dict, endpoint: str
) -> oauth.Client | None:
    """The client calling revoke or introspect; None for an administrator's own bearer token
    (from the server's sign-in, not an app's: an app an administrator signed in to is a client
    and sees only its own tokens)."""
    settings = request.app.state.settings
    token_value = bearer_token(request)
    if token_value and not (form.get("client_id") or form.get("client_assertion")):
        try:
            claims = tokens.decode_access_token(settings, token_value)
        except tokens.InvalidToken:
            raise InvalidClientError(
                description="The bearer token is not valid", status_code=401
            ) from None
        caller = (
            None
            if await tokens.is_revoked(session, claims["jti"])
            else await caller_for_claims(session, claims)
        )
        if caller is None or caller.role != "admin" or caller.client_id is not None:
            raise InvalidClientError(
                description="Only an administrator's own sign-in token may be used here",
                status_code=401,
            )
        return None
    _one_way(request, form)
    return await oauth.authenticate_client(
        session, request.app.state.db, settings, form, endpoint=endpoint
    )


def _one_way(request: Request, form: dict) -> None:
    """RFC 6749 2.3: a client authenticates one way per request, so an assertion with an
    Authorization header as well is refused."""
    if form.get("client_assertion") and request.headers.get("authorization"):
        raise InvalidRequestError(description="Authenticate the client one way only")


def _require_token(form: dict) -> None:
    if not form.get("token"):
        raise InvalidRequestError(description="token is required")


@router.post("/oauth2/revoke")
async def revoke(request: Request, session: SessionDep) -> Response:
    """RFC 7009: revoke an access or refresh token (200 whether or not it was known)."""
    form = await _form(request)
    endpoint = oauth.endpoints(request.app.state.settings)["revocation_endpoint"]
    try:
        client = await _requesting_client(request, session, form, endpoint)
        _require_token(form)
    except OAuth2Error as error:
        return oauth_error(error, request)
    await oauth.revoke(session, request.app.state.settings, client, form.get("token", ""))
    return Response(status_code=200, headers=NO_STORE)


@router.post("/oauth2/introspect")
async def introspect(request: Request, session: SessionDep) -> JSONResponse:
    """RFC 7662: whether a token is active, for its client or an administrator."""
    form = await _form(request)
    endpoint = oauth.endpoints(request.app.state.settings)["introspection_endpoint"]
    try:
        client = await _requesting_client(request, session, form, endpoint)
        _require_token(form)
    except OAuth2Error as error:
        return oauth_error(error, request)
    answer = await oauth.introspect(
        session, request.app.state.settings, client, form.get("token", "")
    )
    return JSONResponse(answer, headers=NO_STORE)


# -- discovery ----------------------------------------------------------------------------------


@well_known.get("/.well-known/smart-configuration")
@well_known.get("/fhir/.well-known/smart-configuration")
async def smart_configuration(request: Request) -> JSONResponse:
    """SMART App Launch discovery: endpoints, capabilities, scopes."""
    return JSONResponse(oauth.smart_configuration(request.app.state.settings))


@well_known.get("/.well-known/openid-configuration")
async def openid_configuration(request: Request) -> JSONResponse:
    """OpenID Connect discovery."""
    return JSONResponse(oauth.openid_configuration(request.app.state.settings))


@well_known.get("/.well-known/jwks.json")
async def jwks(request: Request) -> JSONResponse:
    """The public keys that verify our tokens."""
    return JSONResponse(keys.public_jwks(request.app.state.settings))
