"""The OAuth2 / SMART server over HTTP, and the attacks it must refuse, each with its status."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import uuid

import pytest
from auth_helpers import BASE_URL, FHIR_BASE, PASSWORD, REDIRECT, bearer, login, pkce, query_of
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from vitasync_fhir.auth import keys, tokens

TOKEN_URL = f"{BASE_URL}/oauth2/token"
APP_SCOPE = "openid fhirUser launch/patient offline_access patient/*.rs user/*.cruds"


@pytest.fixture
def app_client(make_client):  # type: ignore[no-untyped-def]
    return make_client(name="Growth Chart", scope=APP_SCOPE, redirect_uris=[REDIRECT])


def authorize_params(client_id: str, challenge: str | None, **extra: str) -> dict:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": "openid fhirUser launch/patient offline_access patient/*.rs",
        "state": "s-123",
        "aud": FHIR_BASE,
        "code_challenge_method": "S256",
    }
    if challenge is not None:
        params["code_challenge"] = challenge
    params.update(extra)
    return params


def signed_in_consent(api: TestClient, params: dict, email: str) -> tuple:
    """Post the sign-in form; the consent page and its transaction value."""
    consent = api.post(
        "/oauth2/authorize", data={**params, "step": "login", "email": email, "password": PASSWORD}
    )
    found = re.search(r'name="transaction" value="([^"]+)"', consent.text)
    return consent, found.group(1) if found else None


def get_code(api: TestClient, client_id: str, email: str, challenge: str, **extra: str) -> str:
    params = authorize_params(client_id, challenge, **extra)
    page = api.get("/oauth2/authorize", params=params)
    assert page.status_code == 200 and "Sign in" in page.text
    consent = api.post(
        "/oauth2/authorize", data={**params, "step": "login", "email": email, "password": PASSWORD}
    )
    assert consent.status_code == 200, consent.text
    transaction = re.search(r'name="transaction" value="([^"]+)"', consent.text).group(1)
    done = api.post(
        "/oauth2/authorize",
        data={"step": "consent", "transaction": transaction, "decision": "allow"},
        follow_redirects=False,
    )
    assert done.status_code == 303, done.text
    answer = query_of(done.headers["location"])
    assert answer["state"] == "s-123"
    return answer["code"]


def exchange(api: TestClient, client_id: str, code: str, verifier: str | None, **extra: str):  # type: ignore[no-untyped-def]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": client_id,
    }
    if verifier is not None:
        form["code_verifier"] = verifier
    form.update(extra)
    return api.post("/oauth2/token", data=form)


def test_discovery(api: TestClient) -> None:
    for path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
        config = api.get(path)
        assert config.status_code == 200
        body = config.json()
        assert body["token_endpoint"] == TOKEN_URL
        assert body["code_challenge_methods_supported"] == ["S256"]
        assert "private_key_jwt" in body["token_endpoint_auth_methods_supported"]
        assert {"launch-standalone", "client-confidential-asymmetric", "permission-v2"} <= set(
            body["capabilities"]
        )
    openid = api.get("/.well-known/openid-configuration").json()
    assert (
        openid["issuer"] == BASE_URL and openid["jwks_uri"] == f"{BASE_URL}/.well-known/jwks.json"
    )
    jwks = api.get("/.well-known/jwks.json").json()
    assert jwks["keys"][0]["kty"] == "RSA" and "d" not in jwks["keys"][0]


def test_code_flow_for_a_patient(api: TestClient, app_client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = make_user(role="patient")
    verifier, challenge = pkce()
    code = get_code(api, app_client.client_id, user.email, challenge)
    answer = exchange(api, app_client.client_id, code, verifier)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Cache-Control"] == "no-store"
    body = answer.json()
    assert body["token_type"] == "Bearer" and body["patient"] == user.fhir_id
    assert body["refresh_token"] and body["id_token"]
    assert set(body["scope"].split()) >= {"patient/Observation.rs", "launch/patient", "openid"}
    claims = tokens.decode_access_token(api.app.state.settings, body["access_token"])
    assert claims["fhirUser"] == user.fhir_user and claims["patient"] == user.fhir_id
    assert claims["client_id"] == app_client.client_id and claims["aud"] == FHIR_BASE
    id_claims = tokens.verify(
        api.app.state.settings,
        body["id_token"],
        audience=app_client.client_id,
        typ="JWT",
        essential=("sub", "exp"),
    )
    assert id_claims["fhirUser"] == user.fhir_user
    me = api.get("/api/auth/me", headers=bearer(body["access_token"]))
    assert me.status_code == 200 and me.json()["patient"] == user.fhir_id


def test_role_ceiling_bounds_what_an_app_gets(api: TestClient, app_client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = make_user(role="pharmacist")
    verifier, challenge = pkce()
    code = get_code(api, app_client.client_id, user.email, challenge, scope="user/*.cruds")
    body = exchange(api, app_client.client_id, code, verifier).json()
    granted = set(body["scope"].split())
    assert "user/MedicationDispense.crus" in granted and "user/MedicationRequest.rus" in granted
    assert not any(s.startswith(("user/Observation", "user/*")) for s in granted)


def test_reused_code_is_refused_and_revokes_its_tokens(
    api: TestClient, app_client, make_user
) -> None:  # type: ignore[no-untyped-def]
    user = make_user(role="patient")
    verifier, challenge = pkce()
    code = get_code(api, app_client.client_id, user.email, challenge)
    first = exchange(api, app_client.client_id, code, verifier)
    assert first.status_code == 200
    token = first.json()["access_token"]
    assert api.get("/api/auth/me", headers=bearer(token)).status_code == 200
    second = exchange(api, app_client.client_id, code, verifier)
    assert second.status_code == 400 and second.json()["error"] == "invalid_grant"
    assert api.get("/api/auth/me", headers=bearer(token)).status_code == 401
    refreshed = api.post(
        "/oauth2/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": first.json()["refresh_token"],
            "client_id": app_client.client_id,
        },
    )
    assert refreshed.status_code == 400


def test_missing_or_wrong_pkce_verifier(api: TestClient, app_client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = make_user(role="patient")
    verifier, challenge = pkce()
    code = get_code(api, app_client.client_id, user.email, challenge)
    missing = exchange(api, app_client.client_id, code, None)
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"
    wrong = exchange(api, app_client.client_id, code, pkce()[0])
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    assert exchange(api, app_client.client_id, code, verifier).status_code == 200


@pytest.mark.parametrize(
    "change", [{"code_challenge_method": "plain"}, {}], ids=["plain", "absent"]
)
def test_authorize_requires_s256(api: TestClient, app_client, change: dict) -> None:  # type: ignore[no-untyped-def]
    params = authorize_params(app_client.client_id, None if not change else pkce()[1], **change)
    answer = api.get("/oauth2/authorize", params=params, follow_redirects=False)
    assert answer.status_code == 303
    error = query_of(answer.headers["location"])
    assert error["error"] == "invalid_request" and error["state"] == "s-123"


def test_unregistered_redirect_uri_is_not_followed(api: TestClient, app_client) -> None:  # type: ignore[no-untyped-def]
    params = authorize_params(
        app_client.client_id, pkce()[1], redirect_uri="https://evil.example/cb"
    )
    answer = api.get("/oauth2/authorize", params=params, follow_redirects=False)
    assert answer.status_code == 400
    assert "location" not in answer.headers and "redirect URI is not registered" in answer.text
    unknown = api.get(
        "/oauth2/authorize",
        params=authorize_params("no-such-client", pkce()[1]),
        follow_redirects=False,
    )
    assert unknown.status_code == 400 and "location" not in unknown.headers


def test_wrong_aud_is_refused(api: TestClient, app_client) -> None:  # type: ignore[no-untyped-def]
    params = authorize_params(app_client.client_id, pkce()[1], aud="https://other.example/fhir")
    answer = api.get("/oauth2/authorize", params=params, follow_redirects=False)
    assert (
        answer.status_code == 303
        and query_of(answer.headers["location"])["error"] == "invalid_request"
    )


def test_wrong_password_on_the_login_page(api: TestClient, app_client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = make_user(role="patient")
    params = authorize_params(app_client.client_id, pkce()[1])
    answer = api.post(
        "/oauth2/authorize",
        data={**params, "step": "login", "email": user.email, "password": "nope nope nope"},
    )
    assert answer.status_code == 401 and "password is wrong" in answer.text
    assert answer.headers["X-Frame-Options"] == "DENY"


def test_denied_consent(api: TestClient, app_client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = make_user(role="patient")
    params = authorize_params(app_client.client_id, pkce()[1])
    consent, transaction = signed_in_consent(api, params, user.email)
    done = api.post(
        "/oauth2/authorize",
        data={"step": "consent", "transaction": transaction, "decision": "deny"},
        follow_redirects=False,
    )
    assert (
        done.status_code == 303 and query_of(done.headers["location"])["error"] == "access_denied"
    )
    forged = api.post(
        "/oauth2/authorize", data={"step": "consent", "transaction": "x.y.z", "decision": "allow"}
    )
    assert forged.status_code == 400


def app_tokens(api: TestClient, client_id: str, email: str, **extra: str) -> dict:
    """The token response of a whole code flow: sign-in, consent, code exchange."""
    verifier, challenge = pkce()
    return exchange(
        api, client_id, get_code(api, client_id, email, challenge, **extra), verifier
    ).json()


def refresh_form(api: TestClient, client_id: str, email: str) -> dict:
    """The token request that refreshes a patient's grant of patient/Observation.rs."""
    scope = "launch/patient offline_access patient/Observation.rs"
    body = app_tokens(api, client_id, email, scope=scope)
    return {
        "grant_type": "refresh_token",
        "refresh_token": body["refresh_token"],
        "client_id": client_id,
    }


