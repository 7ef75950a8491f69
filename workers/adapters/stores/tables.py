"""SQLAlchemy table definitions. ORM classes stay inside the store adapter."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pynomaly_workers.contract import JOB_STATUSES

# Integer on SQLite (so the key is the rowid and autoincrements), BIGINT on PostgreSQL.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every dialect. PostgreSQL keeps ``timestamptz``; SQLite has
    no time zones, so values are stored as UTC and handed back marked as UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware (UTC) datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None or value.tzinfo is not None:
            return value
        return value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, datetime: UtcDateTime()}


class ModelArtifactRow(Base):
    """Content-addressed model bytes (scikit-learn pickle or ONNX), shared by all workers."""

    __tablename__ = "model_artifacts"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    media_type: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]


class ModelRow(Base):
    __tablename__ = "models"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    algorithm: Mapped[str] = mapped_column(String(32))
    artifact_sha256: Mapped[str] = mapped_column(ForeignKey("model_artifacts.sha256"))
    onnx_sha256: Mapped[str | None] = mapped_column(ForeignKey("model_artifacts.sha256"))
    n_features: Mapped[int] = mapped_column(Integer)
    contamination: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    score_stats: Mapped[dict[str, Any]]
    params: Mapped[dict[str, Any]]
    parity_max_error: Mapped[float | None] = mapped_column(Float)
    parity_tolerance: Mapped[float | None] = mapped_column(Float)
    n_training_rows: Mapped[int] = mapped_column(BigInteger)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    profile: Mapped[dict[str, Any] | None]
    # The Celery task id of the pynomaly.train that registered it: a redelivery finds it.
    training_task_id: Mapped[str | None] = mapped_column(String(255))

    __table_args__ = (
        UniqueConstraint("name", "version", name="uq_models_name_version"),
        Index("uq_models_training_task_id", "training_task_id", unique=True),
        CheckConstraint("version >= 1", name="version_positive"),
        Index("idx_models_algorithm", "algorithm", text("created_at DESC")),
        # At most one active version per name.
        Index(
            "uq_models_active_name",
            "name",
            unique=True,
            postgresql_where=text("active"),
            sqlite_where=text("active"),
        ),
    )


class ModelAliasRow(Base):
    """Where each movable alias (``champion``, ``challenger``, ...) of a model points."""

    __tablename__ = "model_aliases"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    updated_at: Mapped[datetime]


class ModelAliasMoveRow(Base):
    """Every move of an alias, kept so a rollback knows where it pointed before."""

    __tablename__ = "model_alias_moves"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    alias: Mapped[str] = mapped_column(String(64))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    previous_model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"))
    action: Mapped[str] = mapped_column(String(16))
    moved_at: Mapped[datetime]
    # Who moved it and why, and the evaluations that allowed it (``--require-better``)
    # or that it overrode (``--force --reason``).
    actor: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)
    evidence: Mapped[dict[str, Any] | None]

    __table_args__ = (
        Index("idx_model_alias_moves_alias", "name", "alias", text("id DESC")),
        CheckConstraint("action IN ('set', 'rollback')", name="action_valid"),
    )


class DriftWindowRow(Base):
    """What one model version scored in one time window, in its training profile's bins
    (``DriftCounts``); workers add to it as they score, no record is kept."""

    __tablename__ = "drift_windows"
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(primary_key=True)
    counts: Mapped[dict[str, Any]]
    updated_at: Mapped[datetime]


class DriftReportRow(Base):
    """The outcome of one drift check of one model version."""

    __tablename__ = "drift_reports"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    checked_at: Mapped[datetime]
    drifted: Mapped[bool] = mapped_column(Boolean)
    report: Mapped[dict[str, Any]]

    __table_args__ = (Index("idx_drift_reports_model", "model_id", text("checked_at DESC")),)


class ShadowResultRow(Base):
    """How a challenger scored a sample of one chunk of a champion's job (counts and
    score sums, see ``domain/shadow.py``); once per chunk, however often it runs."""

    __tablename__ = "shadow_results"
    job_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    chunk_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    challenger_model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), primary_key=True)
    champion_model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    tally: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]

    __table_args__ = (Index("idx_shadow_results_pair", "champion_model_id", "challenger_model_id"),)


class ShadowAnomalyRow(Base):
    """A record the challenger flagged while shadowing: kept apart from ``anomalies``."""

    __tablename__ = "shadow_anomalies"
    job_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    record_index: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    challenger_model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), primary_key=True)
    score: Mapped[float] = mapped_column(Float)
    severity: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime]


class DatasetRow(Base):
    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    uri: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(16))
    n_rows: Mapped[int] = mapped_column(BigInteger)
    n_features: Mapped[int] = mapped_column(Integer)
    columns: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="ready")
    created_at: Mapped[datetime]
    # The column that says which records are anomalies (``datasets add --label-column``):
    # read only by ``evaluate``, never a feature.
    label_column: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (
        Index("idx_datasets_created", text("created_at DESC")),
        Index("idx_datasets_status", "status", text("created_at DESC")),
    )


class DetectionJobRow(Base):
    __tablename__ = "detection_jobs"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(128), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    model_name: Mapped[str | None] = mapped_column(String(140))
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"))
    dataset_name: Mapped[str | None] = mapped_column(String(128))
    n_records: Mapped[int | None] = mapped_column(BigInteger)
    n_anomalies: Mapped[int | None] = mapped_column(BigInteger)
    cache_hits: Mapped[int | None] = mapped_column(BigInteger)
    threshold: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    error_type: Mapped[str | None] = mapped_column(String(64))
    summary: Mapped[dict[str, Any] | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    duration_ms: Mapped[float | None] = mapped_column(Float)
    # Fan-out jobs: how many chunks, and the Celery task whose result the last one sets.
    chunks_total: Mapped[int | None] = mapped_column(Integer)
    task_id: Mapped[str | None] = mapped_column(String(155))

    __table_args__ = (
        CheckConstraint(
            f"status IN ({', '.join(repr(status) for status in JOB_STATUSES)})",
            name="status_valid",
        ),
        Index("idx_detection_jobs_created", text("created_at DESC")),
        Index("idx_detection_jobs_status", "status", text("created_at DESC")),
        Index("idx_detection_jobs_model", "model_id", text("created_at DESC")),
    )


class DetectionChunkRow(Base):
    """One finished chunk of a fanned-out job: its counts and its top anomalies. The
    primary key makes a redelivered chunk count once."""

    __tablename__ = "detection_chunks"
    job_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    chunk_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    n_records: Mapped[int] = mapped_column(BigInteger)
    n_anomalies: Mapped[int] = mapped_column(BigInteger)
    cache_hits: Mapped[int] = mapped_column(BigInteger)
    top: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class AnomalyRow(Base):
    __tablename__ = "anomalies"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(128))
    record_index: Mapped[int] = mapped_column(BigInteger)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    record_id: Mapped[str | None] = mapped_column(String(256))
    timestamp: Mapped[datetime]
    score: Mapped[float] = mapped_column(Float)
    severity: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default="active")
    explanation: Mapped[dict[str, Any] | None]
    # The entity the record belongs to (a device, a customer), when the job names one:
    # incidents are kept per model version and entity.
    entity: Mapped[str | None] = mapped_column(String(256))
    # The suppression rule that matched it (``suppression_rules.id``; no foreign key, so
    # inserts pay no lookup): stored, never notified, left out of incidents.
    suppressed_by: Mapped[int | None] = mapped_column(BigInteger)
    # When the worker stored the row (the database's clock); retention goes by this,
    # never by the caller-supplied ``timestamp``.
    detected_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        UniqueConstraint("job_id", "record_index", name="uq_anomalies_job_record"),
        CheckConstraint("severity >= 0 AND severity <= 1", name="severity_range"),
        CheckConstraint("status IN ('active', 'acknowledged', 'resolved')", name="status_valid"),
        # The guide's indexes. Its (model_id, timestamp DESC) index is a prefix of the
        # composite one below, so it is left out: it would cost every insert and serve
        # no query the composite does not. Its partial severity index is replaced by a
        # full one (migration 0003): "severity >= x, most severe first" with x below its
        # predicate scanned and sorted the whole table.
        Index("idx_anomalies_timestamp", text("timestamp DESC")),
        Index("idx_anomalies_composite", "model_id", text("timestamp DESC"), text("severity DESC")),
        Index("idx_anomalies_severity", text("severity DESC"), text("timestamp DESC")),
        Index(
            "idx_anomalies_model_severity",
            "model_id",
            text("severity DESC"),
            text("timestamp DESC"),
        ),
        Index("idx_anomalies_detected", "detected_at"),
        Index(
            "idx_anomalies_job_severity", "job_id", text("severity DESC"), text("timestamp DESC")
        ),
        Index(
            "idx_anomalies_active",
            "id",
            "timestamp",
            postgresql_where=text("status = 'active'"),
            sqlite_where=text("status = 'active'"),
        ),
        # ``anomalies --suppressed only`` of every model (migration 0013): they hold only
        # the suppressed rows, so an anomaly no rule matched costs them nothing.
        Index(
            "idx_anomalies_suppressed_severity",
            text("severity DESC"),
            text("timestamp DESC"),
            postgresql_where=text("suppressed_by IS NOT NULL"),
            sqlite_where=text("suppressed_by IS NOT NULL"),
        ),
        Index(
            "idx_anomalies_suppressed_timestamp",
            text("timestamp DESC"),
            postgresql_where=text("suppressed_by IS NOT NULL"),
            sqlite_where=text("suppressed_by IS NOT NULL"),
        ),
    )


class IncidentInboxRow(Base):
    """A finished detection job whose anomalies are not yet folded into incidents. It is
    written in the transaction that settles the job, and deleted in the one that folds
    it: each job's anomalies count once, however often the job is delivered or resent."""

    __tablename__ = "incident_inbox"
    job_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    queued_at: Mapped[datetime]


