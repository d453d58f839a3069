"""The account pages the e-mails link to when no web frontend is configured, in a real headless
Chromium against a real server: confirm an address, ask for a reset link, choose a new password.
And every link in every kind of e-mail opens a page this server has."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from auth_helpers import PASSWORD
from live import CHROMIUM_ARGS, chromium_path, live_app

from vitasync_fhir.config import Settings
from vitasync_fhir.notify import messages

NEW_PASSWORD = "a brand new passphrase"


@pytest.fixture
def live(settings: Settings) -> Iterator[Settings]:
    with live_app(settings) as served:
        yield served


def _link(mails, kind: str, address: str) -> str:  # type: ignore[no-untyped-def]
    """The link of the last such e-mail (read on a thread: Playwright's loop runs on this one)."""
    key = {"registration": "verify_url", "password-reset": "reset_url"}[kind]
    with ThreadPoolExecutor(1) as pool:
        sent = pool.submit(mails.sent).result()
    return next(p[key] for k, to, p in reversed(sent) if k == kind and to == address)


def _sign_in(http: httpx.Client, password: str) -> int:
    body = {"email": "page.user@example.org", "password": password}
    return http.post("/api/auth/login", json=body).status_code


def test_confirm_and_reset_through_the_pages(live: Settings, mails) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    http = httpx.Client(base_url=live.base_url, timeout=10)
    signed_up = http.post(
        "/api/auth/register", json={"email": "page.user@example.org", "password": PASSWORD}
    )
    assert signed_up.status_code == 202
    verify = _link(mails, "registration", "page.user@example.org")
    assert verify.startswith(f"{live.base_url}/account/verify-email?token=")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium_path()), args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()
            page.goto(verify)
            assert (
                _sign_in(http, PASSWORD) == 403
            )  # opening the link (a mail scanner) spends nothing
            page.click("#confirm")
            assert page.inner_text("h1") == "Address confirmed"
            assert _sign_in(http, PASSWORD) == 200
            page.goto(verify)
            page.click("#confirm")
            assert "already used" in page.inner_text("#error")

            page.goto(f"{live.base_url}/account/forgot-password")
            page.fill("#email", "page.user@example.org")
            page.keyboard.press("Enter")
            page.wait_for_selector("#message")
            assert page.inner_text("h1") == "Check your e-mail"
            page.goto(_link(mails, "password-reset", "page.user@example.org"))
            page.fill("#password", NEW_PASSWORD)
            page.fill("#repeat", NEW_PASSWORD + "!")
            page.click("#change")
            assert "differ" in page.inner_text("#error")
            page.fill(
                "#password", "short one"
            )  # the browser's minlength is checked server-side too
            page.fill("#repeat", "short one")
            page.eval_on_selector("form", "f => f.noValidate = true")
            page.click("#change")
            assert "at least" in page.inner_text("#error")
            page.fill("#password", NEW_PASSWORD)
            page.fill("#repeat", NEW_PASSWORD)
            page.click("#change")
            assert page.inner_text("h1") == "Password changed"
            headers = page.context.request.get(f"{live.base_url}/account/forgot-password").headers
            assert headers["x-frame-options"] == "DENY"
        finally:
            browser.close()
    assert _sign_in(http, PASSWORD) == 401
    assert _sign_in(http, NEW_PASSWORD) == 200


def test_every_link_in_every_email_opens_a_page(live: Settings) -> None:
    """With the default configuration (no frontend address) each e-mail's links lead to pages
    of this server; before, /login, /reset-password and /appointments/<id> were 404s."""
    context = {
        "verify_url": f"{live.base_url}/account/verify-email?token=t",
        "reset_url": f"{live.base_url}/account/reset-password?token=t",
        "appointment_id": "a1",
        "start": "2030-03-04T09:30:00Z",
    }
    links: set[str] = set()
    for kind in messages.KINDS:
        rendered = messages.render(live, kind, context)
        links |= set(re.findall(r'href="([^"]+)"', rendered.html))
        links |= set(re.findall(r"https?://\S+", rendered.text))
    ours = {link for link in links if link.startswith(live.base_url)}
    assert f"{live.base_url}/account/forgot-password" in ours
    with httpx.Client(timeout=10) as http:
        for link in ours:
            assert http.get(link).status_code == 200, link
    with_frontend = live.model_copy(update={"email_link_url": "https://app.example.org"})
    created = messages.render(with_frontend, "appointment-created", context).text
    assert "https://app.example.org/appointments/a1" in created
