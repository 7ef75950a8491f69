"""Fan-out jobs: chunk bookkeeping and the parent task id.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("detection_jobs") as batch:
        batch.add_column(sa.Column("chunks_total", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("task_id", sa.String(length=155), nullable=True))
    op.create_table(
        "detection_chunks",
        sa.Column("job_id", sa.String(length=128), nullable=False),
        sa.Column("chunk_index", sa.Integer(), nullable=False),
        sa.Column("n_records", sa.BigInteger(), nullable=False),
        sa.Column("n_anomalies", sa.BigInteger(), nullable=False),
        sa.Column("cache_hits", sa.BigInteger(), nullable=False),
        sa.Column("top", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "chunk_index", name=op.f("pk_detection_chunks")),
    )


def downgrade() -> None:
    op.drop_table("detection_chunks")
    with op.batch_alter_table("detection_jobs") as batch:
        batch.drop_column("task_id")
        batch.drop_column("chunks_total")
