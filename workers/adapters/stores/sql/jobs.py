"""Detection job records on SQL: the job lifecycle and settling batches of small jobs.

A job moves queued -> running -> succeeded | failed, once: every write below is guarded
by the job's current status, so a redelivered message can never move a finished job.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, or_, select, update
from sqlalchemy.orm import Session

from pynomaly_workers.adapters.stores.bulk import delete_anomalies, insert_anomalies
from pynomaly_workers.adapters.stores.sql.base import SqlBase
from pynomaly_workers.adapters.stores.sql.inbox import queue_for_incidents
from pynomaly_workers.adapters.stores.sql.rows import job_record
from pynomaly_workers.adapters.stores.tables import DetectionJobRow
from pynomaly_workers.contract import (
    FAILED,
    OPEN_STATUSES,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    JobStatus,
)
from pynomaly_workers.domain.jobs import JobSummary
from pynomaly_workers.domain.ports import JobFailure, JobRecord, JobResult


class SqlJobStore(SqlBase):
    """The job-lifecycle part of :class:`~pynomaly_workers.domain.ports.JobStore`."""

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self._final_upsert: Any = None  # built once: constructing it costs ~1 ms

    def enqueue_job(self, job_id: str, *, model: str, now: datetime) -> None:
        self._insert_job_if_absent(job_id, model=model, status=QUEUED, now=now)

    def claim_job(self, job_id: str, *, model: str, now: datetime) -> JobRecord:
        self._insert_job_if_absent(job_id, model=model, status=QUEUED, now=now)
        with self.engine.begin() as conn:
            conn.execute(
                update(DetectionJobRow)
                .where(
                    DetectionJobRow.job_id == job_id,
                    DetectionJobRow.status.in_(OPEN_STATUSES),
                )
                .values(
                    status=RUNNING,
                    attempts=DetectionJobRow.attempts + 1,
                    started_at=func.coalesce(DetectionJobRow.started_at, now),
                    model_name=model,
                )
            )
        job = self.get_job(job_id)
        assert job is not None
        return job

    def _insert_job_if_absent(
        self, job_id: str, *, model: str, status: JobStatus, now: datetime
    ) -> None:
        values = {"job_id": job_id, "status": status, "model_name": model, "created_at": now}
        statement = self._insert(DetectionJobRow).values(**values)
        with self.engine.begin() as conn:
            conn.execute(statement.on_conflict_do_nothing(index_elements=["job_id"]))

    def complete_job(
        self, summary: JobSummary, *, model_id: int, now: datetime, extra: dict[str, Any]
    ) -> None:
        with self.engine.begin() as conn:
            completed = conn.execute(
                update(DetectionJobRow)
                .where(
                    DetectionJobRow.job_id == summary.job_id, DetectionJobRow.status != SUCCEEDED
                )
                .values(
                    status=SUCCEEDED,
                    model_id=model_id,
                    n_records=summary.n_records,
                    n_anomalies=summary.n_anomalies,
                    cache_hits=summary.cache_hits,
                    threshold=summary.threshold,
                    summary=summary.to_dict(),
                    error=None,
                    error_type=None,
                    finished_at=now,
                    duration_ms=summary.duration_ms,
                    **extra,
                )
            ).rowcount
            if completed and summary.n_notifiable:  # all suppressed: nothing to fold
                queue_for_incidents(conn, [summary.job_id], now=now)

    def fail_job(self, job_id: str, *, error: str, error_type: str, now: datetime) -> JobRecord:
        self._insert_job_if_absent(job_id, model="", status=QUEUED, now=now)
        with self.engine.begin() as conn:
            self._fail(conn, JobFailure(job_id, "", error, error_type), now=now)
        job = self.get_job(job_id)
        assert job is not None
        return job

    def _fail(self, conn: Connection, failure: JobFailure, *, now: datetime) -> None:
        failed = conn.execute(
            update(DetectionJobRow)
            .where(DetectionJobRow.job_id == failure.job_id, DetectionJobRow.status != SUCCEEDED)
            .values(
                status=FAILED,
                error=failure.error[:4000],
                error_type=failure.error_type,
                finished_at=now,
            )
        ).rowcount
        if failed:
            delete_anomalies(conn, [failure.job_id])

    # -- batches of small jobs --------------------------------------------------------
    def settle_jobs(
        self, results: Sequence[JobResult], failures: Sequence[JobFailure], *, now: datetime
    ) -> dict[str, JobRecord]:
        rows = [_success_row(r, now) for r in results] + [_failure_row(f, now) for f in failures]
        if not rows:
            return {}
        # In job_id order: two workers settling overlapping batches in different orders
        # would otherwise deadlock on the row locks the upsert takes.
        rows.sort(key=lambda row: str(row["job_id"]))
        only_rows = not failures and not any(len(r.anomalies) for r in results)
        if only_rows and self.dialect == "postgresql":
            # Nothing to write but the job rows: one statement, atomic on its own, sent
            # in autocommit mode. BEGIN and COMMIT would each cost a round trip more.
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                return self._settle(conn, rows, results, failures, now=now)
        with self.engine.begin() as conn:
            return self._settle(conn, rows, results, failures, now=now)

    def _settle(
        self,
        conn: Connection,
        rows: list[dict[str, Any]],
        results: Sequence[JobResult],
        failures: Sequence[JobFailure],
        *,
        now: datetime,
    ) -> dict[str, JobRecord]:
        """Write the final rows, then the anomalies of the jobs this call settled (and
        drop those of its failed ones); return the jobs that had finished before."""
        settled = self._upsert_final(conn, rows)
        fresh = [r for r in results if r.summary.job_id in settled]
        insert_anomalies(conn, [r.anomalies for r in fresh])
        # A job whose anomalies were all suppressed has nothing for incidents to fold.
        folded = [r.summary.job_id for r in fresh if len(r.anomalies) > r.anomalies.n_suppressed]
        queue_for_incidents(conn, folded, now=now)
        failed = [f.job_id for f in failures if f.job_id in settled]
        if failed:
            delete_anomalies(conn, failed)
        unchanged = [str(row["job_id"]) for row in rows if row["job_id"] not in settled]
        return self._jobs(conn, unchanged) if unchanged else {}

    def _upsert_final(self, conn: Connection, rows: list[dict[str, Any]]) -> set[str]:
        """Insert each job in its final state, or move an open (queued/running) one to
        it, in one statement; return the job ids written. A job that had finished
        already is left as it is and not returned."""
        if self._final_upsert is None:
            self._final_upsert = self._build_final_upsert(list(rows[0]))
        return {str(job_id) for job_id in conn.execute(self._final_upsert, rows).scalars()}

    def _build_final_upsert(self, columns: list[str]) -> Any:
        insert = self._insert(DetectionJobRow)
        excluded = insert.excluded
        updated = {
            column: getattr(excluded, column)
            for column in columns
            if column not in ("job_id", "created_at", "started_at", "attempts")
        }
        updated["attempts"] = DetectionJobRow.attempts + 1
        updated["started_at"] = func.coalesce(DetectionJobRow.started_at, excluded.started_at)
        # An OR, not IN: an expanding IN parameter cannot be used with executemany().
        is_open = or_(*(DetectionJobRow.status == status for status in OPEN_STATUSES))
        return insert.on_conflict_do_update(
            index_elements=["job_id"], set_=updated, where=is_open
        ).returning(DetectionJobRow.job_id)

    def _jobs(self, conn: Connection, job_ids: list[str]) -> dict[str, JobRecord]:
        with Session(bind=conn) as session:
            query = select(DetectionJobRow).where(DetectionJobRow.job_id.in_(job_ids))
            return {row.job_id: job_record(row) for row in session.scalars(query)}

    def get_job(self, job_id: str) -> JobRecord | None:
        with Session(self.engine) as session:
            row = session.scalars(
                select(DetectionJobRow).where(DetectionJobRow.job_id == job_id)
            ).first()
            return job_record(row) if row is not None else None

    def list_jobs(self, *, status: str | None = None, limit: int = 50) -> list[JobRecord]:
        query = select(DetectionJobRow).order_by(DetectionJobRow.created_at.desc()).limit(limit)
        if status is not None:
            query = query.where(DetectionJobRow.status == status)
        with Session(self.engine) as session:
            return [job_record(row) for row in session.scalars(query)]


def _success_row(result: JobResult, now: datetime) -> dict[str, Any]:
    summary = result.summary
    return _final_row(
        summary.job_id,
        model=summary.model,
        now=now,
        status=SUCCEEDED,
        model_id=result.model_id,
        dataset_name=result.dataset_name,
        n_records=summary.n_records,
        n_anomalies=summary.n_anomalies,
        cache_hits=summary.cache_hits,
        threshold=summary.threshold,
        summary=summary.to_dict(),
        duration_ms=summary.duration_ms,
    )


def _failure_row(failure: JobFailure, now: datetime) -> dict[str, Any]:
    return _final_row(
        failure.job_id,
        model=failure.model,
        now=now,
        status=FAILED,
        error=failure.error[:4000],
        error_type=failure.error_type,
    )


def _final_row(job_id: str, *, model: str, now: datetime, **values: Any) -> dict[str, Any]:
    """Every column of a settled job row (executemany needs the same keys in each)."""
    row: dict[str, Any] = dict.fromkeys(
        (
            "model_id",
            "dataset_name",
            "n_records",
            "n_anomalies",
            "cache_hits",
            "threshold",
            "summary",
            "duration_ms",
            "error",
            "error_type",
        )
    )
    row.update(
        job_id=job_id,
        model_name=model[:140],
        created_at=now,
        started_at=now,
        finished_at=now,
        attempts=1,
        **values,
    )
    return row
