"""Bulk Data export jobs (issue 8).

Revision ID: 0006_export
Revises: 0005_subscriptions
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006_export"
down_revision: str | None = "0005_subscriptions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _at(name: str, *, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "export_jobs",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("level", sa.String(10), nullable=False),
        sa.Column("group_id", sa.String(64), nullable=True),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("caller", sa.JSON(), nullable=False),
        _at("transaction_time", nullable=False),
        sa.Column("claim", sa.String(32), nullable=True),
        _at("lease_until"),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("progress", sa.Text(), nullable=True),
        sa.Column("output", sa.JSON(), nullable=True),
        _at("created_at", nullable=False),
        _at("started_at"),
        _at("finished_at"),
        _at("expires_at"),
        sa.PrimaryKeyConstraint("id", name="pk_export_jobs"),
    )
    op.create_index("ix_export_jobs_status_lease_until", "export_jobs", ["status", "lease_until"])
    op.create_index("ix_export_jobs_expires_at", "export_jobs", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_export_jobs_expires_at", table_name="export_jobs")
    op.drop_index("ix_export_jobs_status_lease_until", table_name="export_jobs")
    op.drop_table("export_jobs")
