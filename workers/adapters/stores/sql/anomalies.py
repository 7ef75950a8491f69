"""Anomalies on SQL: bulk inserts (COPY on PostgreSQL) and listing."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from pynomaly_workers.adapters.stores.bulk import insert_anomalies
from pynomaly_workers.adapters.stores.sql.base import SqlBase
from pynomaly_workers.adapters.stores.sql.rows import anomaly_record
from pynomaly_workers.adapters.stores.tables import AnomalyRow, ModelRow
from pynomaly_workers.domain.ports import AnomalyBatch, AnomalyRecord


class SqlAnomalyStore(SqlBase):
    """:class:`~pynomaly_workers.domain.ports.AnomalyStore` on SQL."""

    def add_anomalies(self, batch: AnomalyBatch) -> int:
        with self.engine.begin() as conn:
            return insert_anomalies(conn, [batch])

    def list_anomalies(
        self,
        *,
        job_id: str | None = None,
        model: str | None = None,
        min_severity: float = 0.0,
        limit: int = 50,
    ) -> list[AnomalyRecord]:
        query = (
            select(AnomalyRow)
            .where(AnomalyRow.severity >= min_severity)
            .order_by(AnomalyRow.severity.desc(), AnomalyRow.record_index)
            .limit(limit)
        )
        if job_id is not None:
            query = query.where(AnomalyRow.job_id == job_id)
        if model is not None:
            ids = select(ModelRow.id).where(ModelRow.name == model)
            query = query.where(AnomalyRow.model_id.in_(ids))
        with Session(self.engine) as session:
            return [anomaly_record(row) for row in session.scalars(query)]