def test_scope_escalation_on_refresh(api: TestClient, app_client, make_user) -> None:  # type: ignore[no-untyped-def]
    form = refresh_form(api, app_client.client_id, make_user(role="patient").email)
    escalated = api.post(
        "/oauth2/token", data={**form, "scope": "patient/Observation.rs patient/Condition.rs"}
    )
    assert escalated.status_code == 400 and escalated.json()["error"] == "invalid_scope"
    widened = api.post("/oauth2/token", data={**form, "scope": "patient/Observation.rus"})
    assert widened.status_code == 400 and widened.json()["error"] == "invalid_scope"
    narrower = api.post("/oauth2/token", data={**form, "scope": "patient/Observation.r"})
    assert narrower.status_code == 200 and narrower.json()["scope"] == "patient/Observation.r"
    other_client = api.post("/oauth2/token", data={**form, "client_id": "someone-else"})
    assert other_client.status_code == 401


def test_revoke_and_introspect(api: TestClient, app_client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = make_user(role="patient")
    admin = make_user(role="admin")
    body = app_tokens(api, app_client.client_id, user.email)
    client_form = {"client_id": app_client.client_id}
    live = api.post(
        "/oauth2/introspect", data={**client_form, "token": body["access_token"]}
    ).json()
    assert live["active"] is True and live["patient"] == user.fhir_id and live["sub"] == user.id
    admin_token = login(api, admin.email)["access_token"]
    seen = api.post(
        "/oauth2/introspect", data={"token": body["access_token"]}, headers=bearer(admin_token)
    )
    assert seen.json()["active"] is True
    user_token = login(api, user.email)["access_token"]
    refused = api.post(
        "/oauth2/introspect", data={"token": body["access_token"]}, headers=bearer(user_token)
    )
    assert refused.status_code == 401

    revoked = api.post("/oauth2/revoke", data={**client_form, "token": body["access_token"]})
    assert revoked.status_code == 200
    assert api.get("/api/auth/me", headers=bearer(body["access_token"])).status_code == 401
    assert api.post(
        "/oauth2/introspect", data={**client_form, "token": body["access_token"]}
    ).json() == {"active": False}
    assert (
        api.post("/oauth2/revoke", data={**client_form, "token": body["refresh_token"]}).status_code
        == 200
    )
    again = api.post(
        "/oauth2/token",
        data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"], **client_form},
    )
    assert again.status_code == 400


def test_unsupported_grant(api: TestClient, app_client) -> None:  # type: ignore[no-untyped-def]
    answer = api.post(
        "/oauth2/token", data={"grant_type": "password", "client_id": app_client.client_id}
    )
    assert answer.status_code == 400 and answer.json()["error"] == "unsupported_grant_type"


# -- forged bearer tokens, over HTTP -------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(user_id: str, **changes: object) -> dict:
    now = int(time.time())
    claims = {
        "iss": BASE_URL,
        "aud": FHIR_BASE,
        "sub": user_id,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": str(uuid.uuid4()),
        "scope": "user/*.cruds",
    }
    claims.update(changes)
    return claims


def forged(api: TestClient, user_id: str, attack: str) -> str:
    settings = api.app.state.settings
    key = keys.signing_key(settings)
    if attack == "alg-none":
        head = b64(json.dumps({"alg": "none", "typ": "at+jwt"}).encode())
        return f"{head}.{b64(json.dumps(_claims(user_id)).encode())}."
    if attack == "hs256-public-key":
        head = b64(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": key.kid}).encode())
        unsigned = f"{head}.{b64(json.dumps(_claims(user_id)).encode())}"
        mac = hmac.new(key.as_pem(private=False), unsigned.encode(), hashlib.sha256).digest()
        return f"{unsigned}.{b64(mac)}"
    if attack == "tampered":
        good = tokens.sign(settings, _claims(user_id, scope="user/Patient.r"), typ="at+jwt")
        head, _, sig = good.split(".")
        return f"{head}.{b64(json.dumps(_claims(user_id)).encode())}.{sig}"
    changes = {
        "expired": {
            "exp": int(time.time()) - 120,
            "iat": int(time.time()) - 1000,
            "nbf": int(time.time()) - 1000,
        },
        "not-yet-valid": {"nbf": int(time.time()) + 3600},
        "wrong-iss": {"iss": "https://evil.example"},
        "wrong-aud": {"aud": "https://other.example/fhir"},
    }[attack]
    return tokens.sign(settings, _claims(user_id, **changes), typ="at+jwt")


@pytest.mark.parametrize(
    "attack",
    [
        "alg-none",
        "hs256-public-key",
        "expired",
        "not-yet-valid",
        "wrong-iss",
        "wrong-aud",
        "tampered",
    ],
)
def test_forged_tokens_are_refused(api: TestClient, make_user, attack: str) -> None:  # type: ignore[no-untyped-def]
    user = make_user(role="admin")
    control = tokens.sign(api.app.state.settings, _claims(user.id), typ="at+jwt")
    assert api.get("/api/auth/me", headers=bearer(control)).status_code == 200
    answer = api.get("/api/auth/me", headers=bearer(forged(api, user.id, attack)))
    assert answer.status_code == 401
    assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]


# -- SMART Backend Services ----------------------------------------------------------------------


def assertion(
    key: RSAKey | ECKey,
    client_id: str,
    *,
    alg: str = "RS384",
    header: dict | None = None,
    **changes: object,
) -> str:
    """A client assertion; `header` replaces the usual one ({alg, kid, typ})."""
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": TOKEN_URL,
        "exp": now + 240,
        "jti": str(uuid.uuid4()),
    }
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not None}
    header = header or {"alg": alg, "kid": key.kid, "typ": "JWT"}
    return jwt.encode(header, claims, key, algorithms=[header["alg"]])


