"""Partial indexes on the suppressed anomalies: ``anomalies --suppressed only`` of every
model ("most severe first" and "newest first") walked the severity or timestamp index of
the whole table until it found enough suppressed rows. These hold only the suppressed
ones, so they cost nothing on the insert of an anomaly no rule matched. Built
CONCURRENTLY on PostgreSQL, so a live database keeps taking writes.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

WHERE = "suppressed_by IS NOT NULL"
INDEXES = {
    "idx_anomalies_suppressed_severity": "severity DESC, timestamp DESC",
    "idx_anomalies_suppressed_timestamp": "timestamp DESC",
}


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            for name, columns in INDEXES.items():
                op.execute(
                    f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON anomalies ({columns}) "
                    f"WHERE {WHERE}"
                )
    else:
        for name, columns in INDEXES.items():
            op.create_index(
                name,
                "anomalies",
                [sa.text(c) for c in columns.split(", ")],
                sqlite_where=sa.text(WHERE),
            )


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="anomalies")
