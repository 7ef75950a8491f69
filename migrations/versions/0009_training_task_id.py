"""Training idempotent by its Celery task id: a redelivered ``pynomaly.train`` message
(same task id) finds the version its first delivery registered instead of adding one.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: versions registered before this column, or outside Celery (tests, the
    # demo), have no task id; NULLs never collide under a unique index.
    op.add_column("models", sa.Column("training_task_id", sa.String(length=255), nullable=True))
    op.create_index("uq_models_training_task_id", "models", ["training_task_id"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_models_training_task_id", table_name="models")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("training_task_id")
