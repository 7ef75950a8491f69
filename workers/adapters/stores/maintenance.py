"""Database maintenance: advisory locks, the run record, view refreshes, VACUUM/ANALYZE,
reindexing by measured bloat, retention, slow statements and the stale-job sweeper.

Every statement names objects from the fixed lists below (or, for REINDEX, indexes the
catalog lists on those tables), quoted by the dialect, never from input. On SQLite
(embedded mode) the PostgreSQL-only work is reported as skipped and the lock is a file
lock beside the database.
"""

from __future__ import annotations

import fcntl
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, insert, select, text
from sqlalchemy.exc import DBAPIError

from pynomaly_workers.adapters.stores.tables import MaintenanceRunRow, MetricRow, UtcDateTime
from pynomaly_workers.contract import FAILED, QUEUED, RUNNING, SUCCEEDED

MATERIALIZED_VIEWS = (
    "mv_recent_anomalies",
    "mv_model_performance",
    "mv_dataset_summary",
    "mv_anomaly_counts_hourly",
)
TABLES = (
    "anomalies",
    "detection_chunks",
    "detection_jobs",
    "models",
    "datasets",
    "metrics",
    "model_artifacts",
    "maintenance_runs",
)
# Advisory locks of this project: (namespace, crc32 of the task name).
_LOCK_NAMESPACE = 0x50594E  # "PYN"
# At 10M rows a batch of 10,000 held its locks for up to 1.15 s on a busy 2-core machine
# (the rows of a day are spread over the whole table); 5,000 keeps it well under 1 s.
_RETENTION_BATCH = 5_000
_FINAL = {"done": SUCCEEDED, "given_up": FAILED}
_REINDEX_MIN_PAGES = 128  # 1 MB: smaller indexes are rebuilt by VACUUM's page reuse

# Retention: (what, statement). Each deletes one batch, oldest first, in its own
# transaction, so no lock on a table is held for more than one batch.
RETENTION: tuple[tuple[str, str], ...] = (
    (
        "anomalies",
        "DELETE FROM anomalies WHERE id IN (SELECT id FROM anomalies "
        "WHERE detected_at < :cutoff ORDER BY detected_at LIMIT :batch)",
    ),
    (
        "jobs",
        "DELETE FROM detection_jobs WHERE id IN (SELECT id FROM detection_jobs "
        "WHERE created_at < :cutoff AND status IN (:done, :given_up) LIMIT :batch)",
    ),
    (
        # A chunk matters only while its job runs; old ones, and those of finished jobs.
        "chunks",
        "DELETE FROM detection_chunks WHERE (job_id, chunk_index) IN ("
        "SELECT c.job_id, c.chunk_index FROM detection_chunks c "
        "LEFT JOIN detection_jobs j ON j.job_id = c.job_id "
        "WHERE c.created_at < :cutoff OR j.status IN (:done, :given_up) LIMIT :batch)",
    ),
    (
        "metrics",
        "DELETE FROM metrics WHERE id IN (SELECT id FROM metrics "
        "WHERE timestamp < :cutoff LIMIT :batch)",
    ),
    (
        "maintenance_runs",
        "DELETE FROM maintenance_runs WHERE id IN (SELECT id FROM maintenance_runs "
        "WHERE started_at < :cutoff LIMIT :batch)",
    ),
    (
        "drift_windows",
        "DELETE FROM drift_windows WHERE (model_id, window_start) IN ("
        "SELECT model_id, window_start FROM drift_windows WHERE window_start < :cutoff "
        "LIMIT :batch)",
    ),
    (
        "drift_reports",
        "DELETE FROM drift_reports WHERE id IN (SELECT id FROM drift_reports "
        "WHERE checked_at < :cutoff LIMIT :batch)",
    ),
    (
        "shadow_results",
        "DELETE FROM shadow_results WHERE (job_id, chunk_index, challenger_model_id) IN ("
        "SELECT job_id, chunk_index, challenger_model_id FROM shadow_results "
        "WHERE created_at < :cutoff LIMIT :batch)",
    ),
    (
        "shadow_anomalies",
        "DELETE FROM shadow_anomalies WHERE (job_id, record_index, challenger_model_id) IN ("
        "SELECT job_id, record_index, challenger_model_id FROM shadow_anomalies "
        "WHERE created_at < :cutoff LIMIT :batch)",
    ),
)

