"""The SQL store (PostgreSQL and SQLite; SQLAlchemy 2 Core and ORM), one module per role:
``models`` (the registry), ``jobs`` (the job lifecycle, settling small jobs), ``fan_out``
(chunked jobs), ``anomalies``, ``datasets``, ``drift``, ``shadow``, ``incidents``
(with ``inbox``, through which settled jobs reach incident upkeep), ``notifications``
(webhook subscriptions and deliveries), ``evaluations`` (labelled evaluation runs),
``suppressions`` (rules that mark anomalies suppressed), ``alerting`` (what Alertmanager
was told about each incident) and ``thresholds`` (thresholds set by intent, alert
precision)."""

from __future__ import annotations

from pynomaly_workers.adapters.stores.sql.alerting import SqlAlertingStore
from pynomaly_workers.adapters.stores.sql.anomalies import SqlAnomalyStore
from pynomaly_workers.adapters.stores.sql.datasets import SqlDatasetStore
from pynomaly_workers.adapters.stores.sql.drift import SqlDriftStore
from pynomaly_workers.adapters.stores.sql.evaluations import SqlEvaluationStore
from pynomaly_workers.adapters.stores.sql.fan_out import SqlFanOutStore
from pynomaly_workers.adapters.stores.sql.incidents import SqlIncidentStore
from pynomaly_workers.adapters.stores.sql.models import SqlModelStore
from pynomaly_workers.adapters.stores.sql.notifications import SqlNotificationStore
from pynomaly_workers.adapters.stores.sql.rows import sha256
from pynomaly_workers.adapters.stores.sql.shadow import SqlShadowStore
from pynomaly_workers.adapters.stores.sql.suppressions import SqlSuppressionStore
from pynomaly_workers.adapters.stores.sql.thresholds import SqlThresholdStore

__all__ = ["SqlStore", "sha256"]


class SqlStore(
    SqlModelStore,
    SqlFanOutStore,
    SqlAnomalyStore,
    SqlDatasetStore,
    SqlDriftStore,
    SqlShadowStore,
    SqlIncidentStore,
    SqlAlertingStore,
    SqlNotificationStore,
    SqlEvaluationStore,
    SqlThresholdStore,
    SqlSuppressionStore,
):
    """Every store role on one SQLAlchemy engine (one database holds them together)."""
