"""Import progress, so an interrupted import resumes without duplicates (issue 8).

Revision ID: 0007_import
Revises: 0006_export
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0007_import"
down_revision: str | None = "0006_export"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "import_progress",
        sa.Column("source", sa.String(1024), nullable=False),
        sa.Column("member", sa.String(1024), nullable=False),
        sa.Column("unit", sa.String(64), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("resources", sa.Integer(), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source", "member", "unit", "sha256", name="pk_import_progress"),
    )


def downgrade() -> None:
    op.drop_table("import_progress")
