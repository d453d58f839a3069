"""The sign-in and consent pages, end to end in a real headless Chromium against a real server.

A SMART app starts a standalone launch, the patient signs in and consents, the app receives the
code at its redirect URI, exchanges it (with its PKCE verifier) and reads its Patient.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from auth_helpers import PASSWORD, bearer, pkce, query_of
from live import CHROMIUM_ARGS, chromium_path, free_port, threaded

from vitasync_fhir.app import create_app
from vitasync_fhir.config import Settings


@pytest.fixture
def chromium() -> Path:
    return chromium_path()


@pytest.fixture
def live_server(settings: Settings) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The app (auth routers mounted) under uvicorn on a free loopback port."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with threaded(create_app(settings.model_copy(update={"base_url": base})), port):
        yield base


def test_smart_app_launch_in_chromium(
    chromium: Path, live_server: str, make_user, make_client
) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    user = make_user(role="patient", email="browser.patient@example.org")
    redirect_uri = f"http://127.0.0.1:{free_port()}/callback"  # the app; nothing listens there
    app = make_client(
        name="Growth Chart App",
        redirect_uris=[redirect_uri],
        scope="openid fhirUser launch/patient offline_access patient/*.rs",
    )
    verifier, challenge = pkce()
    authorize = f"{live_server}/oauth2/authorize?" + urlencode(
        {
            "response_type": "code",
            "client_id": app.client_id,
            "redirect_uri": redirect_uri,
            "scope": "openid fhirUser launch/patient patient/Patient.rs patient/Observation.rs",
            "state": "browser-state",
            "aud": f"{live_server}/fhir",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    landed: list[str] = []

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()

            def callback(route):  # type: ignore[no-untyped-def]
                landed.append(route.request.url)
                route.fulfill(
                    status=200, content_type="text/html", body="<h1>App received the code</h1>"
                )

            page.route(f"{redirect_uri}**", callback)
            page.goto(authorize)
            assert "Growth Chart App" in page.inner_text("h1")

            page.fill("#email", user.email)
            page.fill("#password", "wrong password!")
            page.click("#sign-in")
            assert "password is wrong" in page.inner_text("#error")

            page.fill("#password", PASSWORD)
            page.click("#sign-in")
            page.wait_for_selector("#allow")
            listed = page.inner_text("#scopes")
            assert "patient/Observation.rs" in listed and "launch/patient" in listed
            assert "Read, search the selected patient's Observation records" in listed

            page.click("#allow")
            page.wait_for_selector("text=App received the code")
        finally:
            browser.close()

    assert len(landed) == 1
    answer = query_of(landed[0])
    assert answer["state"] == "browser-state"

    # The app exchanges the code and reads its patient.
    with httpx.Client(base_url=live_server, timeout=10) as http:
        exchanged = http.post(
            "/oauth2/token",
            data={
                "grant_type": "authorization_code",
                "code": answer["code"],
                "redirect_uri": redirect_uri,
                "client_id": app.client_id,
                "code_verifier": verifier,
            },
        )
        assert exchanged.status_code == 200, exchanged.text
        body = exchanged.json()
        assert body["patient"] == user.fhir_id
        patient = http.get(f"/fhir/Patient/{body['patient']}", headers=bearer(body["access_token"]))
        assert patient.status_code == 200
        assert patient.json()["id"] == user.fhir_id
        me = http.get("/api/auth/me", headers=bearer(body["access_token"]))
        assert me.status_code == 200 and me.json()["fhirUser"] == f"Patient/{user.fhir_id}"
