"""Database maintenance: view refreshes, VACUUM/ANALYZE and retention.

Every statement names objects from the fixed lists below, never from input, so no SQL is
assembled from caller-supplied names. On SQLite (embedded mode) the PostgreSQL-only work
is reported as skipped.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, bindparam, text

from pynomaly_workers.adapters.stores.tables import UtcDateTime
from pynomaly_workers.contract import FAILED, SUCCEEDED

MATERIALIZED_VIEWS = ("mv_recent_anomalies", "mv_model_performance", "mv_dataset_summary")
TABLES = (
    "anomalies",
    "detection_chunks",
    "detection_jobs",
    "models",
    "datasets",
    "metrics",
    "model_artifacts",
)
_RETENTION_BATCH = 10_000
_FINAL = {"done": SUCCEEDED, "given_up": FAILED}


class SqlMaintenance:
    """Maintenance operations on the store's engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_postgres = engine.dialect.name == "postgresql"

    def refresh_views(self) -> dict[str, Any]:
        """REFRESH MATERIALIZED VIEW CONCURRENTLY each view (readers are never blocked)."""
        if not self.is_postgres:
            return {"skipped": "materialized views exist on PostgreSQL only"}
        refreshed = []
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for view in MATERIALIZED_VIEWS:
                conn.execute(text(f"REFRESH MATERIALIZED VIEW CONCURRENTLY {view}"))
                refreshed.append(view)
        return {"refreshed": refreshed}

    def vacuum_analyze(self) -> dict[str, Any]:
        """VACUUM (ANALYZE) each table; plain ANALYZE on SQLite."""
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if not self.is_postgres:
                conn.execute(text("ANALYZE"))
                return {"analyzed": list(TABLES)}
            for table in TABLES:
                conn.execute(text(f"VACUUM (ANALYZE) {table}"))
        return {"vacuumed": list(TABLES)}

    def retention(self, *, cutoff: datetime) -> dict[str, Any]:
        """Delete anomalies and finished jobs created before ``cutoff``, in batches so
        no transaction holds locks for long."""
        anomalies = self._delete_in_batches(
            "DELETE FROM anomalies WHERE id IN (SELECT id FROM anomalies "
            "WHERE timestamp < :cutoff LIMIT :batch)",
            cutoff=cutoff,
        )
        jobs = self._delete_in_batches(
            "DELETE FROM detection_jobs WHERE id IN (SELECT id FROM detection_jobs "
            "WHERE created_at < :cutoff AND status IN (:done, :given_up) LIMIT :batch)",
            cutoff=cutoff,
        )
        return {"cutoff": cutoff.isoformat(), "anomalies_deleted": anomalies, "jobs_deleted": jobs}

    def _delete_in_batches(self, statement: str, *, cutoff: datetime) -> int:
        total = 0
        while True:
            with self.engine.begin() as conn:
                query = text(statement).bindparams(bindparam("cutoff", type_=UtcDateTime()))
                parameters = {"cutoff": cutoff, "batch": _RETENTION_BATCH, **_FINAL}
                deleted = conn.execute(query, parameters).rowcount
            total += deleted
            if deleted < _RETENTION_BATCH:
                return total
