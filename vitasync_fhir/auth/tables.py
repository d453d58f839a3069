"""The tables of accounts and the OAuth2 server.

Secrets are never stored: passwords as argon2 hashes, codes, refresh tokens and e-mailed links
as SHA-256 digests of random values. Access tokens are JWTs; only revoked ones are remembered, by
`jti`, until they expire.
"""

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
)

from vitasync_fhir.db import metadata

ID = 64
DIGEST = 64  # hex SHA-256

users = Table(
    "users",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("email", String(320), nullable=False, unique=True),  # stored lower-case
    Column("password_hash", String(255), nullable=False),
    Column("role", String(16), nullable=False),
    Column("verified", Boolean, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("fhir_type", String(ID), nullable=True),  # Patient or Practitioner
    Column("fhir_id", String(ID), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # Tokens issued before this moment are refused (password reset, deactivation).
    Column("tokens_valid_after", DateTime(timezone=True), nullable=True),
)

oauth_clients = Table(
    "oauth_clients",
    metadata,
    Column("client_id", String(ID), primary_key=True),
    Column("name", String(200), nullable=False),
    # "none" (public app, PKCE) or "private_key_jwt" (backend services, confidential apps)
    Column("auth_method", String(32), nullable=False),
    Column("redirect_uris", Text, nullable=False),  # JSON list
    Column("scope", Text, nullable=False),  # the most this client may ever be granted
    Column("grant_types", Text, nullable=False),  # JSON list
    Column("jwks", Text, nullable=True),  # JSON Web Key Set of its public keys
    Column("jwks_uri", String(2000), nullable=True),  # or the URL that publishes them
    # The role whose ceiling bounds a backend service's system/ scopes; None for user-facing apps.
    Column("role", String(16), nullable=True),
    Column("active", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

authorization_codes = Table(
    "oauth_authorization_codes",
    metadata,
    Column("code_hash", String(DIGEST), primary_key=True),
    Column("client_id", String(ID), ForeignKey("oauth_clients.client_id"), nullable=False),
    Column("user_id", String(ID), ForeignKey("users.id"), nullable=False),
    Column("redirect_uri", Text, nullable=False),
    Column("scope", Text, nullable=False),
    Column("code_challenge", String(128), nullable=False),
    Column("nonce", String(255), nullable=True),
    Column("patient_id", String(ID), nullable=True),  # launch context
    Column("family", String(ID), nullable=False),  # refresh tokens descending from this code
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True), nullable=True),
    Column("access_jti", String(ID), nullable=True),  # revoked if the code is replayed
)

refresh_tokens = Table(
    "oauth_refresh_tokens",
    metadata,
    Column("token_hash", String(DIGEST), primary_key=True),
    Column("family", String(ID), nullable=False),
    Column("client_id", String(ID), nullable=True),  # None for first-party /api/auth/login
    Column("user_id", String(ID), ForeignKey("users.id"), nullable=False),
    Column("scope", Text, nullable=False),
    Column("patient_id", String(ID), nullable=True),
    Column("access_jti", String(ID), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Index(None, "family"),
    Index(None, "user_id"),
)

revoked_tokens = Table(
    "oauth_revoked_tokens",
    metadata,
    Column("jti", String(ID), primary_key=True),
    Column("expires_at", DateTime(timezone=True), nullable=False),  # may be forgotten after this
    Column("revoked_at", DateTime(timezone=True), nullable=False),
)

used_assertions = Table(
    "oauth_used_assertions",
    metadata,
    Column("client_id", String(ID), primary_key=True),
    Column("jti", String(255), primary_key=True),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

account_tokens = Table(
    "account_tokens",
    metadata,
    Column("token_hash", String(DIGEST), primary_key=True),
    Column("user_id", String(ID), ForeignKey("users.id"), nullable=False),
    Column("purpose", String(16), nullable=False),  # verify-email | reset-password
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True), nullable=True),
)

login_attempts = Table(
    "login_attempts",
    metadata,
    # "email:<sha256 of the address>" or "ip:<address>"; kept whether or not the account exists
    Column("key", String(128), primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("first_failure_at", DateTime(timezone=True), nullable=False),
    Column("last_failure_at", DateTime(timezone=True), nullable=False),
    Column("locked_until", DateTime(timezone=True), nullable=True),
)
