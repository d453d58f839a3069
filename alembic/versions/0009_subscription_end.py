"""Subscriptions keep their `end`: past it they are turned off and send nothing.

Revision ID: 0009_subscription_end
Revises: 0008_client_jwks_uri
Create Date: 2026-11-29
"""

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa

from alembic import op

revision: str = "0009_subscription_end"
down_revision: str | None = "0008_client_jwks_uri"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Typed, so that each dialect stores the moment as the table's DateTime column does.
_subscriptions = sa.table(
    "subscriptions", sa.column("id", sa.String), sa.column("ends_at", sa.DateTime(timezone=True))
)


def upgrade() -> None:
    with op.batch_alter_table("subscriptions") as table:
        table.add_column(sa.Column("ends_at", sa.DateTime(timezone=True), nullable=True))
    # Subscriptions stored before: their `end`, from the resource.
    conn = op.get_bind()
    found = conn.execute(
        sa.text(
            "SELECT s.id, r.content FROM subscriptions s JOIN resources r"
            " ON r.resource_type = 'Subscription' AND r.id = s.id WHERE r.content IS NOT NULL"
        )
    )
    for sid, content in found.all():
        end = json.loads(content).get("end")
        if not isinstance(end, str):
            continue
        try:
            moment = datetime.fromisoformat(end.replace("Z", "+00:00"))
        except ValueError:
            continue
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        conn.execute(
            sa.update(_subscriptions)
            .where(_subscriptions.c.id == sid)
            .values(ends_at=moment.astimezone(UTC))
        )


def downgrade() -> None:
    with op.batch_alter_table("subscriptions") as table:
        table.drop_column("ends_at")
