"""Resources and their history.

Revision ID: 0001_resources
Revises:
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0001_resources"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "resources",
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("content", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("resource_type", "id", name="pk_resources"),
    )
    op.create_index(
        "ix_resources_resource_type_last_updated_id",
        "resources",
        ["resource_type", "last_updated", "id"],
    )
    op.create_table(
        "resource_history",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("content", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("seq", name="pk_resource_history"),
        sa.UniqueConstraint(
            "resource_type",
            "id",
            "version_id",
            name="uq_resource_history_resource_type_id_version_id",
        ),
    )
    op.create_index(
        "ix_resource_history_resource_type_seq", "resource_history", ["resource_type", "seq"]
    )
    op.create_index("ix_resource_history_last_updated", "resource_history", ["last_updated"])


def downgrade() -> None:
    op.drop_index("ix_resource_history_last_updated", table_name="resource_history")
    op.drop_index("ix_resource_history_resource_type_seq", table_name="resource_history")
    op.drop_table("resource_history")
    op.drop_index("ix_resources_resource_type_last_updated_id", table_name="resources")
    op.drop_table("resources")
