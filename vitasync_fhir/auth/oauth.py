"""The OAuth2 authorization server with SMART on FHIR: clients, codes, the token endpoint.

Built on Authlib's pieces rather than its framework-agnostic `AuthorizationServer`: that server's
grants call the storage synchronously, and our storage is async SQLAlchemy. So the endpoints are
written here, with Authlib's RFC 6749 errors, its RFC 7636 PKCE functions, and its JOSE (joserfc)
for every JWT, including RFC 7523 client assertions checked as SMART Backend Services require.
Nothing here knows about HTTP.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from authlib.oauth2.rfc6749.errors import (
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
    UnauthorizedClientError,
    UnsupportedGrantTypeError,
    UnsupportedResponseTypeError,
)
from authlib.oauth2.rfc7636.challenge import (
    CODE_CHALLENGE_PATTERN,
    CODE_VERIFIER_PATTERN,
    compare_s256_code_challenge,
)
from joserfc import jws, jwt
from joserfc.errors import JoseError
from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from vitasync_fhir.auth import accounts, client_keys, policy, tokens
from vitasync_fhir.auth import scopes as smart
from vitasync_fhir.auth.accounts import AccountError, User
from vitasync_fhir.auth.tables import (
    authorization_codes,
    oauth_clients,
    refresh_tokens,
    used_assertions,
)
from vitasync_fhir.config import Settings
from vitasync_fhir.db import Database, mark_written

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# SMART Backend Services: servers SHALL support RS384 and ES384; RS256 and ES256 are also taken.
ASSERTION_ALGORITHMS = ["RS384", "ES384", "RS256", "ES256"]
ASSERTION_MAX_SECONDS = 300  # an assertion's exp at most five minutes ahead
CONSENT_TYPE = "vitasync-authz+jwt"
CONSENT_SECONDS = 600


def endpoints(settings: Settings) -> dict[str, str]:
    base = tokens.issuer(settings)
    return {
        "issuer": base,
        "authorization_endpoint": f"{base}/oauth2/authorize",
        "token_endpoint": f"{base}/oauth2/token",
        "revocation_endpoint": f"{base}/oauth2/revoke",
        "introspection_endpoint": f"{base}/oauth2/introspect",
        "jwks_uri": f"{base}/.well-known/jwks.json",
    }


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- clients ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Client:
    client_id: str
    name: str
    auth_method: str  # none | private_key_jwt
    redirect_uris: tuple[str, ...]
    scope: str
    grant_types: tuple[str, ...]
    jwks: dict | None
    role: str | None
    active: bool
    jwks_uri: str | None = None

    @property
    def allowed(self) -> smart.Requested:
        return smart.parse(self.scope)


def _client(row: object) -> Client:
    return Client(
        row.client_id,
        row.name,
        row.auth_method,
        tuple(json.loads(row.redirect_uris)),
        row.scope,
        tuple(json.loads(row.grant_types)),
        json.loads(row.jwks) if row.jwks else None,
        row.role,
        row.active,
        row.jwks_uri,
    )


async def get_client(session: AsyncSession, client_id: str) -> Client | None:
    row = (
        await session.execute(select(oauth_clients).where(oauth_clients.c.client_id == client_id))
    ).first()
    return _client(row) if row else None


async def register_client(
    session: AsyncSession,
    *,
    name: str,
    scope: str,
    redirect_uris: list[str] | None = None,
    jwks: dict | None = None,
    jwks_uri: str | None = None,
    role: str | None = None,
    client_id: str | None = None,
) -> Client:
    """Register a SMART app (redirect URIs; public, or confidential with its keys) or a backend
    service (its keys and the role whose ceiling bounds its system/ scopes). Keys are a JWKS
    given inline or the JWK Set URL that publishes them."""
    redirect_uris = list(redirect_uris or [])
    requested = smart.parse(scope)
    system = any(s.context == "system" for s in requested.resources)
    if not requested.resources and not requested.other:
        raise ValueError("The client must be allowed some scopes")
    for uri in redirect_uris:
        if not uri.startswith(("https://", "http://127.0.0.1", "http://localhost")) or "#" in uri:
            raise ValueError(f"Redirect URI {uri!r} must be https (or loopback http), no fragment")
    if jwks is not None and jwks_uri is not None:
        raise ValueError("Register the keys one way: a JWKS or a JWKS URL")
    if jwks is not None:
        client_keys.check_jwks(jwks)
    if jwks_uri is not None:
        client_keys.check_jwks_uri(jwks_uri)
    keyed = jwks is not None or jwks_uri is not None
    if system:
        if not keyed or role is None:
            raise ValueError("A backend service needs its keys (a JWKS or its URL) and a role")
        if role not in policy.STAFF:
            raise ValueError(
                f"A backend service's role is one of {', '.join(sorted(policy.STAFF))}"
            )
    elif role is not None:
        raise ValueError("Only a backend service (system/ scopes) has a role")
    if not system and not redirect_uris:
        raise ValueError("An app needs at least one redirect URI")
    grants = []
    if redirect_uris:
        grants += ["authorization_code", "refresh_token"]
    if system:
        grants.append("client_credentials")
    client = Client(
        client_id or str(uuid.uuid4()),
        name,
        "private_key_jwt" if keyed else "none",
        tuple(redirect_uris),
        requested.text(),
        tuple(grants),
        jwks,
        role,
        True,
        jwks_uri,
    )
    await session.execute(
        oauth_clients.insert().values(
            client_id=client.client_id,
            name=name,
            auth_method=client.auth_method,
            redirect_uris=json.dumps(redirect_uris),
            scope=client.scope,
            grant_types=json.dumps(grants),
            jwks=json.dumps(jwks) if jwks else None,
            jwks_uri=jwks_uri,
            role=role,
            active=True,
            created_at=_now(),
        )
    )
    mark_written(session)
    return client


# -- client authentication at the token, revocation and introspection endpoints ------------------


async def authenticate_client(
    session: AsyncSession, database: Database, settings: Settings, form: dict, *, endpoint: str
) -> Client:
    """The client making this request: by a signed assertion, or a public client by its id."""
    assertion_type = form.get("client_assertion_type")
    assertion = form.get("client_assertion")
    if assertion_type or assertion:
        if assertion_type != ASSERTION_TYPE or not assertion:
            raise InvalidClientError(description="Unsupported client assertion", status_code=401)
        client = await verify_assertion(session, database, settings, assertion, endpoint=endpoint)
        if form.get("client_id") and form["client_id"] != client.client_id:
            # RFC 7521 4.2 and SMART: a client_id sent must be the assertion's issuer.
            raise InvalidClientError(
                description="client_id is not the client the assertion identifies",
                status_code=401,
            )
        return client
    client_id = form.get("client_id")
    client = await get_client(session, client_id) if client_id else None
    if client is None or not client.active:
        raise InvalidClientError(description="The client is not known", status_code=401)
    if client.auth_method != "none":
        raise InvalidClientError(description="This client must authenticate", status_code=401)
    return client


async def verify_assertion(
    session: AsyncSession, database: Database, settings: Settings, assertion: str, *, endpoint: str
) -> Client:
    """RFC 7523 client authentication as SMART Backend Services profile it: iss = sub = client,
    aud = the token endpoint (or the endpoint called), exp at most 5 minutes ahead, and a `jti`
    never seen before from this client."""
    try:
        compact = jws.extract_compact(assertion.encode())
        header, client_id = compact.headers(), json.loads(compact.payload)["iss"]
    except (JoseError, ValueError, KeyError, TypeError):
        raise InvalidClientError(
            description="The client assertion is not a JWT", status_code=401
        ) from None
    client = await get_client(session, client_id) if isinstance(client_id, str) else None
    if client is None or not client.active or client.auth_method != "private_key_jwt":
        raise InvalidClientError(description="The client is not known", status_code=401)
    try:
        keys = await client_keys.signing_keys(header, jwks=client.jwks, jwks_uri=client.jwks_uri)
        decoded = jwt.decode(assertion, keys, algorithms=ASSERTION_ALGORITHMS)
        audiences = sorted({endpoints(settings)["token_endpoint"], endpoint})
        jwt.JWTClaimsRegistry(
            leeway=tokens.LEEWAY_SECONDS,
            iss={"essential": True, "value": client.client_id},
            sub={"essential": True, "value": client.client_id},
            aud={"essential": True, "values": audiences},
            exp={"essential": True},
            jti={"essential": True},
        ).validate(decoded.claims)
    except (JoseError, ValueError, TypeError) as error:
        detail = getattr(error, "description", None) or str(error) or error.__class__.__name__
        raise InvalidClientError(
            description=f"The client assertion is not valid: {detail}", status_code=401
        ) from None
    claims = decoded.claims
    if claims["exp"] > time.time() + ASSERTION_MAX_SECONDS + tokens.LEEWAY_SECONDS:
        raise InvalidClientError(description="The client assertion lives too long", status_code=401)
    jti = str(claims["jti"])[:255]
    fresh = await database.run(lambda s: _first_use(s, client.client_id, jti, int(claims["exp"])))
    if not fresh:
        raise InvalidClientError(
            description="The client assertion was already used", status_code=401
        )
    return client


async def _first_use(session: AsyncSession, client_id: str, jti: str, exp: int) -> bool:
    insert = postgresql.insert if session.bind.dialect.name == "postgresql" else sqlite.insert
    result = await session.execute(
        insert(used_assertions)
        .values(client_id=client_id, jti=jti, expires_at=datetime.fromtimestamp(exp, UTC))
        .on_conflict_do_nothing(index_elements=["client_id", "jti"])
        .returning(used_assertions.c.jti)
    )
    mark_written(session)
    return result.first() is not None  # rowcount is not reliable for INSERT .. ON CONFLICT


# -- the authorization request --------------------------------------------------------------------


class NotRedirectable(Exception):
    """An authorization request whose error may not go back to the redirect URI (unknown client,
    unregistered redirect URI): shown to the user instead."""


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    client: Client
    redirect_uri: str
    scope: str
    state: str | None
    code_challenge: str
    nonce: str | None

    def params(self) -> dict[str, str]:
        """The request as the query parameters that make it again."""
        values = {
            "response_type": "code",
            "client_id": self.client.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": self.scope,
            "code_challenge": self.code_challenge,
            "code_challenge_method": "S256",
        }
        if self.state:
            values["state"] = self.state
        if self.nonce:
            values["nonce"] = self.nonce
        return values


class RedirectError(Exception):
    def __init__(self, error: OAuth2Error, redirect_uri: str, state: str | None) -> None:
        super().__init__(error.description)
        self.error = error
        self.redirect_uri = redirect_uri
        self.state = state


async def check_authorization_request(
    session: AsyncSession, settings: Settings, params: dict[str, str]
) -> AuthorizationRequest:
    client_id = params.get("client_id") or ""
    client = await get_client(session, client_id) if client_id else None
    if client is None or not client.active:
        raise NotRedirectable("The application is not registered here")
    redirect_uri = params.get("redirect_uri") or ""
    if redirect_uri not in client.redirect_uris:
        raise NotRedirectable("The redirect URI is not registered for this application")
    state = params.get("state")

    def refuse(error: OAuth2Error) -> RedirectError:
        return RedirectError(error, redirect_uri, state)

    if params.get("response_type") != "code":
        raise refuse(UnsupportedResponseTypeError(params.get("response_type")))
    if "authorization_code" not in client.grant_types:
        raise refuse(UnauthorizedClientError(description="This client may not use codes"))
    challenge = params.get("code_challenge") or ""
    if params.get("code_challenge_method") != "S256" or not CODE_CHALLENGE_PATTERN.match(challenge):
        raise refuse(
            InvalidRequestError(description="PKCE with code_challenge_method S256 is required")
        )
    if params.get("aud", "").rstrip("/") != settings.fhir_base:
        raise refuse(InvalidRequestError(description=f"aud must be {settings.fhir_base}"))
    requested = smart.parse(params.get("scope"))
    allowed = client.allowed
    resources = smart.intersect(
        smart.with_context(requested.resources, ["patient", "user"]), allowed.resources
    )
    other = requested.other & allowed.other
    if not resources and not other:
        raise refuse(InvalidScopeError(description="None of the requested scopes may be granted"))
    scope = smart.as_asked(smart.Requested(resources, other), params.get("scope"))
    return AuthorizationRequest(client, redirect_uri, scope, state, challenge, params.get("nonce"))


def grant_for(user: User, request: AuthorizationRequest, *, patient_id: str | None) -> str:
    """The scopes `user` grants the client: the request within the user's role ceiling. Patient
    scopes need a patient in context (the user's own, or the one a staff member picked)."""
    asked = smart.parse(request.scope)
    resources = smart.intersect(asked.resources, policy.ceiling(user.role, ["patient", "user"]))
    context = user.patient_id or patient_id
    other = set(asked.other)
    if context is None:
        resources = smart.with_context(resources, ["user"])
        other.discard("launch/patient")
    if "launch" in other:
        other.discard("launch")  # EHR launch is not offered
    return smart.as_asked(smart.Requested(resources, frozenset(other)), request.scope)


def consent_token(settings: Settings, user: User, request: AuthorizationRequest) -> str:
    """What the consent form carries: the signed-in user and the checked request, signed by us."""
    moment = int(time.time())
    claims = {
        "iss": tokens.issuer(settings),
        "aud": endpoints(settings)["authorization_endpoint"],
        "sub": user.id,
        "iat": moment,
        "exp": moment + CONSENT_SECONDS,
        "jti": str(uuid.uuid4()),
        "req": request.params(),
    }
    return tokens.sign(settings, claims, typ=CONSENT_TYPE)


def read_consent_token(settings: Settings, value: str) -> dict:
    """The consent form's claims: `sub` (the user), `req` (the request), `jti` and `exp`."""
    return tokens.verify(
        settings, value, audience=endpoints(settings)["authorization_endpoint"], typ=CONSENT_TYPE
    )


async def issue_code(
    session: AsyncSession,
    settings: Settings,
    user: User,
    request: AuthorizationRequest,
    *,
    scope: str,
    patient_id: str | None,
) -> str:
    code = tokens.random_token()
    await session.execute(
        authorization_codes.insert().values(
            code_hash=tokens.digest(code),
            client_id=request.client.client_id,
            user_id=user.id,
            redirect_uri=request.redirect_uri,
            scope=scope,
            code_challenge=request.code_challenge,
            nonce=request.nonce,
            patient_id=user.patient_id or patient_id,
            family=str(uuid.uuid4()),
            expires_at=_now() + timedelta(seconds=settings.authorization_code_seconds),
            used_at=None,
            access_jti=None,
        )
    )
    mark_written(session)
    return code


# -- the token endpoint -------------------------------------------------------------------------


async def token(session: AsyncSession, database: Database, settings: Settings, form: dict) -> dict:
    """The answer of the token endpoint for one grant; OAuth2Error when refused.

    Callers commit even on error: a replayed code or refresh token revokes what descends from it,
    and that must stick. Every check therefore comes before any write it would undo.
    """
    grant_type = form.get("grant_type")
    endpoint = endpoints(settings)["token_endpoint"]
    if not grant_type:
        raise InvalidRequestError(description="grant_type is required (a form-encoded body)")
    if grant_type not in ("authorization_code", "refresh_token", "client_credentials"):
        raise UnsupportedGrantTypeError(grant_type)
    client = await authenticate_client(session, database, settings, form, endpoint=endpoint)
    if grant_type not in client.grant_types:
        raise UnauthorizedClientError(description=f"This client may not use {grant_type}")
    if grant_type == "authorization_code":
        return await _code_grant(session, settings, client, form)
    if grant_type == "refresh_token":
        return await _refresh_grant(session, settings, client, form)
    return _client_credentials(settings, client, form)


async def _code_grant(
    session: AsyncSession, settings: Settings, client: Client, form: dict
) -> dict:
    code = form.get("code") or ""
    row = (
        await session.execute(
            select(authorization_codes).where(
                authorization_codes.c.code_hash == tokens.digest(code)
            )
        )
    ).first()
    if row is None or row.client_id != client.client_id:
        raise InvalidGrantError(description="The code is not valid")
    if row.used_at is not None:
        await _revoke_code_descendants(session, settings, row)
        raise InvalidGrantError(description="The code was already used")
    if _aware(row.expires_at) < _now():
        raise InvalidGrantError(description="The code has expired")
    if form.get("redirect_uri") != row.redirect_uri:
        raise InvalidGrantError(description="redirect_uri differs from the authorization request")
    verifier = form.get("code_verifier")
    if not verifier:
        raise InvalidRequestError(description="code_verifier is required (PKCE)")
    if not CODE_VERIFIER_PATTERN.match(verifier) or not compare_s256_code_challenge(
        verifier, row.code_challenge
    ):
        raise InvalidGrantError(description="code_verifier does not match the code_challenge")
    claimed = await session.execute(
        update(authorization_codes)
        .where(
            authorization_codes.c.code_hash == row.code_hash,
            authorization_codes.c.used_at.is_(None),
        )
        .values(used_at=_now())
    )
    mark_written(session)
    if claimed.rowcount != 1:
        raise InvalidGrantError(description="The code was already used")
    user = await accounts.get_user(session, row.user_id)
    if user is None or not user.active:
        raise InvalidGrantError(description="The account is no longer active")
    answer = await _user_tokens(
        session,
        settings,
        user,
        client,
        scope=row.scope,
        patient_id=row.patient_id,
        family=row.family,
        nonce=row.nonce,
    )
    await session.execute(
        update(authorization_codes)
        .where(authorization_codes.c.code_hash == row.code_hash)
        .values(access_jti=answer.pop("_jti"))
    )
    return answer


async def _revoke_code_descendants(session: AsyncSession, settings: Settings, row: object) -> None:
    """RFC 6749 4.1.2: a code used twice revokes the tokens issued from it."""
    if row.access_jti:
        await tokens.revoke(
            session, row.access_jti, int(time.time()) + settings.access_token_seconds
        )
    await accounts.revoke_family(session, settings, row.family)


async def _user_tokens(
    session: AsyncSession,
    settings: Settings,
    user: User,
    client: Client,
    *,
    scope: str,
    patient_id: str | None,
    family: str,
    nonce: str | None = None,
) -> dict:
    granted = smart.parse(scope)
    answer = await accounts.issue_pair(
        session,
        settings,
        user,
        scope=scope,
        client_id=client.client_id,
        patient_id=patient_id,
        family=family,
        with_refresh="offline_access" in granted.other,
    )
    if "openid" in granted.other:
        answer["id_token"] = tokens.issue_id_token(
            settings,
            subject=user.id,
            client_id=client.client_id,
            fhir_user=user.fhir_user if "fhirUser" in granted.other else None,
            nonce=nonce,
        )
    return answer


async def _refresh_grant(
    session: AsyncSession, settings: Settings, client: Client, form: dict
) -> dict:
    value = form.get("refresh_token") or ""
    row = (
        await session.execute(
            select(refresh_tokens).where(refresh_tokens.c.token_hash == tokens.digest(value))
        )
    ).first()
    if row is None or row.client_id != client.client_id:
        raise InvalidGrantError(description="The refresh token is not valid")
    scope = row.scope
    if form.get("scope"):
        asked = smart.parse(form["scope"])
        strange = smart.unknown(form["scope"])
        if strange:
            raise InvalidScopeError(description=f"Scopes not supported here: {' '.join(strange)}")
        if not smart.subset(asked, smart.parse(row.scope)):
            raise InvalidScopeError(description="A refresh may not widen the scopes granted")
        scope = smart.as_asked(asked, form["scope"])
    try:
        row = await accounts.use_refresh_token(session, settings, value, client_id=client.client_id)
    except AccountError as error:
        raise InvalidGrantError(description=error.message) from None
    user = await accounts.get_user(session, row.user_id)
    if user is None or not user.active:
        raise InvalidGrantError(description="The account is no longer active")
    # The role may have changed since: never more than the role allows now.
    scope = grant_ceiling(user, scope)
    answer = await _user_tokens(
        session, settings, user, client, scope=scope, patient_id=row.patient_id, family=row.family
    )
    answer.pop("_jti", None)
    return answer


def grant_ceiling(user: User, scope: str) -> str:
    asked = smart.parse(scope)
    resources = smart.intersect(asked.resources, policy.ceiling(user.role, ["patient", "user"]))
    return smart.as_asked(smart.Requested(resources, asked.other), scope)


def _client_credentials(settings: Settings, client: Client, form: dict) -> dict:
    if client.role is None:
        raise UnauthorizedClientError(description="This client is not a backend service")
    asked = smart.parse(form.get("scope"))
    wanted = smart.with_context(asked.resources, ["system"])
    granted = smart.intersect(
        smart.intersect(wanted, client.allowed.resources), policy.ceiling(client.role, ["system"])
    )
    if not granted:
        raise InvalidScopeError(description="None of the requested system scopes may be granted")
    scope = smart.as_asked(smart.Requested(granted, frozenset()), form.get("scope"))
    issued = tokens.issue_access_token(
        settings, subject=client.client_id, scope=scope, client_id=client.client_id
    )
    return {
        "access_token": issued.token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "scope": scope,
    }


# -- revocation and introspection ---------------------------------------------------------------


async def revoke(
    session: AsyncSession, settings: Settings, client: Client | None, value: str
) -> None:
    """RFC 7009: revoke a refresh token (and its family) or an access token; unknown is fine."""
    row = (
        await session.execute(
            select(refresh_tokens).where(refresh_tokens.c.token_hash == tokens.digest(value))
        )
    ).first()
    if row is not None:
        if client is None or row.client_id == client.client_id:
            await accounts.revoke_family(session, settings, row.family)
        return
    try:
        claims = tokens.decode_access_token(settings, value)
    except tokens.InvalidToken:
        return
    if client is None or claims.get("client_id") == client.client_id:
        await tokens.revoke(session, claims["jti"], claims["exp"])


async def introspect(
    session: AsyncSession, settings: Settings, client: Client | None, value: str
) -> dict:
    """RFC 7662: whether the token is live, and what it carries. A client sees only its own
    tokens; `client` None means an administrator, who sees all."""
    inactive = {"active": False}
    try:
        claims = tokens.decode_access_token(settings, value)
    except tokens.InvalidToken:
        return await _introspect_refresh(session, client, value)
    if client is not None and claims.get("client_id") != client.client_id:
        return inactive
    if await tokens.is_revoked(session, claims["jti"]):
        return inactive
    from vitasync_fhir.auth.deps import caller_for_claims

    if await caller_for_claims(session, claims) is None:
        return inactive
    answer = {"active": True, "token_type": "Bearer"}
    for name in (
        "scope",
        "client_id",
        "sub",
        "exp",
        "iat",
        "iss",
        "aud",
        "jti",
        "fhirUser",
        "patient",
    ):
        if name in claims:
            answer[name] = claims[name]
    return answer


async def _introspect_refresh(session: AsyncSession, client: Client | None, value: str) -> dict:
    row = (
        await session.execute(
            select(refresh_tokens).where(refresh_tokens.c.token_hash == tokens.digest(value))
        )
    ).first()
    if row is None or row.revoked_at is not None or _aware(row.expires_at) < _now():
        return {"active": False}
    if client is not None and row.client_id != client.client_id:
        return {"active": False}
    return {
        "active": True,
        "token_type": "refresh_token",
        "scope": row.scope,
        "client_id": row.client_id,
        "sub": row.user_id,
        "exp": int(_aware(row.expires_at).timestamp()),
    }


# -- discovery ----------------------------------------------------------------------------------

SCOPES_SUPPORTED = [
    "openid",
    "fhirUser",
    "launch/patient",
    "offline_access",
    "patient/*.rs",
    "patient/*.cruds",
    "user/*.rs",
    "user/*.cruds",
    "system/*.rs",
    "system/*.cruds",
    "patient/*.read",
    "patient/*.write",
    "user/*.read",
    "user/*.write",
    "system/*.read",
]


def smart_configuration(settings: Settings) -> dict:
    urls = endpoints(settings)
    return {
        **urls,
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "scopes_supported": SCOPES_SUPPORTED,
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": [
            "launch-standalone",
            "client-public",
            "client-confidential-asymmetric",
            "sso-openid-connect",
            "context-standalone-patient",
            "permission-offline",
            "permission-patient",
            "permission-user",
            "permission-v1",
            "permission-v2",
        ],
    }


def openid_configuration(settings: Settings) -> dict:
    urls = endpoints(settings)
    return {
        **urls,
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [tokens.ALGORITHMS[0]],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "scopes_supported": SCOPES_SUPPORTED,
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "fhirUser"],
        "code_challenge_methods_supported": ["S256"],
    }


def security_component(settings: Settings) -> dict:
    """CapabilityStatement.rest.security: the SMART service and its OAuth URIs."""
    urls = endpoints(settings)
    return {
        "cors": bool(settings.cors_origins),
        "service": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                    }
                ],
                "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
            }
        ],
        "extension": [
            {
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [
                    {"url": "authorize", "valueUri": urls["authorization_endpoint"]},
                    {"url": "token", "valueUri": urls["token_endpoint"]},
                    {"url": "revoke", "valueUri": urls["revocation_endpoint"]},
                    {"url": "introspect", "valueUri": urls["introspection_endpoint"]},
                ],
            }
        ],
    }
