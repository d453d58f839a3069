"""Access tokens and ID tokens: JWTs signed with the server's RSA key (joserfc, Authlib's JOSE).

Verification is strict: one algorithm (RS256, so `none` and HS256-with-the-public-key fail), the
`at+jwt` type (an ID token or another of our JWTs is not an access token), our issuer, the FHIR
base as audience, exp/nbf/iat with a small leeway, and a `jti`. Revocation is checked against the
denylist by the caller of `decode_access_token` (it needs the database).
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from joserfc import jwt
from joserfc.errors import JoseError
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from vitasync_fhir.auth import keys, recent
from vitasync_fhir.auth.tables import revoked_tokens
from vitasync_fhir.config import Settings
from vitasync_fhir.db import after_commit, mark_written

ALGORITHMS = [keys.ALGORITHM]
LEEWAY_SECONDS = 30
ACCESS_TYPE = "at+jwt"


class InvalidToken(Exception):
    """The token is not one of ours, or no longer valid; the message says why."""


@dataclass(frozen=True, slots=True)
class Issued:
    token: str
    jti: str
    expires_at: int
    expires_in: int


def issuer(settings: Settings) -> str:
    return settings.base_url.rstrip("/")


def random_token() -> str:
    return secrets.token_urlsafe(32)


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def issue_access_token(
    settings: Settings,
    *,
    subject: str,
    scope: str,
    client_id: str | None = None,
    fhir_user: str | None = None,
    patient: str | None = None,
    lifetime: int | None = None,
    now: int | None = None,
) -> Issued:
    precise = time.time() if now is None else float(now)
    moment = int(precise)
    lifetime = settings.access_token_seconds if lifetime is None else lifetime
    jti = str(uuid.uuid4())
    claims: dict = {
        # iat in milliseconds: a password reset refuses tokens issued before it, same second or not
        "iat_ms": int(precise * 1000),
        "iss": issuer(settings),
        "aud": settings.fhir_base,
        "sub": subject,
        "iat": moment,
        "nbf": moment,
        "exp": moment + lifetime,
        "jti": jti,
        "scope": scope,
    }
    if client_id:
        claims["client_id"] = client_id
    if fhir_user:
        claims["fhirUser"] = fhir_user
    if patient:
        claims["patient"] = patient
    token = sign(settings, claims, typ=ACCESS_TYPE)
    return Issued(token, jti, moment + lifetime, lifetime)


def sign(settings: Settings, claims: dict, *, typ: str = "JWT") -> str:
    key = keys.signing_key(settings)
    header = {"alg": keys.ALGORITHM, "kid": key.kid, "typ": typ}
    return jwt.encode(header, claims, key, algorithms=ALGORITHMS)


def verify(
    settings: Settings,
    token: str,
    *,
    audience: str,
    typ: str,
    now: int | None = None,
    essential: tuple[str, ...] = ("sub", "exp", "jti"),
) -> dict:
    """The claims of one of our JWTs of type `typ` for `audience`, or InvalidToken."""
    try:
        decoded = jwt.decode(token, keys.public_keyset(settings), algorithms=ALGORITHMS)
    except (JoseError, ValueError, TypeError) as error:
        raise InvalidToken(f"The token cannot be verified: {error.__class__.__name__}") from None
    if decoded.header.get("typ") != typ:
        raise InvalidToken("The token is not of the expected type")
    options: dict = {name: {"essential": True} for name in essential}
    options["iss"] = {"essential": True, "value": issuer(settings)}
    options["aud"] = {"essential": True, "value": audience}
    registry = jwt.JWTClaimsRegistry(
        now=int(time.time()) if now is None else now, leeway=LEEWAY_SECONDS, **options
    )
    try:
        registry.validate(decoded.claims)
    except JoseError as error:
        raise InvalidToken(f"The token is not valid: {error.description or error.error}") from None
    return dict(decoded.claims)


def decode_access_token(settings: Settings, token: str, *, now: int | None = None) -> dict:
    return verify(settings, token, audience=settings.fhir_base, typ=ACCESS_TYPE, now=now)


def issue_id_token(
    settings: Settings,
    *,
    subject: str,
    client_id: str,
    fhir_user: str | None,
    nonce: str | None,
    lifetime: int | None = None,
) -> str:
    moment = int(time.time())
    claims: dict = {
        "iss": issuer(settings),
        "aud": client_id,
        "sub": subject,
        "iat": moment,
        "exp": moment + (lifetime or settings.access_token_seconds),
    }
    if fhir_user:
        claims["fhirUser"] = fhir_user
    if nonce:
        claims["nonce"] = nonce
    return sign(settings, claims)


# -- the denylist -------------------------------------------------------------------------------


def _at(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


async def is_revoked(session: AsyncSession, jti: str) -> bool:
    found = await session.execute(select(revoked_tokens.c.jti).where(revoked_tokens.c.jti == jti))
    return found.first() is not None


async def revoke(session: AsyncSession, jti: str, expires_at: int) -> None:
    """Refuse the access token `jti` from now on (until it would have expired anyway)."""
    after_commit(session, recent.forget_all)
    if await is_revoked(session, jti):
        return
    await session.execute(
        revoked_tokens.insert().values(
            jti=jti, expires_at=_at(expires_at), revoked_at=datetime.now(UTC)
        )
    )
    mark_written(session)


async def forget_expired(session: AsyncSession) -> int:
    """Drop denylist entries whose tokens have expired by now (housekeeping)."""
    result = await session.execute(
        delete(revoked_tokens).where(revoked_tokens.c.expires_at < datetime.now(UTC))
    )
    mark_written(session)
    return result.rowcount or 0
