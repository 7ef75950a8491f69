"""Drift monitoring: per-window counts of what each model version scored, in its training
profile's bins, and the reports of each drift check.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "drift_windows",
        sa.Column("model_id", BigId, nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_drift_windows_model_id_models")
        ),
        sa.PrimaryKeyConstraint("model_id", "window_start", name=op.f("pk_drift_windows")),
    )
    op.create_table(
        "drift_reports",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("model_id", BigId, nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("drifted", sa.Boolean(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_drift_reports_model_id_models")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drift_reports")),
    )
    op.create_index(
        "idx_drift_reports_model", "drift_reports", ["model_id", sa.text("checked_at DESC")]
    )


def downgrade() -> None:
    op.drop_index("idx_drift_reports_model", table_name="drift_reports")
    op.drop_table("drift_reports")
    op.drop_table("drift_windows")
