"""Initial schema: models, artifacts, datasets, detection jobs, anomalies, metrics.

Indexes follow the tuning guide (see tables.py for the one left out and why). On
PostgreSQL the three materialized views are created with the unique index each needs to
be refreshed CONCURRENTLY.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("format", sa.String(length=16), nullable=False),
        sa.Column("n_rows", sa.BigInteger(), nullable=False),
        sa.Column("n_features", sa.Integer(), nullable=False),
        sa.Column("columns", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
        sa.UniqueConstraint("name", name=op.f("uq_datasets_name")),
    )
    op.create_table(
        "metrics",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("metric_name", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("granularity", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_metrics")),
    )
    op.create_table(
        "model_artifacts",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("media_type", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_model_artifacts")),
    )
    op.create_table(
        "models",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("algorithm", sa.String(length=32), nullable=False),
        sa.Column("artifact_sha256", sa.String(length=64), nullable=False),
        sa.Column("onnx_sha256", sa.String(length=64), nullable=True),
        sa.Column("n_features", sa.Integer(), nullable=False),
        sa.Column("contamination", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("score_stats", sa.JSON(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("parity_max_error", sa.Float(), nullable=True),
        sa.Column("parity_tolerance", sa.Float(), nullable=True),
        sa.Column("n_training_rows", sa.BigInteger(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("version >= 1", name=op.f("ck_models_version_positive")),
        sa.ForeignKeyConstraint(
            ["artifact_sha256"],
            ["model_artifacts.sha256"],
            name=op.f("fk_models_artifact_sha256_model_artifacts"),
        ),
        sa.ForeignKeyConstraint(
            ["onnx_sha256"],
            ["model_artifacts.sha256"],
            name=op.f("fk_models_onnx_sha256_model_artifacts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("name", "version", name="uq_models_name_version"),
    )
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.create_index(
            "uq_models_active_name",
            ["name"],
            unique=True,
            postgresql_where=sa.text("active"),
            sqlite_where=sa.text("active"),
        )

    op.create_table(
        "anomalies",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("job_id", sa.String(length=128), nullable=False),
        sa.Column("record_index", sa.BigInteger(), nullable=False),
        sa.Column("model_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("record_id", sa.String(length=256), nullable=True),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("severity", sa.Float(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.CheckConstraint(
            "status IN ('active', 'acknowledged', 'resolved')",
            name=op.f("ck_anomalies_status_valid"),
        ),
        sa.CheckConstraint(
            "severity >= 0 AND severity <= 1", name=op.f("ck_anomalies_severity_range")
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_anomalies_model_id_models")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_anomalies")),
        sa.UniqueConstraint("job_id", "record_index", name="uq_anomalies_job_record"),
    )
    with op.batch_alter_table("anomalies", schema=None) as batch_op:
        batch_op.create_index(
            "idx_anomalies_active",
            ["id", "timestamp"],
            unique=False,
            postgresql_where=sa.text("status = 'active'"),
            sqlite_where=sa.text("status = 'active'"),
        )

    op.create_table(
        "detection_jobs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("job_id", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("model_name", sa.String(length=140), nullable=True),
        sa.Column("model_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("dataset_name", sa.String(length=128), nullable=True),
        sa.Column("n_records", sa.BigInteger(), nullable=True),
        sa.Column("n_anomalies", sa.BigInteger(), nullable=True),
        sa.Column("cache_hits", sa.BigInteger(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("error_type", sa.String(length=64), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed')",
            name=op.f("ck_detection_jobs_status_valid"),
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_detection_jobs_model_id_models")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_detection_jobs")),
        sa.UniqueConstraint("job_id", name=op.f("uq_detection_jobs_job_id")),
    )
    _create_indexes()
    if op.get_bind().dialect.name == "postgresql":
        for statement in VIEWS:
            op.execute(statement)


def _create_indexes() -> None:
    desc = sa.text
    op.create_index("idx_models_algorithm", "models", ["algorithm", desc("created_at DESC")])
    op.create_index("idx_datasets_created", "datasets", [desc("created_at DESC")])
    op.create_index("idx_datasets_status", "datasets", ["status", desc("created_at DESC")])
    op.create_index("idx_detection_jobs_created", "detection_jobs", [desc("created_at DESC")])
    op.create_index(
        "idx_detection_jobs_status", "detection_jobs", ["status", desc("created_at DESC")]
    )
    op.create_index(
        "idx_detection_jobs_model", "detection_jobs", ["model_id", desc("created_at DESC")]
    )
    op.create_index("idx_anomalies_timestamp", "anomalies", [desc("timestamp DESC")])
    op.create_index(
        "idx_anomalies_composite",
        "anomalies",
        ["model_id", desc("timestamp DESC"), desc("severity DESC")],
    )
    op.create_index(
        "idx_anomalies_severity",
        "anomalies",
        ["severity", desc("timestamp DESC")],
        postgresql_where=sa.text("severity > 0.5"),
        sqlite_where=sa.text("severity > 0.5"),
    )
    op.create_index("idx_metrics_timestamp", "metrics", [desc("timestamp DESC"), "metric_name"])
    op.create_index(
        "idx_metrics_rollup",
        "metrics",
        ["metric_name", desc("timestamp DESC")],
        postgresql_where=sa.text("granularity = 'hour'"),
        sqlite_where=sa.text("granularity = 'hour'"),
    )


VIEWS = (
    """
    CREATE MATERIALIZED VIEW mv_recent_anomalies AS
    SELECT a.id, a.job_id, a.record_index, a.model_id, m.name AS model_name,
           m.version AS model_version, a.record_id, a.timestamp, a.score, a.severity, a.status
    FROM anomalies a JOIN models m ON m.id = a.model_id
    WHERE a.timestamp >= now() - interval '7 days'
    """,
    "CREATE UNIQUE INDEX uq_mv_recent_anomalies_id ON mv_recent_anomalies (id)",
    "CREATE INDEX ix_mv_recent_anomalies_ts ON mv_recent_anomalies (timestamp DESC)",
    """CREATE INDEX ix_mv_recent_anomalies_model
       ON mv_recent_anomalies (model_id, timestamp DESC)""",
    """
    CREATE MATERIALIZED VIEW mv_model_performance AS
    SELECT m.id AS model_id, m.name, m.version, m.algorithm, m.active,
           count(j.id) AS jobs,
           count(j.id) FILTER (WHERE j.status = 'succeeded') AS jobs_succeeded,
           count(j.id) FILTER (WHERE j.status = 'failed') AS jobs_failed,
           coalesce(sum(j.n_records), 0) AS records_scored,
           coalesce(sum(j.n_anomalies), 0) AS anomalies_found,
           coalesce(sum(j.n_anomalies)::float8 / nullif(sum(j.n_records), 0), 0)
               AS anomaly_rate,
           avg(j.duration_ms) AS avg_duration_ms,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY j.duration_ms) AS p95_duration_ms,
           max(j.finished_at) AS last_job_at
    FROM models m LEFT JOIN detection_jobs j ON j.model_id = m.id
    GROUP BY m.id, m.name, m.version, m.algorithm, m.active
    """,
    "CREATE UNIQUE INDEX uq_mv_model_performance_model ON mv_model_performance (model_id)",
    """
    CREATE MATERIALIZED VIEW mv_dataset_summary AS
    SELECT d.id AS dataset_id, d.name, d.format, d.n_rows, d.n_features, d.status,
           d.created_at,
           count(j.id) AS jobs,
           coalesce(sum(j.n_records), 0) AS records_scored,
           coalesce(sum(j.n_anomalies), 0) AS anomalies_found,
           max(j.finished_at) AS last_job_at
    FROM datasets d LEFT JOIN detection_jobs j ON j.dataset_name = d.name
    GROUP BY d.id, d.name, d.format, d.n_rows, d.n_features, d.status, d.created_at
    """,
    "CREATE UNIQUE INDEX uq_mv_dataset_summary_dataset ON mv_dataset_summary (dataset_id)",
)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for view in ("mv_dataset_summary", "mv_model_performance", "mv_recent_anomalies"):
            op.execute(f"DROP MATERIALIZED VIEW IF EXISTS {view}")
    op.drop_table("detection_jobs")
    with op.batch_alter_table("anomalies", schema=None) as batch_op:
        batch_op.drop_index(
            "idx_anomalies_active",
            postgresql_where=sa.text("status = 'active'"),
            sqlite_where=sa.text("status = 'active'"),
        )

    op.drop_table("anomalies")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_models_active_name",
            postgresql_where=sa.text("active"),
            sqlite_where=sa.text("active"),
        )

    op.drop_table("models")
    op.drop_table("model_artifacts")
    op.drop_table("metrics")
    op.drop_table("datasets")