class IncidentRow(Base):
    """Anomalies of one model version (and entity) whose record timestamps lie within
    the incident gap of each other. Its anomalies are those of the same model version
    and entity with a timestamp in [first_ts, last_ts]; incidents of one model version
    and entity never overlap."""

    __tablename__ = "incidents"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[int] = mapped_column(Integer)
    entity: Mapped[str | None] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16))
    first_ts: Mapped[datetime]
    last_ts: Mapped[datetime]
    anomaly_count: Mapped[int] = mapped_column(BigInteger)
    max_severity: Mapped[float] = mapped_column(Float)
    # Summed contribution per feature over the incident's explained anomalies.
    feature_weights: Mapped[dict[str, Any]]
    opened_at: Mapped[datetime]
    # When an anomaly last joined it (wall clock): it resolves itself after
    # PYNOMALY_INCIDENT_RESOLVE_AFTER_SECONDS without one.
    last_seen_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by: Mapped[str | None] = mapped_column(String(128))
    resolved_at: Mapped[datetime | None]
    resolved_by: Mapped[str | None] = mapped_column(String(128))
    # Alertmanager: when the alert was last posted, and when its end was.
    alert_sent_at: Mapped[datetime | None]
    alert_ended_at: Mapped[datetime | None]
    # The severity band the alert was last posted with: a label, so part of the alert's
    # identity; after an escalation the alert of the old band is ended explicitly.
    alert_severity: Mapped[str | None] = mapped_column(String(16))

    __table_args__ = (
        CheckConstraint("status IN ('open', 'acknowledged', 'resolved')", name="status_valid"),
        Index("idx_incidents_key", "model_id", "entity", text("last_ts DESC")),
        Index("idx_incidents_status", "status", text("last_seen_at DESC")),
        Index("idx_incidents_opened", text("opened_at DESC")),
        Index("idx_incidents_model_name", "model_name", text("opened_at DESC")),
        # The alerts Alertmanager holds: the resolved ones still to end are found here,
        # not among every resolved incident ever kept.
        Index(
            "idx_incidents_alert_pending",
            "status",
            postgresql_where=text("alert_sent_at IS NOT NULL AND alert_ended_at IS NULL"),
            sqlite_where=text("alert_sent_at IS NOT NULL AND alert_ended_at IS NULL"),
        ),
    )