def client_credentials(api: TestClient, signed: str, scope: str = "system/*.rs"):  # type: ignore[no-untyped-def]
    return api.post(
        "/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": signed,
        },
    )


@pytest.fixture
def partner(make_client):  # type: ignore[no-untyped-def]
    key = RSAKey.generate_key(2048, parameters={"kid": "partner-1"})
    client = make_client(
        name="Partner EHR",
        scope="system/*.rs",
        role="doctor",
        jwks={"keys": [key.as_dict(private=False)]},
    )
    return client, key


def test_backend_service_gets_a_system_token(api: TestClient, partner) -> None:  # type: ignore[no-untyped-def]
    client, key = partner
    answer = client_credentials(api, assertion(key, client.client_id))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert "refresh_token" not in body and body["token_type"] == "Bearer"
    granted = body["scope"].split()
    assert "system/Observation.rs" in granted and "system/Patient.rs" in granted
    assert not any(s.startswith("system/AuditEvent") for s in granted)  # not within the doctor role
    me = api.get("/api/auth/me", headers=bearer(body["access_token"]))
    assert (
        me.status_code == 200
        and me.json()["client_id"] == client.client_id
        and me.json()["role"] == "doctor"
    )
    wider = client_credentials(api, assertion(key, client.client_id), scope="system/*.cruds")
    assert wider.status_code == 200 and "system/Observation.rs" in wider.json()["scope"].split()
    assert not any("c" in s.split(".")[1] for s in wider.json()["scope"].split())


