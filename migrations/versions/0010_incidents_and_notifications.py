"""After detection: the entity of each anomaly, incidents (with their history), labels,
webhook subscriptions, notifications and every delivery attempt; and the inbox through
which settled jobs reach incident upkeep exactly once.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = sa.DateTime(timezone=True)


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}")
    )


def upgrade() -> None:
    # Nullable and without a default: adding it rewrites nothing on PostgreSQL.
    op.add_column("anomalies", sa.Column("entity", sa.String(length=256), nullable=True))
    op.create_table(
        "incident_inbox",
        sa.Column("job_id", sa.String(length=128), nullable=False),
        sa.Column("queued_at", When, nullable=False),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_incident_inbox")),
    )
    op.create_table(
        "incidents",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("model_id", BigId, nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("entity", sa.String(length=256), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("first_ts", When, nullable=False),
        sa.Column("last_ts", When, nullable=False),
        sa.Column("anomaly_count", sa.BigInteger(), nullable=False),
        sa.Column("max_severity", sa.Float(), nullable=False),
        sa.Column("feature_weights", sa.JSON(), nullable=False),
        sa.Column("opened_at", When, nullable=False),
        sa.Column("last_seen_at", When, nullable=False),
        sa.Column("updated_at", When, nullable=False),
        sa.Column("acknowledged_at", When, nullable=True),
        sa.Column("acknowledged_by", sa.String(length=128), nullable=True),
        sa.Column("resolved_at", When, nullable=True),
        sa.Column("resolved_by", sa.String(length=128), nullable=True),
        sa.Column("alert_sent_at", When, nullable=True),
        sa.Column("alert_ended_at", When, nullable=True),
        sa.Column("alert_severity", sa.String(length=16), nullable=True),
        sa.CheckConstraint(
            "status IN ('open', 'acknowledged', 'resolved')",
            name=op.f("ck_incidents_status_valid"),
        ),
        _fk("incidents", "model_id", "models"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incidents")),
    )
    op.create_index(
        "idx_incidents_key", "incidents", ["model_id", "entity", sa.text("last_ts DESC")]
    )
    op.create_index("idx_incidents_status", "incidents", ["status", sa.text("last_seen_at DESC")])
    op.create_index("idx_incidents_opened", "incidents", [sa.text("opened_at DESC")])
    op.create_index(
        "idx_incidents_model_name", "incidents", ["model_name", sa.text("opened_at DESC")]
    )
    pending = sa.text("alert_sent_at IS NOT NULL AND alert_ended_at IS NULL")
    op.create_index(
        "idx_incidents_alert_pending",
        "incidents",
        ["status"],
        postgresql_where=pending,
        sqlite_where=pending,
    )
    op.create_table(
        "incident_events",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("incident_id", BigId, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("at", When, nullable=False),
        sa.CheckConstraint(
            "kind IN ('opened', 'grew', 'escalated', 'acknowledged', 'resolved', 'labelled')",
            name=op.f("ck_incident_events_kind_valid"),
        ),
        _fk("incident_events", "incident_id", "incidents"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incident_events")),
    )
    op.create_index("idx_incident_events_incident", "incident_events", ["incident_id", "id"])
    op.create_table(
        "anomaly_labels",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("anomaly_id", sa.BigInteger(), nullable=False),
        sa.Column("model_id", BigId, nullable=False),
        sa.Column("label", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("incident_id", BigId, nullable=True),
        sa.Column("at", When, nullable=False),
        sa.CheckConstraint(
            "label IN ('anomaly', 'not_anomaly', 'expected')",
            name=op.f("ck_anomaly_labels_label_valid"),
        ),
        _fk("anomaly_labels", "model_id", "models"),
        _fk("anomaly_labels", "incident_id", "incidents"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_anomaly_labels")),
    )
    op.create_index(
        "idx_anomaly_labels_anomaly", "anomaly_labels", ["anomaly_id", sa.text("id DESC")]
    )
    op.create_index("idx_anomaly_labels_model", "anomaly_labels", ["model_id", sa.text("at DESC")])
    op.create_table(
        "subscriptions",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=True),
        sa.Column("min_severity", sa.Float(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.Column("disabled_at", When, nullable=True),
        sa.CheckConstraint(
            "min_severity >= 0 AND min_severity <= 1",
            name=op.f("ck_subscriptions_min_severity_range"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
        sa.UniqueConstraint("name", name=op.f("uq_subscriptions_name")),
    )
    op.create_table(
        "notifications",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("webhook_id", sa.String(length=64), nullable=False),
        sa.Column("subscription_id", BigId, nullable=False),
        sa.Column("incident_id", BigId, nullable=False),
        sa.Column("event", sa.String(length=16), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", When, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.Column("delivered_at", When, nullable=True),
        sa.CheckConstraint(
            "event IN ('opened', 'escalated', 'resolved')",
            name=op.f("ck_notifications_event_valid"),
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'failed', 'cancelled')",
            name=op.f("ck_notifications_status_valid"),
        ),
        _fk("notifications", "subscription_id", "subscriptions"),
        _fk("notifications", "incident_id", "incidents"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
        sa.UniqueConstraint("webhook_id", name=op.f("uq_notifications_webhook_id")),
        sa.UniqueConstraint(
            "subscription_id", "incident_id", "event", name="uq_notifications_event"
        ),
    )
    op.create_index("idx_notifications_status", "notifications", ["status", "next_attempt_at"])
    op.create_index("idx_notifications_incident", "notifications", ["incident_id"])
    op.create_table(
        "delivery_attempts",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("notification_id", BigId, nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", When, nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        _fk("delivery_attempts", "notification_id", "notifications"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_attempts")),
    )
    op.create_index(
        "idx_delivery_attempts_notification", "delivery_attempts", ["notification_id", "attempt"]
    )
    op.create_index("idx_delivery_attempts_at", "delivery_attempts", [sa.text("at DESC")])


def downgrade() -> None:
    for table in (
        "delivery_attempts",
        "notifications",
        "subscriptions",
        "anomaly_labels",
        "incident_events",
        "incidents",
        "incident_inbox",
    ):
        op.drop_table(table)
    with op.batch_alter_table("anomalies") as batch:
        batch.drop_column("entity")
