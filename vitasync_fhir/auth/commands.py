"""`vitasync-fhir create-user` and `vitasync-fhir create-client` (registered in cli.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import typer
from joserfc.jwk import ECKey, RSAKey
from sqlalchemy.ext.asyncio import AsyncSession

from vitasync_fhir.auth import accounts, oauth
from vitasync_fhir.auth.accounts import AccountError
from vitasync_fhir.config import Settings
from vitasync_fhir.db import Database


def _run(work: Callable[[AsyncSession], Awaitable[object]]) -> object:
    async def main() -> object:
        database = Database(Settings())
        try:
            return await database.run(work)
        finally:
            await database.dispose()

    return asyncio.run(main())


def create_user(
    email: str = typer.Option(..., help="Sign-in e-mail address"),
    password: str = typer.Option(..., help="At least 10 characters"),
    role: str = typer.Option(..., help="admin, doctor, nurse, patient or pharmacist"),
    given: str | None = typer.Option(None, help="Given name for the Patient/Practitioner"),
    family: str | None = typer.Option(None, help="Family name for the Patient/Practitioner"),
    fhir_id: str | None = typer.Option(None, help="Link an existing Patient/Practitioner id"),
) -> None:
    """Create a verified account (and its Patient or Practitioner resource)."""

    async def work(session: AsyncSession) -> accounts.User:
        return await accounts.create_user(
            session,
            email=email,
            password=password,
            role=role,
            verified=True,
            given=given,
            family=family,
            fhir_id=fhir_id,
        )

    try:
        user = _run(work)
    except AccountError as error:
        typer.echo(f"error: {error.message}", err=True)
        raise typer.Exit(1) from None
    assert isinstance(user, accounts.User)
    typer.echo(json.dumps(user.public()))


def public_jwks(*, jwks_file: Path | None, public_key_file: Path | None) -> dict | None:
    """A JWKS from a JWKS file, or from a PEM public key (RSA or EC)."""
    if jwks_file is not None:
        return json.loads(jwks_file.read_text())
    if public_key_file is None:
        return None
    pem = public_key_file.read_bytes()
    for kind in (RSAKey, ECKey):
        try:
            key = kind.import_key(pem)
        except (ValueError, TypeError):
            continue
        if key.is_private:
            raise ValueError("Give the public key, not the private key")
        return {"keys": [{**key.as_dict(private=False), "kid": key.thumbprint()}]}
    raise ValueError("The key file holds no RSA or EC public key in PEM")


def create_client(
    name: str = typer.Option(..., help="Shown on the consent page"),
    scope: str = typer.Option(
        ...,
        help="Most this client may be granted, e.g. 'openid launch/patient patient/*.rs'",
    ),
    redirect_uri: list[str] = typer.Option([], help="Registered redirect URI (repeatable)"),
    jwks_file: Path | None = typer.Option(None, help="JWKS (JSON) of the client's public keys"),
    jwks_uri: str | None = typer.Option(
        None, help="Or the https URL where the client publishes its JWKS (fetched when needed)"
    ),
    public_key_file: Path | None = typer.Option(None, help="PEM public key of the client"),
    role: str | None = typer.Option(
        None, help="Backend services: the role bounding system/ scopes"
    ),
    client_id: str | None = typer.Option(None, help="Choose the client id (default: a UUID)"),
) -> None:
    """Register an OAuth client: a SMART app (redirect URIs) or a backend service (key + role)."""
    try:
        jwks = public_jwks(jwks_file=jwks_file, public_key_file=public_key_file)

        async def work(session: AsyncSession) -> oauth.Client:
            return await oauth.register_client(
                session,
                name=name,
                scope=scope,
                redirect_uris=redirect_uri,
                jwks=jwks,
                jwks_uri=jwks_uri,
                role=role,
                client_id=client_id,
            )

        client = _run(work)
    except (ValueError, OSError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    assert isinstance(client, oauth.Client)
    typer.echo(
        json.dumps(
            {
                "client_id": client.client_id,
                "token_endpoint_auth_method": client.auth_method,
                "scope": client.scope,
                "grant_types": list(client.grant_types),
                "redirect_uris": list(client.redirect_uris),
                "role": client.role,
            }
        )
    )