class IncidentEventRow(Base):
    """What happened to an incident, who did it, when and why; never updated."""

    __tablename__ = "incident_events"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id"))
    kind: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(128))
    comment: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any]]
    at: Mapped[datetime]

    __table_args__ = (
        CheckConstraint(
            "kind IN ('opened', 'grew', 'escalated', 'acknowledged', 'resolved', 'labelled')",
            name="kind_valid",
        ),
        Index("idx_incident_events_incident", "incident_id", "id"),
    )


class AnomalyLabelRow(Base):
    """A label someone gave an anomaly; the newest one counts, none is overwritten."""

    __tablename__ = "anomaly_labels"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    anomaly_id: Mapped[int] = mapped_column(BigInteger)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    label: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(128))
    comment: Mapped[str | None] = mapped_column(Text)
    incident_id: Mapped[int | None] = mapped_column(ForeignKey("incidents.id"))
    at: Mapped[datetime]

    __table_args__ = (
        CheckConstraint("label IN ('anomaly', 'not_anomaly', 'expected')", name="label_valid"),
        Index("idx_anomaly_labels_anomaly", "anomaly_id", text("id DESC")),
        Index("idx_anomaly_labels_model", "model_id", text("at DESC")),
    )


class SubscriptionRow(Base):
    """Where incident notifications go: a webhook URL, optionally for one model name,
    from a minimum severity; signed with its own Standard Webhooks secret."""

    __tablename__ = "subscriptions"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    url: Mapped[str] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(128))
    min_severity: Mapped[float] = mapped_column(Float)
    secret: Mapped[str] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean)
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    disabled_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint("min_severity >= 0 AND min_severity <= 1", name="min_severity_range"),
    )


