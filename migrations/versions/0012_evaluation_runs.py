"""Evaluation runs: the fan-out of ``evaluate`` (one row per run, its status and chunk
count) and each chunk's scores and labels, kept apart from detection so an evaluation
never writes an anomaly or counts as a detection job.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "evaluation_runs",
        sa.Column("job_id", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("model", sa.String(length=140), nullable=False),
        sa.Column("model_id", BigId, nullable=True),
        sa.Column("dataset_name", sa.String(length=128), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("chunks_total", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("error_type", sa.String(length=64), nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.Column("started_at", When, nullable=True),
        sa.Column("finished_at", When, nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed')",
            name=op.f("ck_evaluation_runs_status_valid"),
        ),
        sa.CheckConstraint(
            "purpose IN ('evaluate', 'promotion')", name=op.f("ck_evaluation_runs_purpose_valid")
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_evaluation_runs_model_id_models")
        ),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_evaluation_runs")),
    )
    op.create_table(
        "evaluation_chunks",
        sa.Column("job_id", sa.String(length=128), nullable=False),
        sa.Column("chunk_index", sa.Integer(), nullable=False),
        sa.Column("record_offset", sa.BigInteger(), nullable=False),
        sa.Column("n_records", sa.BigInteger(), nullable=False),
        sa.Column("n_positive", sa.BigInteger(), nullable=False),
        sa.Column("scores", sa.LargeBinary(), nullable=False),
        sa.Column("labels", sa.LargeBinary(), nullable=False),
        sa.Column("record_ids", sa.JSON(), nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.PrimaryKeyConstraint("job_id", "chunk_index", name=op.f("pk_evaluation_chunks")),
    )


def downgrade() -> None:
    op.drop_table("evaluation_chunks")
    op.drop_table("evaluation_runs")
