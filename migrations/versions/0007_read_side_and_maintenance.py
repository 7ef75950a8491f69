"""Read side at 10M anomalies, retention by detection time, recorded maintenance.

- ``anomalies.detected_at``: when the worker stored the row. Retention deletes by it, not
  by the caller-supplied ``timestamp`` (back-filled history would otherwise be deleted
  the night it is detected). Rows already stored count as detected at upgrade time, so
  an upgrade never makes retention delete earlier than before.
- Indexes measured at 10M rows (``make bench-db``): ``(severity DESC, timestamp DESC)``
  for "most severe first" (replaces the guide's partial ``severity > 0.5`` index, which
  no query with a lower threshold can use), ``(model_id, severity DESC, timestamp DESC)``
  for the same per model, ``(detected_at)`` for batched retention.
- ``mv_anomaly_counts_hourly``: anomalies per model and hour over the last two days,
  so "counts per model over 24 h" reads 50 x 25 rows instead of counting ~330k.
- ``maintenance_runs``: one row per maintenance run (task, outcome, rows, detail).
- ``pg_stat_statements`` where the server allows creating it (``slow_queries``).

On PostgreSQL the indexes on ``anomalies`` are built CONCURRENTLY, so upgrading a live
database does not block the workers' writes.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# (name, columns); all on anomalies.
_NEW_INDEXES = (
    ("idx_anomalies_severity", "severity DESC, timestamp DESC"),
    ("idx_anomalies_model_severity", "model_id, severity DESC, timestamp DESC"),
    ("idx_anomalies_detected", "detected_at"),
)
COUNTS_VIEW = (
    """
    CREATE MATERIALIZED VIEW mv_anomaly_counts_hourly AS
    SELECT model_id, date_trunc('hour', timestamp) AS hour, count(*) AS anomalies,
           count(*) FILTER (WHERE severity >= 0.9) AS severe, max(severity) AS max_severity
    FROM anomalies
    WHERE timestamp >= date_trunc('hour', now()) - interval '48 hours'
    GROUP BY model_id, date_trunc('hour', timestamp)
    """,
    "CREATE UNIQUE INDEX uq_mv_anomaly_counts_hourly ON mv_anomaly_counts_hourly (model_id, hour)",
    "CREATE INDEX ix_mv_anomaly_counts_hourly_hour ON mv_anomaly_counts_hourly (hour)",
)


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    _add_detected_at(postgres)
    _create_runs_table()
    if postgres:
        _postgres_indexes()
        for statement in COUNTS_VIEW:
            op.execute(statement)
        _create_statements_extension()
    else:
        op.drop_index("idx_anomalies_severity", table_name="anomalies")
        for name, columns in _NEW_INDEXES:
            op.create_index(name, "anomalies", [sa.text(c) for c in columns.split(", ")])


def _add_detected_at(postgres: bool) -> None:
    default = sa.text("now()") if postgres else sa.text("(strftime('%Y-%m-%d %H:%M:%f', 'now'))")
    with op.batch_alter_table("anomalies") as batch:
        batch.add_column(
            sa.Column(
                "detected_at", sa.DateTime(timezone=True), nullable=False, server_default=default
            )
        )


def _create_runs_table() -> None:
    op.create_table(
        "maintenance_runs",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("task", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("rows_affected", sa.BigInteger(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.CheckConstraint(
            "outcome IN ('succeeded', 'skipped', 'failed')",
            name=op.f("ck_maintenance_runs_outcome_valid"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_maintenance_runs")),
    )
    op.create_index(
        "idx_maintenance_runs_started", "maintenance_runs", [sa.text("started_at DESC")]
    )
    op.create_index(
        "idx_maintenance_runs_task", "maintenance_runs", ["task", sa.text("started_at DESC")]
    )


def _postgres_indexes() -> None:
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS idx_anomalies_severity")
        for name, columns in _NEW_INDEXES:
            op.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON anomalies ({columns})")


def _create_statements_extension() -> None:
    """pg_stat_statements, if the server has it and lets this role create it. Its data
    needs ``shared_preload_libraries`` too; ``slow_queries`` reports when it does not."""
    bind = op.get_bind()
    available = bind.execute(
        sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_stat_statements'")
    ).first()
    if not available:
        return
    savepoint = bind.begin_nested()
    try:
        bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
        savepoint.commit()
    except sa.exc.DBAPIError:
        savepoint.rollback()  # no privilege: slow_queries says "not available"


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute("DROP MATERIALIZED VIEW IF EXISTS mv_anomaly_counts_hourly")
    for name, _ in _NEW_INDEXES:
        op.drop_index(name, table_name="anomalies")
    op.create_index(
        "idx_anomalies_severity",
        "anomalies",
        ["severity", sa.text("timestamp DESC")],
        postgresql_where=sa.text("severity > 0.5"),
        sqlite_where=sa.text("severity > 0.5"),
    )
    op.drop_table("maintenance_runs")
    with op.batch_alter_table("anomalies") as batch:
        batch.drop_column("detected_at")
