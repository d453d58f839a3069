"""HTTP for /api/auth: sign-up, sign-in, tokens, e-mail verification, password reset, accounts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, StringConstraints
from sqlalchemy.ext.asyncio import AsyncSession

from vitasync_fhir.auth import accounts, audit, throttle, tokens
from vitasync_fhir.auth.accounts import AccountError, User
from vitasync_fhir.auth.deps import CallerDep
from vitasync_fhir.auth.policy import Caller
from vitasync_fhir.db import SessionDep
from vitasync_fhir.errors import error_response
from vitasync_fhir.fhir.outcomes import FhirError, Issue

router = APIRouter(prefix="/api/auth", tags=["auth"])

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
WRONG_CREDENTIALS = "The e-mail address or the password is wrong"
CHECK_EMAIL = "Check your e-mail: a link to confirm the address is on its way"

# Text that may reach the database: PostgreSQL text cannot hold NUL, so it is refused up front.
Text = Annotated[str, StringConstraints(pattern=r"^[^\x00]*$")]


class Registration(BaseModel):
    email: Text = Field(max_length=320)
    password: Text = Field(max_length=256)
    given: Text | None = Field(default=None, max_length=200)
    family: Text | None = Field(default=None, max_length=200)


class Credentials(BaseModel):
    email: Text = Field(max_length=320)
    password: Text = Field(max_length=256)


class RefreshRequest(BaseModel):
    refresh_token: Text = Field(max_length=200)


class LogoutRequest(BaseModel):
    refresh_token: Text | None = Field(default=None, max_length=200)


class ResetRequest(BaseModel):
    email: Text = Field(max_length=320)


class ResetConfirm(BaseModel):
    token: Text = Field(max_length=200)
    password: Text = Field(max_length=256)


class NewUser(BaseModel):
    email: Text = Field(max_length=320)
    password: Text = Field(max_length=256)
    role: Text
    given: Text | None = Field(default=None, max_length=200)
    family: Text | None = Field(default=None, max_length=200)
    fhir_id: Text | None = Field(default=None, max_length=64)


def _fail(error: AccountError) -> FhirError:
    return FhirError(error.status, "invalid", error.message)


def _address(request: Request) -> str | None:
    return request.client.host if request.client else None


def _tokens_answer(pair: dict) -> JSONResponse:
    return JSONResponse({k: v for k, v in pair.items() if not k.startswith("_")}, headers=NO_STORE)


@router.post("/register", status_code=202)
async def register(body: Registration, request: Request, session: SessionDep) -> JSONResponse:
    """Sign up as a patient: a link to confirm the address is e-mailed (the same answer whether or
    not the address has an account; its owner is told by e-mail)."""
    settings = request.app.state.settings
    try:
        await accounts.register(
            session,
            settings,
            email=body.email,
            password=body.password,
            given=body.given,
            family=body.family,
        )
    except AccountError as error:
        raise _fail(error) from None
    answer = {"email": accounts.normal_email(body.email), "detail": CHECK_EMAIL}
    return JSONResponse(answer, status_code=202)


@router.get("/verify-email")
async def verify_email(session: SessionDep, token: Annotated[str, Query(max_length=200)]) -> dict:
    """Confirm the e-mail address with the token from the verification link."""
    try:
        user = await accounts.verify_email(session, token)
    except AccountError as error:
        raise _fail(error) from None
    return user.public()


@router.post("/login")
async def login(body: Credentials, request: Request, session: SessionDep) -> JSONResponse:
    """Sign in with e-mail and password: an access token and a refresh token."""
    settings = request.app.state.settings
    database = request.app.state.db
    keys = throttle.keys_for(body.email, _address(request))
    wait = await database.run(lambda s: throttle.wait_seconds(s, keys))
    if wait:
        raise FhirError(
            429,
            "throttled",
            f"Too many failed sign-ins; try again in {wait} seconds",
            headers={"Retry-After": str(wait)},
        )
    user = await accounts.find_by_email(session, body.email)
    good = accounts.passwords.verify_password(user.password_hash if user else None, body.password)
    if user is None or not good or not user.active:
        await database.run(lambda s: throttle.record_failure(s, settings, keys))
        await audit_login(request, None, user, "denied")
        raise FhirError(401, "login", WRONG_CREDENTIALS)
    await database.run(lambda s: throttle.record_success(s, keys[:1]))
    if not user.verified:
        raise FhirError(403, "forbidden", "Confirm your e-mail address before signing in")
    pair = await accounts.issue_pair(session, settings, user, scope=accounts.login_scope(user))
    await audit_login(request, session, user, "success", jti=pair["_jti"])
    return _tokens_answer(pair)


async def audit_login(
    request: Request,
    session: AsyncSession | None,
    user: User | None,
    outcome: str,
    *,
    jti: str | None = None,
) -> None:
    """A failed sign-in is kept apart (its request fails); a success joins the request's work
    (on SQLite a second writer would wait for this request's own uncommitted writes)."""
    caller = None
    if user is not None:
        caller = Caller(
            role=user.role, scopes=(), user_id=user.id, fhir_user=user.fhir_user, jti=jti
        )
    event = audit.audit_event(
        caller,
        action="login",
        resource_type=None,
        resource_id=None,
        outcome=outcome,
        source_ip=_address(request),
        patient_id=user.patient_id if user else None,
    )
    if session is None:
        await audit.record_apart(request.app.state.db, event)
    else:
        await audit.record(session, event)


@router.post("/refresh")
async def refresh(body: RefreshRequest, request: Request, session: SessionDep) -> Response:
    """Trade a refresh token for a new pair; each refresh token works once."""
    try:
        pair = await accounts.refresh_login(session, request.app.state.settings, body.refresh_token)
    except AccountError as error:
        if error.keep:  # answer without raising: the revocation of the family must commit
            return error_response(request, error.status, [Issue("invalid", error.message)])
        raise _fail(error) from None
    return _tokens_answer(pair)


@router.post("/logout", status_code=204)
async def logout(
    caller: CallerDep, session: SessionDep, body: Annotated[LogoutRequest | None, Body()] = None
) -> Response:
    """Revoke this access token (and the refresh token, when given)."""
    assert caller.jti is not None and caller.expires_at is not None
    await tokens.revoke(session, caller.jti, caller.expires_at)
    if body and body.refresh_token and caller.user_id:
        await accounts.revoke_refresh_tokens(
            session, token=body.refresh_token, user_id=caller.user_id
        )
    return Response(status_code=204)


@router.get("/me")
async def me(caller: CallerDep, session: SessionDep) -> dict:
    """The signed-in account, its role, FHIR resource and granted scopes."""
    if caller.user_id is None:
        return {"client_id": caller.client_id, "role": caller.role, "scope": _scope_text(caller)}
    user = await accounts.get_user(session, caller.user_id)
    assert user is not None
    return {**user.public(), "scope": _scope_text(caller)}


def _scope_text(caller: Caller) -> str:
    return " ".join([*(str(s) for s in caller.scopes), *sorted(caller.other_scopes)])


@router.post("/password-reset", status_code=202)
async def password_reset(body: ResetRequest, request: Request, session: SessionDep) -> dict:
    """E-mail a password reset link if the account exists (the answer is the same if not)."""
    await accounts.request_password_reset(session, request.app.state.settings, email=body.email)
    return {"detail": "If the address has an account, a reset link is on its way"}


@router.post("/password-reset/confirm", status_code=204)
async def password_reset_confirm(body: ResetConfirm, session: SessionDep) -> Response:
    """Set a new password with the token from the reset link; older tokens stop working."""
    try:
        await accounts.reset_password(session, token=body.token, password=body.password)
    except AccountError as error:
        raise _fail(error) from None
    return Response(status_code=204)


def _admin(caller: CallerDep) -> Caller:
    if caller.role != "admin" or caller.user_id is None:
        raise FhirError(403, "forbidden", "Only administrators manage accounts")
    return caller


AdminDep = Annotated[Caller, Depends(_admin)]


@router.post("/users", status_code=201)
async def create_account(body: NewUser, caller: AdminDep, session: SessionDep) -> JSONResponse:
    """Create an account of any role (administrators only); staff get a Practitioner."""
    try:
        user = await accounts.create_user(
            session,
            email=body.email,
            password=body.password,
            role=body.role,
            verified=True,
            given=body.given,
            family=body.family,
            fhir_id=body.fhir_id,
        )
    except AccountError as error:
        raise _fail(error) from None
    return JSONResponse(user.public(), status_code=201)


@router.get("/users")
async def list_accounts(caller: AdminDep, session: SessionDep) -> dict:
    """Every account (administrators only)."""
    return {"users": [u.public() for u in await accounts.list_users(session)]}