def test_es384_assertion(api: TestClient, make_client) -> None:  # type: ignore[no-untyped-def]
    key = ECKey.generate_key("P-384", parameters={"kid": "ec-1"})
    client = make_client(
        name="Pharmacy",
        scope="system/*.rs",
        role="pharmacist",
        jwks={"keys": [key.as_dict(private=False)]},
    )
    answer = client_credentials(api, assertion(key, client.client_id, alg="ES384"))
    assert answer.status_code == 200, answer.text
    assert "system/MedicationRequest.rs" in answer.json()["scope"].split()


def test_replayed_assertion_jti_is_refused(api: TestClient, partner) -> None:  # type: ignore[no-untyped-def]
    client, key = partner
    signed = assertion(key, client.client_id)
    assert client_credentials(api, signed).status_code == 200
    replay = client_credentials(api, signed)
    assert replay.status_code == 401 and replay.json()["error"] == "invalid_client"


@pytest.mark.parametrize(
    "changes",
    [
        {"aud": f"{BASE_URL}/somewhere-else"},
        {"exp": int(time.time()) - 120},
        {"exp": int(time.time()) + 3600},
        {"jti": None},
        {"sub": "another-client"},
    ],
    ids=["wrong-aud", "expired", "too-long", "no-jti", "sub-differs"],
)
def test_bad_assertions_are_refused(api: TestClient, partner, changes: dict) -> None:  # type: ignore[no-untyped-def]
    client, key = partner
    answer = client_credentials(api, assertion(key, client.client_id, **changes))
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_client"


