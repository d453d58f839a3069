"""/api/auth over HTTP: sign-up, verification, sign-in, refresh, sign-out, reset, lockout."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from auth_helpers import PASSWORD, bearer, login
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from vitasync_fhir.auth import accounts
from vitasync_fhir.auth.tables import account_tokens, login_attempts
from vitasync_fhir.db import mark_written


def register(api: TestClient, email: str = "jane@example.org", password: str = PASSWORD) -> dict:
    answer = api.post(
        "/api/auth/register",
        json={"email": email, "password": password, "given": "Jane", "family": "Doe"},
    )
    assert answer.status_code == 202, answer.text
    return answer.json()


def test_register_verify_login_me_logout(api: TestClient, mails) -> None:  # type: ignore[no-untyped-def]
    assert register(api, "Jane@Example.org")["email"] == "jane@example.org"

    unverified = api.post(
        "/api/auth/login", json={"email": "jane@example.org", "password": PASSWORD}
    )
    assert unverified.status_code == 403

    link = next(p["verify_url"] for k, _, p in mails.sent() if k == "registration")
    assert link.startswith("http://testserver/account/verify-email?token=")  # no frontend set
    token = mails.token("registration", "jane@example.org")
    verified = api.get("/api/auth/verify-email", params={"token": token})
    assert verified.status_code == 200
    account = verified.json()
    assert account["role"] == "patient" and account["verified"] is True
    assert account["fhirUser"] == f"Patient/{account['patient']}"
    assert api.get(f"/fhir/Patient/{account['patient']}").status_code == 401
    assert api.get("/api/auth/verify-email", params={"token": token}).status_code == 400

    pair = login(api, "JANE@example.org")
    assert pair["token_type"] == "Bearer" and pair["expires_in"] == 900
    assert pair["access_token"] and pair["refresh_token"]
    own = api.get(f"/fhir/Patient/{account['patient']}", headers=bearer(pair["access_token"]))
    assert own.status_code == 200 and own.json()["name"][0]["family"] == "Doe"
    me = api.get("/api/auth/me", headers=bearer(pair["access_token"]))
    assert me.status_code == 200
    assert me.json()["email"] == "jane@example.org" and me.json()["patient"] == account["patient"]
    assert "user/Observation.rs" in me.json()["scope"].split()

    out = api.post("/api/auth/logout", headers=bearer(pair["access_token"]))
    assert out.status_code == 204
    again = api.get("/api/auth/me", headers=bearer(pair["access_token"]))
    assert again.status_code == 401
    assert again.headers["WWW-Authenticate"].startswith("Bearer")
    assert again.json()["error"] == "unauthorized"


def test_signing_up_with_a_known_address_tells_only_its_owner(api: TestClient, mails) -> None:  # type: ignore[no-untyped-def]
    """A stranger cannot learn who has an account here: a known address is answered as a new
    one, and its owner is told by e-mail (once a day); the account is left as it was."""
    first = api.post("/api/auth/register", json={"email": "dup@example.org", "password": PASSWORD})
    token = mails.token("registration", "dup@example.org")
    assert api.get("/api/auth/verify-email", params={"token": token}).status_code == 200
    again = api.post(
        "/api/auth/register", json={"email": "DUP@example.org", "password": "another passphrase"}
    )
    other = api.post("/api/auth/register", json={"email": "new@example.org", "password": PASSWORD})
    assert first.status_code == again.status_code == other.status_code == 202
    assert again.json() == {**first.json(), "email": "dup@example.org"}
    assert set(again.json()) == set(other.json())
    api.post("/api/auth/register", json={"email": "dup@example.org", "password": PASSWORD})
    sent = [(kind, to) for kind, to, _ in mails.sent()]
    assert sent.count(("registration", "dup@example.org")) == 1
    assert sent.count(("account-exists", "dup@example.org")) == 1
    assert login(api, "dup@example.org")["access_token"]  # the first password still holds


def test_an_unconfirmed_account_is_never_locked_out(api: TestClient, mails, run) -> None:  # type: ignore[no-untyped-def]
    """Its confirmation link expired: signing up again sends a new one (not the account-exists
    e-mail), and a password reset, whose link reached the address too, confirms it."""
    register(api, "late@example.org")
    expire = update(account_tokens).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))

    async def expire_links(session):  # type: ignore[no-untyped-def]
        await session.execute(expire)
        mark_written(session)

    run(expire_links)
    register(api, "late@example.org")
    kinds = [kind for kind, to, _ in mails.sent() if to == "late@example.org"]
    assert kinds == ["registration", "registration"]
    fresh = mails.token("registration", "late@example.org")
    assert api.get("/api/auth/verify-email", params={"token": fresh}).status_code == 200

    register(api, "reset.first@example.org")
    api.post("/api/auth/password-reset", json={"email": "reset.first@example.org"})
    token = mails.token("password-reset", "reset.first@example.org")
    body = {"token": token, "password": "a brand new password"}
    assert api.post("/api/auth/password-reset/confirm", json=body).status_code == 204
    assert login(api, "reset.first@example.org", "a brand new password")["access_token"]


def test_reset_links_are_few_and_die_with_the_old_password(  # type: ignore[no-untyped-def]
    api: TestClient, make_user, mails, run, settings
) -> None:
    user = make_user(role="nurse")
    for _ in range(5):  # a stranger asking again and again
        assert api.post("/api/auth/password-reset", json={"email": user.email}).status_code == 202
    assert [kind for kind, to, _ in mails.sent() if to == user.email] == ["password-reset"]
    older, _ = run(lambda s: accounts._account_token(s, settings, user.id, accounts.RESET))
    body = {"token": mails.token("password-reset", user.email), "password": "a brand new password"}
    assert api.post("/api/auth/password-reset/confirm", json=body).status_code == 204
    stolen = {"token": older, "password": "the thief's passphrase"}
    assert api.post("/api/auth/password-reset/confirm", json=stolen).status_code == 400
    assert login(api, user.email, "a brand new password")["access_token"]


def test_weak_registrations(api: TestClient) -> None:
    register(api, "dup@example.org")
    for body in (
        {"email": "x@example.org", "password": "short"},
        {"email": "dup@example.org", "password": "short"},  # known or not, the same 422
        {"email": "not-an-email", "password": PASSWORD},
    ):
        answer = api.post("/api/auth/register", json=body)
        assert answer.status_code == 422, body
        assert set(answer.json()) == {"error", "detail"}


def test_me_requires_a_bearer_token(api: TestClient) -> None:
    missing = api.get("/api/auth/me")
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="vitasync"'
    garbage = api.get("/api/auth/me", headers=bearer("not.a.jwt"))
    assert garbage.status_code == 401
    assert 'error="invalid_token"' in garbage.headers["WWW-Authenticate"]


def test_refresh_rotates_and_a_replay_revokes_the_family(api: TestClient, make_user) -> None:  # type: ignore[no-untyped-def]
    user = make_user(role="nurse")
    first = login(api, user.email)
    second = api.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200
    rotated = second.json()
    assert rotated["refresh_token"] != first["refresh_token"]
    assert api.get("/api/auth/me", headers=bearer(rotated["access_token"])).status_code == 200

    replay = api.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert replay.status_code == 400
    # The replay revoked the whole family: the rotated tokens no longer work either.
    assert (
        api.post("/api/auth/refresh", json={"refresh_token": rotated["refresh_token"]}).status_code
        == 400
    )
    assert api.get("/api/auth/me", headers=bearer(rotated["access_token"])).status_code == 401


def test_password_reset(api: TestClient, make_user, mails) -> None:  # type: ignore[no-untyped-def]
    user = make_user(role="doctor")
    before = login(api, user.email)
    unknown = api.post("/api/auth/password-reset", json={"email": "nobody@example.org"})
    known = api.post("/api/auth/password-reset", json={"email": user.email})
    assert unknown.status_code == known.status_code == 202
    assert unknown.json() == known.json()
    token = mails.token("password-reset", user.email)
    assert all(sent[1] != "nobody@example.org" for sent in mails.sent())

    new_password = "a brand new password"
    done = api.post(
        "/api/auth/password-reset/confirm", json={"token": token, "password": new_password}
    )
    assert done.status_code == 204
    assert (
        api.post(
            "/api/auth/password-reset/confirm", json={"token": token, "password": new_password}
        ).status_code
        == 400
    )
    assert (
        api.post("/api/auth/login", json={"email": user.email, "password": PASSWORD}).status_code
        == 401
    )
    assert login(api, user.email, new_password)["access_token"]
    # Tokens from before the reset stop working, refresh tokens included.
    assert api.get("/api/auth/me", headers=bearer(before["access_token"])).status_code == 401
    assert (
        api.post("/api/auth/refresh", json={"refresh_token": before["refresh_token"]}).status_code
        == 400
    )


def test_failed_logins_are_slowed_then_locked_without_telling_if_the_account_exists(
    api: TestClient,
    make_user,
    settings,
    run,  # type: ignore[no-untyped-def]
) -> None:
    user = make_user(role="pharmacist")
    answers = {}
    for email in (user.email, "ghost@example.org"):
        wrong = api.post("/api/auth/login", json={"email": email, "password": "wrong password!"})
        answers[email] = (wrong.status_code, wrong.json())
    assert answers[user.email] == answers["ghost@example.org"]
    assert answers[user.email][0] == 401

    for _ in range(settings.login_slow_after - 1):
        api.post("/api/auth/login", json={"email": user.email, "password": "wrong password!"})
    slowed = api.post("/api/auth/login", json={"email": user.email, "password": PASSWORD})
    assert slowed.status_code == 429
    assert int(slowed.headers["Retry-After"]) >= 1

    async def failures(session):  # type: ignore[no-untyped-def]
        rows = await session.execute(select(login_attempts.c.key, login_attempts.c.failures))
        return {row.key.split(":")[0]: row.failures for row in rows if row.key.startswith("email")}

    # The waits grow with every failure and end in a lockout.
    async def lock(session):  # type: ignore[no-untyped-def]
        from sqlalchemy import update

        await session.execute(update(login_attempts).values(locked_until=None))
        from vitasync_fhir.db import mark_written

        mark_written(session)

    for _ in range(settings.login_lock_after):
        run(lock)
        api.post("/api/auth/login", json={"email": user.email, "password": "wrong password!"})
    locked = api.post("/api/auth/login", json={"email": user.email, "password": PASSWORD})
    assert locked.status_code == 429
    assert int(locked.headers["Retry-After"]) > settings.login_lock_seconds - 60
    ghost = api.post(
        "/api/auth/login", json={"email": "ghost2@example.org", "password": "wrong password!"}
    )
    assert ghost.status_code == 429  # the address is locked too, after this many failures


def test_admins_manage_accounts(api: TestClient, make_user) -> None:  # type: ignore[no-untyped-def]
    admin = make_user(role="admin")
    doctor = make_user(role="doctor")
    admin_token = login(api, admin.email)["access_token"]
    doctor_token = login(api, doctor.email)["access_token"]
    body = {
        "email": "new.nurse@example.org",
        "password": PASSWORD,
        "role": "nurse",
        "family": "Nightingale",
    }
    assert api.post("/api/auth/users", json=body, headers=bearer(doctor_token)).status_code == 403
    made = api.post("/api/auth/users", json=body, headers=bearer(admin_token))
    assert made.status_code == 201
    assert made.json()["fhirUser"].startswith("Practitioner/")
    listed = api.get("/api/auth/users", headers=bearer(admin_token))
    assert "new.nurse@example.org" in {u["email"] for u in listed.json()["users"]}
    assert login(api, "new.nurse@example.org")["access_token"]


def test_logins_are_audited(api: TestClient, make_user, run) -> None:  # type: ignore[no-untyped-def]
    from vitasync_fhir.fhir.tables import resources

    user = make_user(role="patient")
    api.post("/api/auth/login", json={"email": user.email, "password": "wrong password!"})
    login(api, user.email)

    async def events(session):  # type: ignore[no-untyped-def]
        import orjson

        rows = await session.execute(
            select(resources.c.content).where(resources.c.resource_type == "AuditEvent")
        )
        return [orjson.loads(row.content) for row in rows]

    found = run(events)
    outcomes = sorted(e["outcome"] for e in found)
    assert outcomes == ["0", "4"]
    assert all(e["agent"][0]["who"] == {"reference": user.fhir_user} for e in found)
    assert all(e["agent"][0]["network"]["address"] == "testclient" for e in found)


def test_nul_in_account_text_is_refused_up_front(api: TestClient) -> None:
    """PostgreSQL text cannot hold NUL: every account field refuses it before any SQL runs."""
    bodies = {
        "/api/auth/password-reset": {"email": "a\u0000b@example.org"},
        "/api/auth/login": {"email": "a\u0000b@example.org", "password": PASSWORD},
        "/api/auth/register": {"email": "jane@example.org", "password": PASSWORD, "family": "\x00"},
    }
    for path, body in bodies.items():
        answer = api.post(path, json=body)
        assert answer.status_code == 422, (path, answer.text)
        assert set(answer.json()) == {"error", "detail"}


def test_nul_that_reaches_the_database_is_a_400_not_a_500(api: TestClient) -> None:
    """The last line: a NUL that some edge let through to PostgreSQL is the caller's error (here
    an OAuth client id, looked up as given). SQLite stores NUL, and finds no such client."""
    answer = api.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": "a\x00b", "client_secret": "x"},
    )
    assert 400 <= answer.status_code < 500, answer.text
