"""HTTP for the account pages the e-mails link to when no web frontend is configured.

/account/verify-email and /account/reset-password open from the links of the registration and
password reset e-mails; /account/forgot-password asks for a reset link. A link's token is spent
only by the form the page shows, never by opening it: mail scanners that fetch every link in a
message would otherwise use it up before its owner clicks. The rules are accounts' own, as
/api/auth runs them; the pages only ask and answer.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from vitasync_fhir.auth import accounts, forms, passwords
from vitasync_fhir.auth.accounts import AccountError
from vitasync_fhir.auth.oauth_routes import page
from vitasync_fhir.db import SessionDep

router = APIRouter(prefix="/account", include_in_schema=False)
Token = Annotated[str, Query(max_length=200)]


def _reset_page(status: int = 200, **values: object) -> HTMLResponse:
    return page("account_reset.html", status, min_length=passwords.MIN_LENGTH, **values)


async def _form(request: Request) -> dict[str, str]:
    return {k: v[:1000] for k, v in (await request.form()).items() if isinstance(v, str)}


@router.get("/verify-email", response_class=HTMLResponse)
async def verify_email_page(token: Token = "") -> HTMLResponse:
    return page("account_verify.html", token=token)


@router.post("/verify-email", response_class=HTMLResponse)
async def verify_email(request: Request, session: SessionDep) -> HTMLResponse:
    if forms.from_elsewhere(request):
        return forms.refusal()
    form = await _form(request)
    try:
        await accounts.verify_email(session, form.get("token", ""))
    except AccountError as error:
        return page("account_done.html", error.status, title="Not confirmed", error=error.message)
    return page(
        "account_done.html",
        title="Address confirmed",
        message="Your e-mail address is confirmed. You can sign in now.",
    )


@router.get("/reset-password", response_class=HTMLResponse)
async def reset_password_page(token: Token = "") -> HTMLResponse:
    return _reset_page(token=token)


@router.post("/reset-password", response_class=HTMLResponse)
async def reset_password(request: Request, session: SessionDep) -> HTMLResponse:
    if forms.from_elsewhere(request):
        return forms.refusal()
    form = await _form(request)
    token, password = form.get("token", ""), form.get("password", "")
    if password != form.get("repeat", ""):
        return _reset_page(422, token=token, error="The two passwords differ")
    try:
        await accounts.reset_password(session, token=token, password=password)
    except AccountError as error:
        if error.status == 422:  # the password: the link still works, ask again
            return _reset_page(422, token=token, error=error.message)
        return page("account_done.html", error.status, title="Not changed", error=error.message)
    return page(
        "account_done.html",
        title="Password changed",
        message="Your password is changed. Sign in with the new one.",
    )


@router.get("/forgot-password", response_class=HTMLResponse)
async def forgot_password_page() -> HTMLResponse:
    return page("account_forgot.html")


@router.post("/forgot-password", response_class=HTMLResponse)
async def forgot_password(request: Request, session: SessionDep) -> HTMLResponse:
    if forms.from_elsewhere(request):
        return forms.refusal()
    form = await _form(request)
    email = form.get("email", "").strip()
    try:
        address = accounts.normal_email(email)
    except AccountError as error:
        return page("account_forgot.html", 422, email=email, error=error.message)
    await accounts.request_password_reset(session, request.app.state.settings, email=address)
    return page(
        "account_done.html",
        title="Check your e-mail",
        message="If the address has an account, a link to choose a new password is on its way.",
    )
