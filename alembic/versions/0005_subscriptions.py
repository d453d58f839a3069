"""Subscriptions and their notification outbox (issue 9).

Revision ID: 0005_subscriptions
Revises: 0004_notify
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005_subscriptions"
down_revision: str | None = "0004_notify"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _at(name: str, *, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("criteria", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("payload", sa.String(64), nullable=True),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("owner", sa.JSON(), nullable=True),
        sa.Column("owner_key", sa.String(200), nullable=True),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("claim", sa.String(32), nullable=True),
        _at("claimed_until", nullable=True),
        _at("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_subscriptions"),
    )
    op.create_index(
        "ix_subscriptions_resource_type_status", "subscriptions", ["resource_type", "status"]
    )
    op.create_index("ix_subscriptions_owner_key", "subscriptions", ["owner_key"])
    op.create_table(
        "subscription_deliveries",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("subscription_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("resource_type", sa.String(64), nullable=True),
        sa.Column("resource_id", sa.String(64), nullable=True),
        sa.Column("version_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _at("next_attempt_at"),
        sa.Column("last_error", sa.Text(), nullable=True),
        _at("created_at"),
        _at("sent_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_subscription_deliveries"),
        sa.UniqueConstraint(
            "subscription_id", "seq", name="uq_subscription_deliveries_subscription_id_seq"
        ),
    )
    op.create_index(
        "ix_subscription_deliveries_status_next_attempt_at",
        "subscription_deliveries",
        ["status", "next_attempt_at"],
    )


def downgrade() -> None:
    op.drop_index(
        "ix_subscription_deliveries_status_next_attempt_at", table_name="subscription_deliveries"
    )
    op.drop_table("subscription_deliveries")
    op.drop_index("ix_subscriptions_owner_key", table_name="subscriptions")
    op.drop_index("ix_subscriptions_resource_type_status", table_name="subscriptions")
    op.drop_table("subscriptions")
