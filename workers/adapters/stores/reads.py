"""The read side: the queries behind the dashboards and the ``anomalies`` / ``models``
commands, each shaped for one index or materialized view.

``make bench-db`` times every one at 10M anomalies (target p95 <= 10 ms) and
``tests/integration/test_read_plans.py`` asserts, with EXPLAIN, the index each uses. A
query changed here must keep both green. On SQLite (embedded mode: one machine, small
tables) the same names answer from the tables directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Boolean, Engine, bindparam, text
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.selectable import TextualSelect

from pynomaly_workers.adapters.stores.tables import UtcDateTime
from pynomaly_workers.domain.ports import AnomalyRecord, ModelOverview

_ANOMALY = (
    "id, job_id, record_index, model_id, record_id, timestamp, score, severity, status, "
    "explanation, suppressed_by"
)
_MOST_SEVERE = "ORDER BY severity DESC, timestamp DESC, id DESC"

_PERFORMANCE = (
    "SELECT m.id AS model_id, m.name, m.version, m.algorithm, m.active, "
    "m.n_features, m.threshold, m.onnx_sha256 IS NOT NULL AS onnx, m.artifact_sha256, "
    "m.created_at, coalesce(p.jobs, 0) AS jobs, coalesce(p.jobs_failed, 0) AS jobs_failed, "
    # The view's sums are numeric (sum of bigint): as bigint they read back as int.
    "coalesce(p.records_scored, 0)::bigint AS records_scored, "
    "coalesce(p.anomalies_found, 0)::bigint AS anomalies_found, "
    "coalesce(p.anomaly_rate, 0)::float8 AS anomaly_rate, p.p95_duration_ms, p.last_job_at "
    "FROM models m LEFT JOIN mv_model_performance p ON p.model_id = m.id"
)

# name -> SQL on PostgreSQL. Comments say which index (or view) each one is for.
POSTGRES: dict[str, str] = {
    # mv_recent_anomalies (timestamp DESC): the newest of the last 7 days.
    # (The view keeps no explanations: the dashboards' list does not show them. Nor does
    # it keep suppressed_by, which came later: SqlReads reads it by primary key.)
    "recent_anomalies": "SELECT "
    + _ANOMALY.replace("explanation", "NULL AS explanation").replace(
        "suppressed_by", "NULL AS suppressed_by"
    )
    + " FROM mv_recent_anomalies ORDER BY timestamp DESC LIMIT :limit",
    # idx_anomalies_composite (model_id, timestamp DESC, ...). Ordering by model_id too
    # matches only this index, so the planner cannot pick the timestamp index and filter
    # the whole day of every model (110-142 ms at 10M rows for a model with none).
    "by_model_and_time": f"SELECT {_ANOMALY} FROM anomalies "
    "WHERE model_id = :model_id AND timestamp >= :since "
    "ORDER BY model_id DESC, timestamp DESC LIMIT :limit",
    # idx_anomalies_severity (severity DESC, timestamp DESC): read the top, stop.
    "top_severity": f"SELECT {_ANOMALY} FROM anomalies WHERE severity >= :min_severity "
    f"{_MOST_SEVERE} LIMIT :limit",
    # idx_anomalies_model_severity (model_id, severity DESC, timestamp DESC): the top of
    # each version of the model, merged. "model_id IN (versions)" would sort them all.
    "top_severity_model": f"SELECT a.* FROM models m CROSS JOIN LATERAL ("
    f"SELECT {_ANOMALY} FROM anomalies WHERE model_id = m.id "
    f"AND severity >= :min_severity {_MOST_SEVERE} LIMIT :limit) a "
    f"WHERE m.name = :model {_MOST_SEVERE} LIMIT :limit",
    # idx_anomalies_job_severity (job_id, severity DESC, timestamp DESC): the first
    # ``limit`` rows of the job in order; sorting all of a 10,000-anomaly job's rows
    # took 22 ms at 10M rows.
    "top_severity_job": f"SELECT {_ANOMALY} FROM anomalies WHERE job_id = :job_id "
    f"AND severity >= :min_severity {_MOST_SEVERE} LIMIT :limit",
    # models (live: a version trained a second ago is listed) + mv_model_performance.
    "model_performance": f"{_PERFORMANCE} "
    "WHERE (CAST(:name AS text) IS NULL OR m.name = :name) ORDER BY m.name, m.version DESC",
    # A page of the `models` listing: its versions by primary key, each joined to
    # uq_mv_model_performance_model; cost follows the page, not the registry.
    "model_performance_of": f"{_PERFORMANCE} WHERE m.id = ANY(CAST(:model_ids AS bigint[])) "
    "ORDER BY m.name, m.version DESC",
    # mv_dataset_summary.
    "dataset_summary": "SELECT dataset_id, name, format, n_rows, n_features, status, "
    "created_at, jobs, records_scored::bigint AS records_scored, "
    "anomalies_found::bigint AS anomalies_found, last_job_at "
    "FROM mv_dataset_summary ORDER BY created_at DESC",
    # mv_anomaly_counts_hourly (hour): 50 models x 25 hours, not ~330k anomalies.
    "counts_per_model": "SELECT model_id, sum(anomalies)::bigint AS anomalies, "
    "sum(severe)::bigint AS severe, max(max_severity) AS max_severity "
    "FROM mv_anomaly_counts_hourly WHERE hour >= date_trunc('hour', :since) "
    "GROUP BY model_id ORDER BY model_id",
}

_SQLITE_PERFORMANCE = (
    "SELECT m.id AS model_id, m.name, m.version, m.algorithm, m.active, "
    "m.n_features, m.threshold, m.onnx_sha256 IS NOT NULL AS onnx, m.artifact_sha256, "
    "m.created_at, count(j.id) AS jobs, "
    "count(CASE WHEN j.status = 'failed' THEN 1 END) AS jobs_failed, "
    "coalesce(sum(j.n_records), 0) AS records_scored, "
    "coalesce(sum(j.n_anomalies), 0) AS anomalies_found, "
    "coalesce(1.0 * sum(j.n_anomalies) / nullif(sum(j.n_records), 0), 0) AS anomaly_rate, "
    "NULL AS p95_duration_ms, max(j.finished_at) AS last_job_at "
    "FROM models m LEFT JOIN detection_jobs j ON j.model_id = m.id"
)

# The same on SQLite, answered from the tables.
SQLITE: dict[str, str] = {
    **POSTGRES,
    "recent_anomalies": f"SELECT {_ANOMALY} FROM anomalies "
    "WHERE timestamp >= :recent_since ORDER BY timestamp DESC LIMIT :limit",
    "top_severity_model": f"SELECT {_ANOMALY} FROM anomalies WHERE severity >= :min_severity "
    f"AND model_id IN (SELECT id FROM models WHERE name = :model) {_MOST_SEVERE} LIMIT :limit",
    "top_severity_job": f"SELECT {_ANOMALY} FROM anomalies WHERE job_id = :job_id "
    f"AND severity >= :min_severity {_MOST_SEVERE} LIMIT :limit",
    "model_performance": f"{_SQLITE_PERFORMANCE} WHERE (:name IS NULL OR m.name = :name) "
    "GROUP BY m.id ORDER BY m.name, m.version DESC",
    # An expanding parameter (see statement()): SQLite has no arrays.
    "model_performance_of": f"{_SQLITE_PERFORMANCE} WHERE m.id IN :model_ids "
    "GROUP BY m.id ORDER BY m.name, m.version DESC",
    "dataset_summary": "SELECT d.id AS dataset_id, d.name, d.format, d.n_rows, d.n_features, "
    "d.status, d.created_at, count(j.id) AS jobs, coalesce(sum(j.n_records), 0) "
    "AS records_scored, coalesce(sum(j.n_anomalies), 0) AS anomalies_found, "
    "max(j.finished_at) AS last_job_at FROM datasets d "
    "LEFT JOIN detection_jobs j ON j.dataset_name = d.name GROUP BY d.id "
    "ORDER BY d.created_at DESC",
    "counts_per_model": "SELECT model_id, count(*) AS anomalies, "
    "count(CASE WHEN severity >= 0.9 THEN 1 END) AS severe, max(severity) AS max_severity "
    "FROM anomalies WHERE timestamp >= :since GROUP BY model_id ORDER BY model_id",
}

_TIME_PARAMS = ("since", "recent_since")
_LIST_PARAMS = ("model_ids",)
_TIME_COLUMNS = ("timestamp", "created_at", "last_job_at")
_BOOL_COLUMNS = ("active", "onnx")
RECENT_DAYS = 7  # mv_recent_anomalies' window


# Where a listing of anomalies takes "suppressed or not" (``anomalies --suppressed``):
# after the predicate its index is read by, so the index stays the one it was shaped for.
_SUPPRESSED_AFTER = (
    "severity >= :min_severity",
    "timestamp >= :since",
    "timestamp >= :recent_since",
)


def with_suppressed(sql: str, suppressed: bool) -> str:
    """``sql`` keeping only the suppressed anomalies, or only the others."""
    condition = "suppressed_by IS NOT NULL" if suppressed else "suppressed_by IS NULL"
    for anchor in _SUPPRESSED_AFTER:
        if anchor in sql:
            return sql.replace(anchor, f"{anchor} AND {condition}", 1)
    raise ValueError(f"this read cannot tell suppressed anomalies apart: {sql[:60]}")


def statement(name: str, *, dialect: str, suppressed: bool | None = None) -> TextualSelect:
    """The named read, its time parameters and result columns typed (SQLite hands text
    back from a raw query); with ``suppressed``, only the anomalies that are (or are
    not) suppressed. The recent-anomalies view has no ``suppressed_by``: that filter
    reads the table by its timestamp index instead."""
    sql = (POSTGRES if dialect == "postgresql" else SQLITE)[name]
    if suppressed is not None:
        sql = with_suppressed(SQLITE[name] if name == "recent_anomalies" else sql, suppressed)
    clause: TextClause = text(sql)
    typed = [bindparam(t, type_=UtcDateTime()) for t in _TIME_PARAMS if f":{t}" in sql]
    if dialect != "postgresql":
        typed += [bindparam(p, expanding=True) for p in _LIST_PARAMS if f":{p}" in sql]
    if typed:
        clause = clause.bindparams(*typed)
    types: dict[str, Any] = {c: UtcDateTime() for c in _TIME_COLUMNS if c in sql}
    types |= {c: Boolean() for c in _BOOL_COLUMNS if c in sql}
    if "explanation" in sql:
        types["explanation"] = JSON()
    return clause.columns(**types)


class SqlReads:
    """Dashboard and CLI reads on the store's engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    def _rows(
        self, query: str, /, *, suppressed: bool | None = None, **params: Any
    ) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            sql = statement(query, dialect=self.dialect, suppressed=suppressed)
            result = conn.execute(sql, params)
            return [dict(row._mapping) for row in result]

    def recent_anomalies(
        self, *, now: datetime, limit: int = 50, suppressed: bool | None = None
    ) -> list[AnomalyRecord]:
        """Newest first, from the last refresh of ``mv_recent_anomalies`` (7 days); with
        ``suppressed``, from the table (the view does not know)."""
        since = now - timedelta(days=RECENT_DAYS)
        rows = self._rows(
            "recent_anomalies", limit=limit, recent_since=since, suppressed=suppressed
        )
        if suppressed is None and self.dialect == "postgresql":
            self._fill_suppressed_by(rows)
        return _anomalies(rows)

    def _fill_suppressed_by(self, rows: list[dict[str, Any]]) -> None:
        """``suppressed_by`` of the view's rows, by primary key (a page of them)."""
        ids = [row["id"] for row in rows]
        if not ids:
            return
        query = text(
            "SELECT id, suppressed_by FROM anomalies WHERE id = ANY(CAST(:ids AS bigint[]))"
        )
        with self.engine.connect() as conn:
            marks: dict[int, int | None] = {i: m for i, m in conn.execute(query, {"ids": ids})}
        for row in rows:
            row["suppressed_by"] = marks.get(row["id"])

    def anomalies_of_model(
        self,
        *,
        model_id: int,
        since: datetime,
        limit: int = 50,
        suppressed: bool | None = None,
    ) -> list[AnomalyRecord]:
        """One model version's anomalies since ``since``, newest first."""
        rows = self._rows(
            "by_model_and_time", model_id=model_id, since=since, limit=limit, suppressed=suppressed
        )
        return _anomalies(rows)

    def top_anomalies(
        self,
        *,
        min_severity: float = 0.0,
        model: str | None = None,
        job_id: str | None = None,
        limit: int = 20,
        suppressed: bool | None = None,
    ) -> list[AnomalyRecord]:
        """Most severe first (then newest), optionally of one model name or one job, and
        only the suppressed ones (``suppressed`` True) or only the others (False)."""
        params: dict[str, Any] = {
            "min_severity": min_severity,
            "limit": limit,
            "suppressed": suppressed,
        }
        if job_id is not None:
            rows = self._rows("top_severity_job", job_id=job_id, **params)
            return [a for a in _anomalies(rows) if model is None or a.model_id in self._ids(model)]
        if model is not None:
            return _anomalies(self._rows("top_severity_model", model=model, **params))
        return _anomalies(self._rows("top_severity", **params))

    def _ids(self, model: str) -> set[int]:
        return {m.model_id for m in self.model_performance(name=model)}

    def model_performance(self, *, name: str | None = None) -> list[ModelOverview]:
        """Every model version (newest first per name) with its detection record."""
        return [ModelOverview(**row) for row in self._rows("model_performance", name=name)]

    def model_performance_of(self, model_ids: Sequence[int]) -> list[ModelOverview]:
        """These model versions (newest first per name) with their detection records."""
        if not model_ids:
            return []
        rows = self._rows("model_performance_of", model_ids=list(model_ids))
        return [ModelOverview(**row) for row in rows]

    def dataset_summary(self) -> list[dict[str, Any]]:
        """Each dataset with the jobs that scored it (as of the last refresh)."""
        return self._rows("dataset_summary")

    def counts_per_model(self, *, since: datetime) -> list[dict[str, Any]]:
        """Anomalies per model version since ``since`` (to the hour on PostgreSQL, as of
        the last refresh of ``mv_anomaly_counts_hourly``, which keeps 48 hours)."""
        return self._rows("counts_per_model", since=since)


_ANOMALY_FIELDS = frozenset(AnomalyRecord.__dataclass_fields__)


def _anomalies(rows: list[dict[str, Any]]) -> list[AnomalyRecord]:
    return [AnomalyRecord(**{k: v for k, v in row.items() if k in _ANOMALY_FIELDS}) for row in rows]