def test_assertion_signed_by_another_key_or_hs256(api: TestClient, partner) -> None:  # type: ignore[no-untyped-def]
    client, key = partner
    stranger = RSAKey.generate_key(2048, parameters={"kid": "partner-1"})
    assert client_credentials(api, assertion(stranger, client.client_id)).status_code == 401
    head = b64(json.dumps({"alg": "HS256", "kid": "partner-1"}).encode())
    body = b64(
        json.dumps(
            {
                "iss": client.client_id,
                "sub": client.client_id,
                "aud": TOKEN_URL,
                "exp": int(time.time()) + 200,
                "jti": "x",
            }
        ).encode()
    )
    mac = hmac.new(key.as_pem(private=False), f"{head}.{body}".encode(), hashlib.sha256).digest()
    assert client_credentials(api, f"{head}.{body}.{b64(mac)}").status_code == 401


def test_public_clients_cannot_use_client_credentials(api: TestClient, app_client) -> None:  # type: ignore[no-untyped-def]
    answer = api.post(
        "/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": app_client.client_id,
            "scope": "system/*.rs",
        },
    )
    assert answer.status_code == 400 and answer.json()["error"] == "unauthorized_client"


# -- what the review of 2026-11-29 found (each fails on the code before it) -----------------------


def test_an_apps_admin_token_may_not_introspect_or_revoke_others(
    api: TestClient, app_client, make_user
) -> None:  # type: ignore[no-untyped-def]
    patient, admin = make_user(role="patient"), make_user(role="admin")
    mine = app_tokens(api, app_client.client_id, patient.email)
    app_admin = app_tokens(api, app_client.client_id, admin.email, scope="openid")
    for endpoint in ("/oauth2/introspect", "/oauth2/revoke"):
        refused = api.post(
            endpoint,
            data={"token": mine["access_token"]},
            headers=bearer(app_admin["access_token"]),
        )
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
        assert refused.headers["WWW-Authenticate"].startswith('Bearer realm="VitaSync FHIR"')
    assert api.get("/api/auth/me", headers=bearer(mine["access_token"])).status_code == 200
    own = login(api, admin.email)["access_token"]  # the server's own sign-in still may
    seen = api.post("/oauth2/introspect", data={"token": mine["access_token"]}, headers=bearer(own))
    assert seen.json()["active"] is True