class NotificationRow(Base):
    """One incident event for one subscription: the CloudEvent body fixed when it was
    created, so every attempt sends the same bytes under the same ``webhook_id``."""

    __tablename__ = "notifications"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    webhook_id: Mapped[str] = mapped_column(String(64), unique=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("subscriptions.id"))
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id"))
    event: Mapped[str] = mapped_column(String(16))
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("subscription_id", "incident_id", "event", name="uq_notifications_event"),
        CheckConstraint("event IN ('opened', 'escalated', 'resolved')", name="event_valid"),
        CheckConstraint(
            "status IN ('pending', 'delivered', 'failed', 'cancelled')", name="status_valid"
        ),
        Index("idx_notifications_status", "status", "next_attempt_at"),
        Index("idx_notifications_incident", "incident_id"),
    )


class DeliveryAttemptRow(Base):
    """One HTTP attempt to deliver a notification, whatever came of it."""

    __tablename__ = "delivery_attempts"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    notification_id: Mapped[int] = mapped_column(ForeignKey("notifications.id"))
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime]
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float] = mapped_column(Float)

    __table_args__ = (
        Index("idx_delivery_attempts_notification", "notification_id", "attempt"),
        Index("idx_delivery_attempts_at", text("at DESC")),
    )


class EvaluationRow(Base):
    """How one model version scored a labelled dataset (``evaluate``, or the evidence of
    an alias move with ``--require-better``); ``metrics`` holds average precision,
    ROC-AUC, precision/recall/F1 at the threshold, precision at k, alerts per 1,000."""

    __tablename__ = "evaluations"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    dataset_name: Mapped[str] = mapped_column(String(128))
    # The fan-out job that scored it: a redelivered evaluation is stored once.
    job_id: Mapped[str | None] = mapped_column(String(128))
    threshold: Mapped[float] = mapped_column(Float)
    n_records: Mapped[int] = mapped_column(BigInteger)
    n_positive: Mapped[int] = mapped_column(BigInteger)
    metrics: Mapped[dict[str, Any]]
    purpose: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]

    __table_args__ = (
        UniqueConstraint("job_id", name="uq_evaluations_job_id"),
        CheckConstraint("purpose IN ('evaluate', 'promotion')", name="purpose_valid"),
        Index("idx_evaluations_model", "model_id", text("created_at DESC")),
    )


class EvaluationRunRow(Base):
    """One run of ``evaluate``: its fan-out over the workers, until the last chunk stores
    the figures in ``evaluations`` (kept apart from ``detection_jobs``: an evaluation is
    not a detection job and writes no anomaly)."""

    __tablename__ = "evaluation_runs"
    job_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(140))
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"))
    dataset_name: Mapped[str] = mapped_column(String(128))
    purpose: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(128))
    chunks_total: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    error_type: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint(
            f"status IN ({', '.join(repr(status) for status in JOB_STATUSES)})",
            name="status_valid",
        ),
        CheckConstraint("purpose IN ('evaluate', 'promotion')", name="purpose_valid"),
    )