# The catalog estimate of a B-tree's size: live entries x (average key width + 8 bytes
# of tuple header + 4 of line pointer), on 8 kB pages filled to the 90% fill factor.
_INDEX_SIZES = """
SELECT i.indexrelid::regclass::text AS name, c.relname AS index_name,
       t.relname AS table_name, c.relpages AS pages, c.reltuples AS tuples,
       coalesce((SELECT sum(s.avg_width) FROM pg_attribute a JOIN pg_stats s
                   ON s.schemaname = n.nspname AND s.tablename = t.relname
                  AND s.attname = a.attname
                 WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)), 8) AS key_width
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
JOIN pg_am am ON am.oid = c.relam
WHERE n.nspname = current_schema() AND t.relname IN :tables AND am.amname = 'btree'
  AND i.indisvalid
"""
_PGSTATTUPLE = "SELECT avg_leaf_density FROM {schema}.pgstatindex(CAST(:name AS regclass))"


class SqlMaintenance:
    """Maintenance operations on the store's engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_postgres = engine.dialect.name == "postgresql"

    def _quote(self, name: str) -> str:
        return str(self.engine.dialect.identifier_preparer.quote_identifier(name))

    def _autocommit(self) -> Connection:
        return self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    # -- locks and the record ---------------------------------------------------------
    @contextmanager
    def try_lock(self, name: str) -> Iterator[bool]:
        """Hold this task's lock for the block if nobody else does; yield whether it
        was taken. A PostgreSQL session advisory lock, released with the connection if
        the process dies."""
        if not self.is_postgres:
            with self._file_lock(name) as taken:
                yield taken
            return
        key = zlib.crc32(name.encode()) & 0x7FFFFFFF
        with self._autocommit() as conn:
            taken = bool(
                conn.execute(
                    text("SELECT pg_try_advisory_lock(:ns, :key)"),
                    {"ns": _LOCK_NAMESPACE, "key": key},
                ).scalar_one()
            )
            try:
                yield taken
            finally:
                if taken:
                    conn.execute(
                        text("SELECT pg_advisory_unlock(:ns, :key)"),
                        {"ns": _LOCK_NAMESPACE, "key": key},
                    )

    @contextmanager
    def _file_lock(self, name: str) -> Iterator[bool]:
        database = self.engine.url.database or ""
        folder = Path(database).parent if database not in ("", ":memory:") else Path(".")
        path = folder / f".maintenance-{name}.lock"
        with path.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def record_run(
        self,
        *,
        task: str,
        started_at: datetime,
        duration_ms: float,
        outcome: str,
        rows_affected: int,
        detail: dict[str, Any],
    ) -> None:
        """Append one row to ``maintenance_runs``."""
        with self.engine.begin() as conn:
            conn.execute(
                insert(MaintenanceRunRow).values(
                    task=task,
                    started_at=started_at,
                    duration_ms=duration_ms,
                    outcome=outcome,
                    rows_affected=rows_affected,
                    detail=detail,
                )
            )

    def runs(self, *, task: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The latest runs, newest first."""
        query = select(MaintenanceRunRow).order_by(MaintenanceRunRow.started_at.desc())
        if task is not None:
            query = query.where(MaintenanceRunRow.task == task)
        with self.engine.connect() as conn:
            rows = conn.execute(query.limit(limit)).mappings().all()
        return [dict(row) for row in rows]

    def record_metrics(self, rows: list[dict[str, Any]], *, now: datetime) -> int:
        """Append metric rows (``metric_name``, ``value``, ``labels``) at ``now``."""
        if not rows:
            return 0
        values = [{"timestamp": now, "granularity": "raw", **row} for row in rows]
        with self.engine.begin() as conn:
            conn.execute(insert(MetricRow), values)
        return len(values)

    # -- views, vacuum, reindex -------------------------------------------------------
    def refresh_views(self) -> dict[str, Any]:
        """REFRESH MATERIALIZED VIEW CONCURRENTLY each view, so readers are never
        blocked; a view never populated (CONCURRENTLY refuses it) is refreshed plainly."""
        if not self.is_postgres:
            return {"skipped": "materialized views exist on PostgreSQL only"}
        refreshed: dict[str, str] = {}
        with self._autocommit() as conn:
            # One core for the refresh: parallel workers would take the cores the
            # dashboards' readers need (p99 during a refresh must stay near idle).
            conn.execute(text("SET max_parallel_workers_per_gather = 0"))
            try:
                self._refresh_each(conn, refreshed)
            finally:
                conn.execute(text("RESET max_parallel_workers_per_gather"))
        return {"refreshed": refreshed}

    def _refresh_each(self, conn: Connection, refreshed: dict[str, str]) -> None:
        populated = {
            str(view): bool(ready)
            for view, ready in conn.execute(
                text(
                    "SELECT matviewname, ispopulated FROM pg_matviews "
                    "WHERE schemaname = current_schema()"
                )
            )
        }
        for view in MATERIALIZED_VIEWS:
            how = "concurrently" if populated.get(view) else "plain"
            option = "CONCURRENTLY " if how == "concurrently" else ""
            conn.execute(text(f"REFRESH MATERIALIZED VIEW {option}{self._quote(view)}"))
            refreshed[view] = how

    def vacuum_analyze(self) -> dict[str, Any]:
        """VACUUM (ANALYZE) each table; plain ANALYZE on SQLite."""
        with self._autocommit() as conn:
            if not self.is_postgres:
                conn.execute(text("ANALYZE"))
                return {"analyzed": list(TABLES)}
            for table in TABLES:
                conn.execute(text(f"VACUUM (ANALYZE) {self._quote(table)}"))
        return {"vacuumed": list(TABLES)}

    def index_bloat(self) -> dict[str, dict[str, Any]]:
        """Each B-tree index on our tables: its estimated bloat (the fraction of its pages
        that a rebuild would free) and how it was measured."""
        with self._autocommit() as conn:
            rows = conn.execute(
                text(_INDEX_SIZES).bindparams(bindparam("tables", expanding=True)),
                {"tables": list(TABLES)},
            ).mappings()
            schema = _pgstattuple_schema(conn)
            return {row["index_name"]: self._bloat(conn, row, schema) for row in rows}

    def _bloat(self, conn: Connection, row: Any, schema: str | None) -> dict[str, Any]:
        pages = int(row["pages"])
        if schema is not None:
            density = conn.execute(
                text(_PGSTATTUPLE.format(schema=self._quote(schema))), {"name": row["name"]}
            ).scalar_one()
            # 90 is a fresh B-tree's leaf density (its default fill factor).
            bloat = max(0.0, 1.0 - float(density or 0.0) / 90.0) if pages > 1 else 0.0
            return {"table": row["table_name"], "pages": pages, "bloat": bloat, "by": "pgstattuple"}
        tuples = max(float(row["tuples"]), 0.0)
        needed = tuples * (float(row["key_width"]) + 12.0) / (8192 * 0.9)
        bloat = max(0.0, 1.0 - (needed + 1.0) / pages) if pages > 1 else 0.0
        return {"table": row["table_name"], "pages": pages, "bloat": bloat, "by": "catalog"}

    def reindex(self, *, threshold: float) -> dict[str, Any]:
        """REINDEX INDEX CONCURRENTLY each index of 1 MB or more whose bloat is at least
        ``threshold``; leave the others alone."""
        if not self.is_postgres:
            return {"skipped": "REINDEX CONCURRENTLY exists on PostgreSQL only"}
        measured = self.index_bloat()
        chosen = [
            name
            for name, m in measured.items()
            if m["pages"] >= _REINDEX_MIN_PAGES and m["bloat"] >= threshold
        ]
        with self._autocommit() as conn:
            for name in chosen:
                conn.execute(text(f"REINDEX INDEX CONCURRENTLY {self._quote(name)}"))
        return {
            "reindexed": chosen,
            "threshold": threshold,
            "measured": {n: round(m["bloat"], 3) for n, m in measured.items()},
            "by": next((m["by"] for m in measured.values()), "catalog"),
        }

    # -- retention --------------------------------------------------------------------
    def retention(self, *, cutoff: datetime, batch: int | None = None) -> dict[str, Any]:
        """Delete what is older than ``cutoff``: anomalies by detection time, finished
        jobs, chunks, metrics, maintenance runs, drift counts and reports, and shadow
        scoring results; in batches, each its own short transaction. Reports the longest
        batch (the longest any lock was held)."""
        size = batch or _RETENTION_BATCH
        report: dict[str, Any] = {"cutoff": cutoff.isoformat()}
        longest = 0.0
        for what, statement in RETENTION:
            deleted, slowest = self._delete_in_batches(statement, cutoff=cutoff, batch=size)
            report[f"{what}_deleted"] = deleted
            longest = max(longest, slowest)
        report["longest_batch_ms"] = round(longest, 1)
        return report

    def _delete_in_batches(
        self, statement: str, *, cutoff: datetime, batch: int
    ) -> tuple[int, float]:
        import time

        query = text(statement).bindparams(bindparam("cutoff", type_=UtcDateTime()))
        total, slowest = 0, 0.0
        while True:
            started = time.perf_counter()
            with self.engine.begin() as conn:
                parameters = {"cutoff": cutoff, "batch": batch, **_FINAL}
                deleted = conn.execute(query, parameters).rowcount
            slowest = max(slowest, (time.perf_counter() - started) * 1000.0)
            total += deleted
            if deleted < batch:
                return total, slowest

    # -- slow statements --------------------------------------------------------------
    def slow_statements(self, *, limit: int) -> dict[str, Any]:
        """The ``limit`` statements of this database with the highest mean time, from
        pg_stat_statements; ``{"available": False, "reason": ...}`` when it cannot be
        read (SQLite, extension not created, library not preloaded)."""
        if not self.is_postgres:
            return _unavailable("pg_stat_statements is a PostgreSQL extension")
        with self.engine.connect() as conn:
            schema = conn.execute(
                text(
                    "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
                    "ON n.oid = e.extnamespace WHERE e.extname = 'pg_stat_statements'"
                )
            ).scalar()
            if schema is None:
                return _unavailable(
                    "the pg_stat_statements extension is not created in this database; "
                    "run 'CREATE EXTENSION pg_stat_statements' as a superuser "
                    "(the migration does when the role may)"
                )
            try:
                rows = conn.execute(
                    text(
                        "SELECT queryid, calls, total_exec_time, mean_exec_time, rows, "
                        f"left(query, 1000) AS query FROM {self._quote(schema)}"
                        ".pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database "
                        "WHERE datname = current_database()) "
                        "ORDER BY mean_exec_time DESC LIMIT :limit"
                    ),
                    {"limit": limit},
                ).mappings()
                return {"available": True, "statements": [dict(r) for r in rows]}
            except DBAPIError as exc:
                return _unavailable(
                    f"pg_stat_statements cannot be read ({str(exc.orig).strip()}); add it "
                    "to shared_preload_libraries and restart PostgreSQL"
                )

    # -- stale jobs -------------------------------------------------------------------
    def sweep_stale_jobs(
        self, *, stale_before: datetime, max_attempts: int, now: datetime, reason: str
    ) -> dict[str, Any]:
        """Jobs still ``running`` that started before ``stale_before``: back to ``queued``
        (for the broker's redelivery to claim) while attempts remain, else ``failed``;
        evaluation runs still ``running`` then: ``failed``."""
        params = {
            "stale": stale_before,
            "max": max_attempts,
            "now": now,
            "reason": reason,
            "requeue_as": QUEUED,
            "open_as": RUNNING,
            "fail_as": FAILED,
        }
        times = (bindparam("stale", type_=UtcDateTime()), bindparam("now", type_=UtcDateTime()))
        with self.engine.begin() as conn:
            requeued = (
                conn.execute(
                    text(
                        "UPDATE detection_jobs SET status = :requeue_as, started_at = NULL "
                        "WHERE status = :open_as AND started_at < :stale AND attempts < :max "
                        "RETURNING job_id"
                    ).bindparams(*times[:1]),
                    params,
                )
                .scalars()
                .all()
            )
            failed = (
                conn.execute(
                    text(
                        "UPDATE detection_jobs SET status = :fail_as, finished_at = :now, "
                        "error = :reason, error_type = 'StaleJob' "
                        "WHERE status = :open_as AND started_at < :stale AND attempts >= :max "
                        "RETURNING job_id"
                    ).bindparams(*times),
                    params,
                )
                .scalars()
                .all()
            )
            # Evaluation runs keep no attempt count: past the limit they are failed, to be
            # asked for again (a late redelivery finds the run finished and does nothing).
            evaluations = (
                conn.execute(
                    text(
                        "UPDATE evaluation_runs SET status = :fail_as, finished_at = :now, "
                        "error = :reason, error_type = 'StaleJob' "
                        "WHERE status = :open_as AND started_at < :stale RETURNING job_id"
                    ).bindparams(*times),
                    params,
                )
                .scalars()
                .all()
            )
        return {
            "requeued": sorted(requeued),
            FAILED: sorted(failed),
            "evaluations_failed": sorted(evaluations),
        }


def _unavailable(reason: str) -> dict[str, Any]:
    return {"available": False, "reason": reason}


def _pgstattuple_schema(conn: Connection) -> str | None:
    return conn.execute(
        text(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
            "ON n.oid = e.extnamespace WHERE e.extname = 'pgstattuple'"
        )
    ).scalar()
