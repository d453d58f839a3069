"""Access tokens: what verifies and what must not (the signature and claim attacks)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import multiprocessing
import os
import stat
import time
from pathlib import Path

import pytest
from fastapi import Request
from joserfc import jwt
from joserfc.jwk import RSAKey

from vitasync_fhir.auth import keys, passwords, recent, tokens
from vitasync_fhir.auth.deps import CallerDep
from vitasync_fhir.config import Settings


@pytest.fixture
def key_settings(tmp_path: Path) -> Settings:
    return Settings(
        database_url="sqlite:///unused", base_url="http://testserver", data_dir=tmp_path / "var"
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict, claims: dict, signature: bytes = b"") -> str:
    head = b64(json.dumps(header).encode())
    body = b64(json.dumps(claims).encode())
    return f"{head}.{body}.{b64(signature)}"


def good_claims(settings: Settings, **changes: object) -> dict:
    now = int(time.time())
    claims = {
        "iss": "http://testserver",
        "aud": settings.fhir_base,
        "sub": "u1",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": "j1",
        "scope": "user/*.cruds",
    }
    claims.update(changes)
    return claims


def test_key_is_made_once_and_private(key_settings: Settings) -> None:
    first = keys.signing_key(key_settings)
    path = keys.key_path(key_settings)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert keys.signing_key(key_settings) is first
    keys._cache.clear()
    again = keys.signing_key(key_settings)
    assert again.thumbprint() == first.thumbprint()
    jwks = keys.public_jwks(key_settings)
    assert set(jwks["keys"][0]) >= {"kty", "n", "e", "kid"} and "d" not in jwks["keys"][0]


def _make_secret(path: str) -> bytes:
    return keys.persisted(Path(path), lambda: os.urandom(32))


def test_workers_starting_at_once_share_one_whole_secret(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Eight processes make the same secret at once: one wins, all read it, none half-written."""
    path = str(tmp_path / "keys" / "shared.key")
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        seen = pool.map(_make_secret, [path] * 8)
    assert len(set(seen)) == 1 and len(seen[0]) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in (tmp_path / "keys").iterdir()] == ["shared.key"]  # no drafts left


def test_issued_token_verifies(key_settings: Settings) -> None:
    issued = tokens.issue_access_token(
        key_settings, subject="u1", scope="patient/*.rs", fhir_user="Patient/p1", patient="p1"
    )
    claims = tokens.decode_access_token(key_settings, issued.token)
    assert claims["iss"] == "http://testserver"
    assert claims["aud"] == "http://testserver/fhir"
    assert claims["fhirUser"] == "Patient/p1" and claims["patient"] == "p1"
    assert claims["jti"] == issued.jti and claims["exp"] == issued.expires_at


def test_alg_none_is_refused(key_settings: Settings) -> None:
    token = forge({"alg": "none", "typ": "at+jwt"}, good_claims(key_settings))
    with pytest.raises(tokens.InvalidToken):
        tokens.decode_access_token(key_settings, token)


def test_hs256_with_the_public_key_is_refused(key_settings: Settings) -> None:
    public_pem = keys.signing_key(key_settings).as_pem(private=False)
    header = {"alg": "HS256", "typ": "at+jwt", "kid": keys.signing_key(key_settings).kid}
    unsigned = forge(header, good_claims(key_settings)).rsplit(".", 1)[0]
    signature = hmac.new(public_pem, unsigned.encode(), hashlib.sha256).digest()
    with pytest.raises(tokens.InvalidToken):
        tokens.decode_access_token(key_settings, f"{unsigned}.{b64(signature)}")


def test_another_key_is_refused(key_settings: Settings) -> None:
    stranger = RSAKey.generate_key(2048, parameters={"kid": keys.signing_key(key_settings).kid})
    token = jwt.encode(
        {"alg": "RS256", "typ": "at+jwt", "kid": stranger.kid}, good_claims(key_settings), stranger
    )
    with pytest.raises(tokens.InvalidToken):
        tokens.decode_access_token(key_settings, token)


@pytest.mark.parametrize(
    "change",
    [
        {"exp": int(time.time()) - 120},
        {"nbf": int(time.time()) + 600},
        {"iat": int(time.time()) + 600},
        {"iss": "http://evil.example"},
        {"aud": "http://testserver/other"},
        {"jti": None},
        {"exp": None},
    ],
    ids=[
        "expired",
        "not-yet-valid",
        "issued-in-future",
        "wrong-iss",
        "wrong-aud",
        "no-jti",
        "no-exp",
    ],
)
def test_bad_claims_are_refused(key_settings: Settings, change: dict) -> None:
    claims = {k: v for k, v in good_claims(key_settings, **change).items() if v is not None}
    token = tokens.sign(key_settings, claims, typ="at+jwt")
    with pytest.raises(tokens.InvalidToken):
        tokens.decode_access_token(key_settings, token)


def test_small_clock_skew_is_tolerated(key_settings: Settings) -> None:
    token = tokens.sign(
        key_settings, good_claims(key_settings, nbf=int(time.time()) + 10), typ="at+jwt"
    )
    assert tokens.decode_access_token(key_settings, token)["sub"] == "u1"


def test_tampered_payload_is_refused(key_settings: Settings) -> None:
    issued = tokens.issue_access_token(key_settings, subject="u1", scope="patient/*.rs")
    head, body, signature = issued.token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["scope"] = "user/*.cruds"
    tampered = f"{head}.{b64(json.dumps(claims).encode())}.{signature}"
    with pytest.raises(tokens.InvalidToken):
        tokens.decode_access_token(key_settings, tampered)


def test_an_id_token_is_not_an_access_token(key_settings: Settings) -> None:
    id_token = tokens.issue_id_token(
        key_settings, subject="u1", client_id="app", fhir_user=None, nonce=None
    )
    with pytest.raises(tokens.InvalidToken):
        tokens.decode_access_token(key_settings, id_token)
    wrong_type = tokens.sign(key_settings, good_claims(key_settings), typ="JWT")
    with pytest.raises(tokens.InvalidToken):
        tokens.decode_access_token(key_settings, wrong_type)


def test_passwords() -> None:
    stored = passwords.hash_password("correct horse battery")
    assert stored.startswith("$argon2id$")
    assert passwords.verify_password(stored, "correct horse battery")
    assert not passwords.verify_password(stored, "wrong horse battery")
    assert not passwords.verify_password(None, "vitasync-dummy-password")
    assert passwords.password_problem("short") is not None
    assert passwords.password_problem("long enough password") is None


def test_checking_a_token_holds_no_connection_into_the_route(app, anonymous, signed_in) -> None:  # type: ignore[no-untyped-def]
    """A route that then opens its own session must not need a second connection at once: with
    the lookup on the request's session, 32 clients ran the pool dry (each held one, waited for
    another) until the pool timeout answered 503."""

    async def held(request: Request, caller: CallerDep) -> dict:
        return {"role": caller.role, "held": request.app.state.db.engine.pool.checkedout()}

    app.router.add_api_route("/held-connections", held, methods=["GET"])
    headers = signed_in(role="doctor")
    recent.forget_all()  # the token is looked up in the database, not in the cache
    answer = anonymous.get("/held-connections", headers=headers)
    assert answer.status_code == 200
    assert answer.json() == {"role": "doctor", "held": 0}