def test_client_id_must_be_the_assertions_client(api: TestClient, partner, app_client) -> None:  # type: ignore[no-untyped-def]
    client, key = partner
    form = {
        "grant_type": "client_credentials",
        "scope": "system/*.rs",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
    }
    other = api.post(
        "/oauth2/token",
        data={
            **form,
            "client_assertion": assertion(key, client.client_id),
            "client_id": app_client.client_id,
        },
    )
    assert other.status_code == 401 and other.json()["error"] == "invalid_client"
    same = api.post(
        "/oauth2/token",
        data={
            **form,
            "client_assertion": assertion(key, client.client_id),
            "client_id": client.client_id,
        },
    )
    assert same.status_code == 200, same.text
    both = api.post(
        "/oauth2/token",
        data={**form, "client_assertion": assertion(key, client.client_id)},
        headers={"Authorization": "Basic eDp5"},
    )
    assert both.status_code == 400 and both.json()["error"] == "invalid_request"


def test_an_assertion_needs_the_kid_of_a_registered_key_and_no_foreign_jku(
    api: TestClient, make_client
) -> None:  # type: ignore[no-untyped-def]
    key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    other = RSAKey.generate_key(2048, parameters={"kid": "k2"})
    client = make_client(
        name="Lab",
        scope="system/*.rs",
        role="doctor",
        jwks={"keys": [key.as_dict(private=False), other.as_dict(private=False)]},
    )
    cases = {
        "no kid": {"alg": "RS384"},
        "foreign jku": {"alg": "RS384", "kid": "k1", "jku": "https://evil.example/jwks.json"},
        "kid of the other key": {"alg": "RS384", "kid": "k2"},
    }
    for name, header in cases.items():
        answer = client_credentials(api, assertion(key, client.client_id, header=header))
        assert answer.status_code == 401, name
    good = client_credentials(
        api, assertion(key, client.client_id, header={"alg": "RS384", "kid": "k1"})
    )
    assert good.status_code == 200, good.text


