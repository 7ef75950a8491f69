"""Shadow scoring: per-chunk comparisons of a challenger with the champion it shadows,
and the records the challenger flagged, kept apart from the champion's anomalies.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _model_fk(table: str, column: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], ["models.id"], name=op.f(f"fk_{table}_{column}_models")
    )


def upgrade() -> None:
    op.create_table(
        "shadow_results",
        sa.Column("job_id", sa.String(length=128), nullable=False),
        sa.Column("chunk_index", sa.Integer(), nullable=False),
        sa.Column("challenger_model_id", BigId, nullable=False),
        sa.Column("champion_model_id", BigId, nullable=False),
        sa.Column("tally", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        _model_fk("shadow_results", "challenger_model_id"),
        _model_fk("shadow_results", "champion_model_id"),
        sa.PrimaryKeyConstraint(
            "job_id", "chunk_index", "challenger_model_id", name=op.f("pk_shadow_results")
        ),
    )
    op.create_index(
        "idx_shadow_results_pair", "shadow_results", ["champion_model_id", "challenger_model_id"]
    )
    op.create_table(
        "shadow_anomalies",
        sa.Column("job_id", sa.String(length=128), nullable=False),
        sa.Column("record_index", sa.BigInteger(), nullable=False),
        sa.Column("challenger_model_id", BigId, nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("severity", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        _model_fk("shadow_anomalies", "challenger_model_id"),
        sa.PrimaryKeyConstraint(
            "job_id", "record_index", "challenger_model_id", name=op.f("pk_shadow_anomalies")
        ),
    )


def downgrade() -> None:
    op.drop_table("shadow_anomalies")
    op.drop_index("idx_shadow_results_pair", table_name="shadow_results")
    op.drop_table("shadow_results")