class EvaluationChunkRow(Base):
    """One scored chunk of an evaluation run: its scores (float64) and labels (uint8) as
    little-endian arrays, and its record ids if the file has them. The primary key makes
    a redelivered chunk count once."""

    __tablename__ = "evaluation_chunks"
    job_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    chunk_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    record_offset: Mapped[int] = mapped_column(BigInteger)
    n_records: Mapped[int] = mapped_column(BigInteger)
    n_positive: Mapped[int] = mapped_column(BigInteger)
    scores: Mapped[bytes] = mapped_column(LargeBinary)
    labels: Mapped[bytes] = mapped_column(LargeBinary)
    record_ids: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime]


class ThresholdChangeRow(Base):
    """One change of a model version's threshold, set by intent (alerts per day, a
    precision, a contamination) or rolled back; never updated. The version itself stays
    as registered."""

    __tablename__ = "threshold_changes"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    threshold: Mapped[float] = mapped_column(Float)
    previous_threshold: Mapped[float] = mapped_column(Float)
    action: Mapped[str] = mapped_column(String(16))
    intent: Mapped[dict[str, Any]]
    # What the threshold was projected to raise when it was set (alerts per day, precision).
    projection: Mapped[dict[str, Any]]
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime]

    __table_args__ = (
        CheckConstraint("action IN ('set', 'rollback')", name="action_valid"),
        Index("idx_threshold_changes_model", "model_id", text("id DESC")),
    )


class ModelThresholdRow(Base):
    """The threshold in force for a model version whose threshold was changed; a version
    without a row here uses the one it was trained with."""

    __tablename__ = "model_thresholds"
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), primary_key=True)
    threshold: Mapped[float] = mapped_column(Float)
    change_id: Mapped[int] = mapped_column(ForeignKey("threshold_changes.id"))
    updated_at: Mapped[datetime]


class SuppressionRuleRow(Base):
    """Anomalies of a model (optionally of one entity, optionally with one feature in
    [low, high]) detected before ``until`` are stored but marked suppressed. Rules are
    never deleted: a removed one keeps who removed it, and each counts what it
    suppressed."""

    __tablename__ = "suppression_rules"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(128))
    entity: Mapped[str | None] = mapped_column(String(256))
    feature: Mapped[str | None] = mapped_column(String(128))
    low: Mapped[float | None] = mapped_column(Float)
    high: Mapped[float | None] = mapped_column(Float)
    until: Mapped[datetime]
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]
    removed_at: Mapped[datetime | None]
    removed_by: Mapped[str | None] = mapped_column(String(128))
    suppressed_count: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (
        CheckConstraint(
            "(feature IS NULL AND low IS NULL AND high IS NULL)"
            " OR (feature IS NOT NULL AND low IS NOT NULL AND high IS NOT NULL AND low <= high)",
            name="range_valid",
        ),
        Index("idx_suppression_rules_model", "model_name", text("until DESC")),
    )


class MaintenanceRunRow(Base):
    """One run of a maintenance task, whatever its outcome."""

    __tablename__ = "maintenance_runs"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime]
    duration_ms: Mapped[float] = mapped_column(Float)
    outcome: Mapped[str] = mapped_column(String(16))
    rows_affected: Mapped[int] = mapped_column(BigInteger, default=0)
    detail: Mapped[dict[str, Any]]

    __table_args__ = (
        CheckConstraint("outcome IN ('succeeded', 'skipped', 'failed')", name="outcome_valid"),
        Index("idx_maintenance_runs_started", text("started_at DESC")),
        Index("idx_maintenance_runs_task", "task", text("started_at DESC")),
    )


class MetricRow(Base):
    __tablename__ = "metrics"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    timestamp: Mapped[datetime]
    metric_name: Mapped[str] = mapped_column(String(128))
    value: Mapped[float] = mapped_column(Float)
    labels: Mapped[dict[str, Any]]
    granularity: Mapped[str] = mapped_column(String(16), default="raw")

    __table_args__ = (
        Index("idx_metrics_timestamp", text("timestamp DESC"), "metric_name"),
        Index(
            "idx_metrics_rollup",
            "metric_name",
            text("timestamp DESC"),
            postgresql_where=text("granularity = 'hour'"),
            sqlite_where=text("granularity = 'hour'"),
        ),
    )
