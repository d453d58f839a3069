"""Every HTML form post is refused when the browser says it came from another site (login CSRF,
reset e-mails or consents sent in someone else's name); from our own pages it goes through."""

from __future__ import annotations

import pytest
from auth_helpers import PASSWORD
from fastapi.testclient import TestClient

FORMS = {
    "/account/forgot-password": {"email": "someone@example.org"},
    "/account/verify-email": {"token": "t"},
    "/account/reset-password": {"token": "t", "password": PASSWORD, "repeat": PASSWORD},
    "/verify/sign-in": {"email": "someone@example.org", "password": PASSWORD},
    "/verify/sign-out": {},
    "/oauth2/authorize": {"step": "consent", "transaction": "t"},
}


@pytest.mark.parametrize("path", sorted(FORMS))
def test_a_form_posted_from_another_site_is_refused(api: TestClient, path: str) -> None:
    for sent in ({"Origin": "https://evil.example"}, {"Referer": "https://evil.example/x"}):
        answer = api.post(path, data=FORMS[path], headers=sent, follow_redirects=False)
        assert answer.status_code == 403, (path, sent)
        assert "another site" in answer.text and answer.headers["X-Frame-Options"] == "DENY"
    own = api.post(
        path, data=FORMS[path], headers={"Origin": "http://testserver"}, follow_redirects=False
    )
    assert own.status_code != 403, path


def test_a_sign_in_posted_from_elsewhere_opens_no_session(api: TestClient, make_user) -> None:  # type: ignore[no-untyped-def]
    user = make_user(role="nurse")
    body = {"email": user.email, "password": PASSWORD, "next": "/verify/signed-in"}
    forged = api.post(
        "/verify/sign-in",
        data=body,
        headers={"Origin": "http://127.0.0.1:9998"},
        follow_redirects=False,
    )
    assert forged.status_code == 403 and "set-cookie" not in forged.headers
    mine = api.post("/verify/sign-in", data=body, follow_redirects=False)
    assert mine.status_code == 303 and "vitasync_verify=" in mine.headers["set-cookie"]
