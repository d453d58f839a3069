"""Accounts and the OAuth2 server: users, clients, codes, tokens, denylists, sign-in attempts.

Revision ID: 0003_auth
Revises: 0002_search_index
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003_auth"
down_revision: str | None = "0002_search_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _at(name: str, *, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("verified", sa.Boolean(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("fhir_type", sa.String(64), nullable=True),
        sa.Column("fhir_id", sa.String(64), nullable=True),
        _at("created_at"),
        _at("tokens_valid_after", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("email", name="uq_users_email"),
    )
    op.create_table(
        "oauth_clients",
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("auth_method", sa.String(32), nullable=False),
        sa.Column("redirect_uris", sa.Text(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("grant_types", sa.Text(), nullable=False),
        sa.Column("jwks", sa.Text(), nullable=True),
        sa.Column("role", sa.String(16), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        _at("created_at"),
        sa.PrimaryKeyConstraint("client_id", name="pk_oauth_clients"),
    )
    op.create_table(
        "oauth_authorization_codes",
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("redirect_uri", sa.Text(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("code_challenge", sa.String(128), nullable=False),
        sa.Column("nonce", sa.String(255), nullable=True),
        sa.Column("patient_id", sa.String(64), nullable=True),
        sa.Column("family", sa.String(64), nullable=False),
        _at("expires_at"),
        _at("used_at", nullable=True),
        sa.Column("access_jti", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("code_hash", name="pk_oauth_authorization_codes"),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["oauth_clients.client_id"],
            name="fk_oauth_authorization_codes_client_id_oauth_clients",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_oauth_authorization_codes_user_id_users"
        ),
    )
    op.create_table(
        "oauth_refresh_tokens",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("family", sa.String(64), nullable=False),
        sa.Column("client_id", sa.String(64), nullable=True),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=True),
        sa.Column("access_jti", sa.String(64), nullable=True),
        _at("created_at"),
        _at("expires_at"),
        _at("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("token_hash", name="pk_oauth_refresh_tokens"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_oauth_refresh_tokens_user_id_users"
        ),
    )
    op.create_index("ix_oauth_refresh_tokens_family", "oauth_refresh_tokens", ["family"])
    op.create_index("ix_oauth_refresh_tokens_user_id", "oauth_refresh_tokens", ["user_id"])
    op.create_table(
        "oauth_revoked_tokens",
        sa.Column("jti", sa.String(64), nullable=False),
        _at("expires_at"),
        _at("revoked_at"),
        sa.PrimaryKeyConstraint("jti", name="pk_oauth_revoked_tokens"),
    )
    op.create_table(
        "oauth_used_assertions",
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("jti", sa.String(255), nullable=False),
        _at("expires_at"),
        sa.PrimaryKeyConstraint("client_id", "jti", name="pk_oauth_used_assertions"),
    )
    op.create_table(
        "account_tokens",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        _at("expires_at"),
        _at("used_at", nullable=True),
        sa.PrimaryKeyConstraint("token_hash", name="pk_account_tokens"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_account_tokens_user_id_users"),
    )
    op.create_table(
        "login_attempts",
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        _at("first_failure_at"),
        _at("last_failure_at"),
        _at("locked_until", nullable=True),
        sa.PrimaryKeyConstraint("key", name="pk_login_attempts"),
    )


def downgrade() -> None:
    op.drop_table("login_attempts")
    op.drop_table("account_tokens")
    op.drop_table("oauth_used_assertions")
    op.drop_table("oauth_revoked_tokens")
    op.drop_index("ix_oauth_refresh_tokens_user_id", table_name="oauth_refresh_tokens")
    op.drop_index("ix_oauth_refresh_tokens_family", table_name="oauth_refresh_tokens")
    op.drop_table("oauth_refresh_tokens")
    op.drop_table("oauth_authorization_codes")
    op.drop_table("oauth_clients")
    op.drop_table("users")
