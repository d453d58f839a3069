"""OAuth clients may register their keys as a JWK Set URL (SMART client-confidential-asymmetric).

Revision ID: 0008_client_jwks_uri
Revises: 0007_import
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0008_client_jwks_uri"
down_revision: str | None = "0007_import"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("oauth_clients") as table:
        table.add_column(sa.Column("jwks_uri", sa.String(2000), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("oauth_clients") as table:
        table.drop_column("jwks_uri")
