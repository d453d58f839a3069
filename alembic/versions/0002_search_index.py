"""The search index: one table per parameter type, and the Patient compartments.

Revision ID: 0002_search_index
Revises: 0001_resources
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0002_search_index"
down_revision: str | None = "0001_resources"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TEXT = sa.String(200).with_variant(sa.String(200, collation="C"), "postgresql")


def _keys() -> list[sa.Column]:
    return [
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("resource_id", sa.String(64), nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
    ]


def _component(n: int) -> list[sa.Column]:
    return [
        sa.Column(f"c{n}_system", sa.Text(), nullable=True),
        sa.Column(f"c{n}_code", sa.Text(), nullable=True),
        sa.Column(f"c{n}_value", sa.Float(), nullable=True),
        sa.Column(f"c{n}_low", sa.BigInteger(), nullable=True),
        sa.Column(f"c{n}_high", sa.BigInteger(), nullable=True),
    ]


# table -> (value columns, indexes beyond the owner index as (name, columns))
_TABLES: dict[str, tuple[list, list[tuple[str, list[str]]]]] = {
    "search_string": (
        [sa.Column("value", _TEXT, nullable=False), sa.Column("raw", sa.Text(), nullable=False)],
        [("ix_search_string_resource_type_param_value", ["resource_type", "param", "value"])],
    ),
    "search_token": (
        [
            sa.Column("system", sa.Text(), nullable=True),
            sa.Column("code", sa.Text(), nullable=True),
            sa.Column("text", _TEXT, nullable=True),
        ],
        [
            (
                "ix_search_token_resource_type_param_code_system",
                ["resource_type", "param", "code", "system"],
            )
        ],
    ),
    "search_date": (
        [
            sa.Column("low", sa.BigInteger(), nullable=False),
            sa.Column("high", sa.BigInteger(), nullable=False),
        ],
        [
            (
                "ix_search_date_resource_type_param_low_high",
                ["resource_type", "param", "low", "high"],
            ),
            ("ix_search_date_resource_type_param_high", ["resource_type", "param", "high"]),
        ],
    ),
    "search_number": (
        [sa.Column("value", sa.Float(), nullable=False)],
        [("ix_search_number_resource_type_param_value", ["resource_type", "param", "value"])],
    ),
    "search_quantity": (
        [
            sa.Column("value", sa.Float(), nullable=False),
            sa.Column("system", sa.Text(), nullable=True),
            sa.Column("code", sa.Text(), nullable=True),
            sa.Column("unit", sa.Text(), nullable=True),
        ],
        [("ix_search_quantity_resource_type_param_value", ["resource_type", "param", "value"])],
    ),
    "search_reference": (
        [
            sa.Column("target_type", sa.String(64), nullable=True),
            sa.Column("target_id", sa.String(64), nullable=True),
            sa.Column("url", sa.Text(), nullable=True),
        ],
        [
            (
                "ix_search_reference_resource_type_param_target_id_target_type",
                ["resource_type", "param", "target_id", "target_type"],
            ),
            ("ix_search_reference_target_type_target_id", ["target_type", "target_id"]),
        ],
    ),
    "search_uri": (
        [sa.Column("value", sa.Text(), nullable=False)],
        [("ix_search_uri_resource_type_param_value", ["resource_type", "param", "value"])],
    ),
    "search_composite": (
        [*_component(1), *_component(2), *_component(3)],
        [
            (
                "ix_search_composite_resource_type_param_c1_code",
                ["resource_type", "param", "c1_code"],
            )
        ],
    ),
}


def upgrade() -> None:
    for name, (columns, indexes) in _TABLES.items():
        op.create_table(name, *_keys(), *columns)
        op.create_index(
            f"ix_{name}_resource_type_resource_id_param",
            name,
            ["resource_type", "resource_id", "param"],
        )
        for index_name, index_columns in indexes:
            op.create_index(index_name, name, index_columns)
    op.create_table(
        "resource_compartments",
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("resource_id", sa.String(64), nullable=False),
        sa.Column("compartment_type", sa.String(64), nullable=False),
        sa.Column("compartment_id", sa.String(64), nullable=False),
    )
    op.create_index(
        "ix_resource_compartments_resource_type_resource_id",
        "resource_compartments",
        ["resource_type", "resource_id"],
    )
    op.create_index(
        "ix_resource_compartments_compartment",
        "resource_compartments",
        ["compartment_type", "compartment_id", "resource_type"],
    )


def downgrade() -> None:
    op.drop_table("resource_compartments")
    for name in reversed(list(_TABLES)):
        op.drop_table(name)
