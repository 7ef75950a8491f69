"""Movable model aliases (champion, challenger, ...) and the history of their moves.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "model_aliases",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("model_id", BigId, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_model_aliases_model_id_models")
        ),
        sa.PrimaryKeyConstraint("name", "alias", name=op.f("pk_model_aliases")),
    )
    op.create_table(
        "model_alias_moves",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("model_id", BigId, nullable=False),
        sa.Column("previous_model_id", BigId, nullable=True),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("moved_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "action IN ('set', 'rollback')", name=op.f("ck_model_alias_moves_action_valid")
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_model_alias_moves_model_id_models")
        ),
        sa.ForeignKeyConstraint(
            ["previous_model_id"],
            ["models.id"],
            name=op.f("fk_model_alias_moves_previous_model_id_models"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_alias_moves")),
    )
    op.create_index(
        "idx_model_alias_moves_alias",
        "model_alias_moves",
        ["name", "alias", sa.text("id DESC")],
    )


def downgrade() -> None:
    op.drop_index("idx_model_alias_moves_alias", table_name="model_alias_moves")
    op.drop_table("model_alias_moves")
    op.drop_table("model_aliases")
