"""Feedback and evidence: a label column for datasets, stored evaluations, thresholds set
by intent (the current one per model version and every change), suppression rules and the
anomalies they suppressed, and who forced an alias move and why.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = sa.DateTime(timezone=True)


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}")
    )


def upgrade() -> None:
    # Nullable and without defaults: adding them rewrites nothing on PostgreSQL.
    op.add_column("datasets", sa.Column("label_column", sa.String(length=128), nullable=True))
    op.add_column("anomalies", sa.Column("suppressed_by", sa.BigInteger(), nullable=True))
    op.add_column("model_alias_moves", sa.Column("actor", sa.String(length=128), nullable=True))
    op.add_column("model_alias_moves", sa.Column("reason", sa.Text(), nullable=True))
    op.add_column("model_alias_moves", sa.Column("evidence", sa.JSON(), nullable=True))
    op.create_table(
        "evaluations",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("model_id", BigId, nullable=False),
        sa.Column("dataset_name", sa.String(length=128), nullable=False),
        sa.Column("job_id", sa.String(length=128), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("n_records", sa.BigInteger(), nullable=False),
        sa.Column("n_positive", sa.BigInteger(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.CheckConstraint(
            "purpose IN ('evaluate', 'promotion')", name=op.f("ck_evaluations_purpose_valid")
        ),
        _fk("evaluations", "model_id", "models"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
        sa.UniqueConstraint("job_id", name="uq_evaluations_job_id"),
    )
    op.create_index(
        "idx_evaluations_model", "evaluations", ["model_id", sa.text("created_at DESC")]
    )
    op.create_table(
        "threshold_changes",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("model_id", BigId, nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("previous_threshold", sa.Float(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("intent", sa.JSON(), nullable=False),
        sa.Column("projection", sa.JSON(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("at", When, nullable=False),
        sa.CheckConstraint(
            "action IN ('set', 'rollback')", name=op.f("ck_threshold_changes_action_valid")
        ),
        _fk("threshold_changes", "model_id", "models"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_threshold_changes")),
    )
    op.create_index(
        "idx_threshold_changes_model", "threshold_changes", ["model_id", sa.text("id DESC")]
    )
    op.create_table(
        "model_thresholds",
        sa.Column("model_id", BigId, nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("change_id", BigId, nullable=False),
        sa.Column("updated_at", When, nullable=False),
        _fk("model_thresholds", "model_id", "models"),
        sa.ForeignKeyConstraint(
            ["change_id"],
            ["threshold_changes.id"],
            name=op.f("fk_model_thresholds_change_id_threshold_changes"),
        ),
        sa.PrimaryKeyConstraint("model_id", name=op.f("pk_model_thresholds")),
    )
    op.create_table(
        "suppression_rules",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("entity", sa.String(length=256), nullable=True),
        sa.Column("feature", sa.String(length=128), nullable=True),
        sa.Column("low", sa.Float(), nullable=True),
        sa.Column("high", sa.Float(), nullable=True),
        sa.Column("until", When, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.Column("removed_at", When, nullable=True),
        sa.Column("removed_by", sa.String(length=128), nullable=True),
        sa.Column("suppressed_count", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "(feature IS NULL AND low IS NULL AND high IS NULL)"
            " OR (feature IS NOT NULL AND low IS NOT NULL AND high IS NOT NULL AND low <= high)",
            name=op.f("ck_suppression_rules_range_valid"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_suppression_rules")),
    )
    op.create_index(
        "idx_suppression_rules_model", "suppression_rules", ["model_name", sa.text("until DESC")]
    )


def downgrade() -> None:
    for table in ("suppression_rules", "model_thresholds", "threshold_changes", "evaluations"):
        op.drop_table(table)
    with op.batch_alter_table("model_alias_moves") as batch:
        batch.drop_column("evidence")
        batch.drop_column("reason")
        batch.drop_column("actor")
    with op.batch_alter_table("anomalies") as batch:
        batch.drop_column("suppressed_by")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("label_column")