@pytest.fixture
def jwks_server():  # type: ignore[no-untyped-def]
    """A JWK Set URL on loopback http, serving whatever `published["keys"]` holds."""
    import http.server
    import threading

    published: dict = {"keys": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = json.dumps(published).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json", published
    server.shutdown()


def test_a_client_registered_by_jwks_url_signs_with_a_published_key(
    api: TestClient, make_client, jwks_server, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from vitasync_fhir.auth import client_keys

    url, published = jwks_server
    first = RSAKey.generate_key(2048, parameters={"kid": "2026-1"})
    published["keys"] = [first.as_dict(private=False)]
    client = make_client(
        name="Pharmacy chain", scope="system/*.rs", role="pharmacist", jwks_uri=url
    )
    answer = client_credentials(
        api, assertion(first, client.client_id, header={"alg": "RS384", "kid": "2026-1"})
    )
    assert answer.status_code == 200, answer.text
    with_jku = assertion(
        first, client.client_id, header={"alg": "RS384", "kid": "2026-1", "jku": url}
    )
    assert client_credentials(api, with_jku).status_code == 200
    # The client rotates: a new key is published; an unknown kid fetches the set again.
    monkeypatch.setattr(client_keys, "REFETCH_SECONDS", 0.0)
    second = RSAKey.generate_key(2048, parameters={"kid": "2026-2"})
    published["keys"] = [second.as_dict(private=False)]
    rotated = client_credentials(
        api, assertion(second, client.client_id, header={"alg": "RS384", "kid": "2026-2"})
    )
    assert rotated.status_code == 200, rotated.text
    stranger = RSAKey.generate_key(2048, parameters={"kid": "2026-2"})
    forged = client_credentials(
        api, assertion(stranger, client.client_id, header={"alg": "RS384", "kid": "2026-2"})
    )
    assert forged.status_code == 401
    with pytest.raises(ValueError):
        make_client(name="x", scope="system/*.rs", role="doctor", jwks_uri="http://example.org/k")


def test_refresh_with_an_unknown_scope_is_refused_and_keeps_the_grant(
    api: TestClient, app_client, make_user
) -> None:  # type: ignore[no-untyped-def]
    form = refresh_form(api, app_client.client_id, make_user(role="patient").email)
    for scope in ("bogus/scope", "patient/Observation.rs?category=laboratory offline_access"):
        refused = api.post("/oauth2/token", data={**form, "scope": scope})
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_scope", scope
    kept = api.post("/oauth2/token", data=form)
    assert kept.status_code == 200 and "patient/Observation.rs" in kept.json()["scope"].split()


def test_v1_scopes_are_granted_as_v1_and_online_access_is_not_offered(
    api: TestClient, app_client, make_user
) -> None:  # type: ignore[no-untyped-def]
    user = make_user(role="patient")
    verifier, challenge = pkce()
    code = get_code(
        api,
        app_client.client_id,
        user.email,
        challenge,
        scope="launch/patient online_access patient/Observation.read patient/*.read",
    )
    body = exchange(api, app_client.client_id, code, verifier).json()
    granted = body["scope"].split()
    assert "patient/Observation.read" in granted and "patient/Condition.read" in granted
    assert not any(s.endswith(".rs") for s in granted) and "online_access" not in granted
    assert "refresh_token" not in body
    config = api.get("/.well-known/smart-configuration").json()
    assert "permission-online" not in config["capabilities"]
    assert "online_access" not in config["scopes_supported"]


def test_malformed_oauth_requests_are_invalid_request(api: TestClient, app_client) -> None:  # type: ignore[no-untyped-def]
    for sent in (
        {"data": {"client_id": app_client.client_id}},
        {"json": {"grant_type": "client_credentials"}},
    ):
        answer = api.post("/oauth2/token", **sent)
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_request", sent
    for endpoint in ("/oauth2/revoke", "/oauth2/introspect"):
        answer = api.post(endpoint, data={"client_id": app_client.client_id})
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_request"
    basic = api.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": "Basic c3ZjMTp4"},
    )
    assert basic.status_code == 401 and basic.headers["WWW-Authenticate"].startswith("Basic ")


def test_sign_ins_on_the_authorization_page_are_audited(  # type: ignore[no-untyped-def]
    api: TestClient, app_client, make_user, run
) -> None:
    """As on /api/auth/login: a failed and a good password each leave a login AuditEvent."""
    import orjson
    from sqlalchemy import select

    from vitasync_fhir.fhir.tables import resources

    user = make_user(role="patient")
    params = authorize_params(app_client.client_id, pkce()[1])
    for password in ("nope nope nope", PASSWORD):
        api.post(
            "/oauth2/authorize",
            data={**params, "step": "login", "email": user.email, "password": password},
        )

    async def logins(session):  # type: ignore[no-untyped-def]
        query = select(resources.c.content).where(resources.c.resource_type == "AuditEvent")
        events = [orjson.loads(row.content) for row in await session.execute(query)]
        return sorted(e["outcome"] for e in events if e["subtype"][0]["code"] == "110122")

    assert run(logins) == ["0", "4"]


def test_a_consent_is_answered_once(api: TestClient, app_client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = make_user(role="patient")
    params = authorize_params(app_client.client_id, pkce()[1])
    consent, transaction = signed_in_consent(api, params, user.email)
    answer = {"step": "consent", "transaction": transaction, "decision": "allow"}
    first = api.post("/oauth2/authorize", data=answer, follow_redirects=False)
    assert first.status_code == 303 and "code" in query_of(first.headers["location"])
    again = api.post("/oauth2/authorize", data=answer, follow_redirects=False)
    assert again.status_code == 400 and "answered already" in again.text


def test_staff_name_the_patient_an_app_asks_for(api: TestClient, app_client, make_user) -> None:  # type: ignore[no-untyped-def]
    """launch/patient: the app needs a patient; a doctor who names none is asked again, not
    handed a token without the patient scopes the consent page listed."""
    doctor = make_user(role="doctor")
    params = authorize_params(
        app_client.client_id, pkce()[1], scope="openid fhirUser launch/patient patient/*.rs"
    )
    consent = api.post(
        "/oauth2/authorize",
        data={**params, "step": "login", "email": doctor.email, "password": PASSWORD},
    )
    assert re.search(r'<input id="patient" name="patient" type="text" required>', consent.text)
    transaction = re.search(r'name="transaction" value="([^"]+)"', consent.text).group(1)
    answer = {"step": "consent", "transaction": transaction, "decision": "allow", "patient": " "}
    asked = api.post("/oauth2/authorize", data=answer, follow_redirects=False)
    assert asked.status_code == 400 and "Choose the patient" in asked.text
