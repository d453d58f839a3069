"""The request dependency that turns `Authorization: Bearer <jwt>` into a `Caller`.

Any failure answers 401 with `WWW-Authenticate: Bearer`: a missing header, a token that does not
verify, a revoked `jti`, a deactivated account or client, or a token older than the account's
last password change.
"""

from __future__ import annotations

from datetime import UTC
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vitasync_fhir.auth import recent, tokens
from vitasync_fhir.auth import scopes as smart
from vitasync_fhir.auth.policy import Caller
from vitasync_fhir.auth.tables import oauth_clients, users
from vitasync_fhir.fhir.outcomes import FhirError


def unauthorized(message: str, *, error: str | None = "invalid_token") -> FhirError:
    challenge = 'Bearer realm="vitasync"'
    if error:
        challenge += f', error="{error}", error_description="{message}"'
    return FhirError(401, "login", message, headers={"WWW-Authenticate": challenge})


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


async def current_caller(request: Request) -> Caller:
    token = bearer_token(request)
    if token is None:
        raise unauthorized("Authentication is required", error=None)
    settings = request.app.state.settings
    cached = recent.get(token)
    if cached is not None:
        request.state.caller = cached
        return cached
    try:
        claims = tokens.decode_access_token(settings, token)
    except tokens.InvalidToken as error:
        raise unauthorized(str(error)) from None
    # A session of its own, closed before the route runs: on the request's session the lookup
    # kept a connection until the response, and a route that then opened its read session held
    # two at once; at 32 clients the pool ran dry with every request holding one and waiting for
    # a second, until the pool timeout answered 503.
    async with request.app.state.db.read_sessions() as session:
        if await tokens.is_revoked(session, claims["jti"]):
            raise unauthorized("The token has been revoked")
        caller = await caller_for_claims(session, claims)
    if caller is None:
        raise unauthorized("The token's account or client is no longer active")
    recent.put(token, caller, seconds=settings.auth_cache_seconds)
    request.state.caller = caller
    return caller


async def caller_for_claims(session: AsyncSession, claims: dict) -> Caller | None:
    """The Caller a verified token stands for, as the account or client is now; None if gone."""
    granted = smart.parse(claims.get("scope"))
    client_id = claims.get("client_id")
    subject = claims["sub"]
    if client_id and subject == client_id:  # a backend service, acting as itself
        row = (
            await session.execute(
                select(oauth_clients).where(oauth_clients.c.client_id == client_id)
            )
        ).first()
        if row is None or not row.active or not row.role:
            return None
        return Caller(
            role=row.role,
            scopes=smart.with_context(granted.resources, ["system"]),
            client_id=client_id,
            jti=claims["jti"],
            other_scopes=granted.other,
            expires_at=claims["exp"],
        )
    row = (await session.execute(select(users).where(users.c.id == subject))).first()
    if row is None or not row.active:
        return None
    if row.tokens_valid_after is not None:
        valid_after = row.tokens_valid_after
        if valid_after.tzinfo is None:
            valid_after = valid_after.replace(tzinfo=UTC)
        issued_ms = claims.get("iat_ms") or claims.get("iat", 0) * 1000
        if issued_ms < valid_after.timestamp() * 1000:
            return None
    fhir_user = f"{row.fhir_type}/{row.fhir_id}" if row.fhir_type and row.fhir_id else None
    patient = row.fhir_id if row.role == "patient" else claims.get("patient")
    return Caller(
        role=row.role,
        scopes=smart.with_context(granted.resources, ["patient", "user"]),
        user_id=row.id,
        fhir_user=fhir_user,
        patient_id=patient,
        client_id=client_id,
        jti=claims["jti"],
        other_scopes=granted.other,
        expires_at=claims["exp"],
    )


CallerDep = Annotated[Caller, Depends(current_caller)]
"""The authenticated caller of this request (401 with WWW-Authenticate: Bearer otherwise)."""
