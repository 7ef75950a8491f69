"""Why each anomaly is one (its top features), and what each model version learned about
its training data (for explanations and drift).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("profile", sa.JSON(), nullable=True))
    with op.batch_alter_table("anomalies") as batch:
        batch.add_column(sa.Column("explanation", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("anomalies") as batch:
        batch.drop_column("explanation")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("profile")
