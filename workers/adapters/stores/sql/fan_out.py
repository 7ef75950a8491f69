"""Fanned-out jobs on SQL: each chunk counts once; the last one completes the job."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, func, select, update
from sqlalchemy.orm import Session

from pynomaly_workers.adapters.stores.bulk import insert_chunk_anomalies
from pynomaly_workers.adapters.stores.sql.inbox import queue_for_incidents
from pynomaly_workers.adapters.stores.sql.jobs import SqlJobStore
from pynomaly_workers.adapters.stores.sql.rows import job_record
from pynomaly_workers.adapters.stores.tables import DetectionChunkRow, DetectionJobRow
from pynomaly_workers.contract import RUNNING, SUCCEEDED
from pynomaly_workers.domain.jobs import ChunkTally, TopAnomaly, summarize
from pynomaly_workers.domain.models import ModelVersion
from pynomaly_workers.domain.ports import ChunkOutcome, ChunkResult, JobProgress


class SqlFanOutStore(SqlJobStore):
    """The fan-out part of :class:`~pynomaly_workers.domain.ports.JobStore`."""

    def start_fan_out(
        self,
        job_id: str,
        *,
        task_id: str,
        chunks_total: int,
        model_id: int,
        dataset_name: str | None,
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(DetectionJobRow)
                .where(DetectionJobRow.job_id == job_id, DetectionJobRow.status == RUNNING)
                .values(
                    chunks_total=chunks_total,
                    task_id=task_id,
                    model_id=model_id,
                    dataset_name=dataset_name,
                )
            )

    def job_progress(self, job_id: str) -> JobProgress | None:
        chunks = select(
            func.count(), func.coalesce(func.sum(DetectionChunkRow.n_records), 0)
        ).where(DetectionChunkRow.job_id == job_id)
        with self.engine.connect() as conn:
            total = conn.scalar(
                select(DetectionJobRow.chunks_total).where(DetectionJobRow.job_id == job_id)
            )
            if total is None:
                return None
            done, records = conn.execute(chunks).one()
        return JobProgress(chunks_done=int(done), chunks_total=total, records=int(records))

    def complete_chunk(
        self, job_id: str, chunk: ChunkResult, *, version: ModelVersion, top_k: int, now: datetime
    ) -> ChunkOutcome:
        # The chunk's own row comes first: its unique key is what makes a redelivered
        # chunk count (and write) once, so a chunk that counts may COPY its anomalies
        # straight into the table. The job row is locked last, only to see whether this
        # chunk completes the job: a worker writing a chunk does not hold up the other
        # worker's chunk of the same job, as it did while it held the job row through
        # its COPY.
        with Session(self.engine) as session, session.begin():
            conn = session.connection()
            counted = self._record_chunk(conn, job_id, chunk, now=now)
            if counted:
                insert_chunk_anomalies(conn, chunk.anomalies)
            job = session.scalars(
                select(DetectionJobRow).where(DetectionJobRow.job_id == job_id).with_for_update()
            ).one()
            if job.status != RUNNING:
                # Failed or cancelled meanwhile: this chunk leaves no trace (a failed
                # job has no anomalies).
                record = job_record(job)
                session.rollback()
                return ChunkOutcome(job=record, completed=False)
            # Counted only now, with the job row held: a chunk committed before the lock
            # was granted is visible to this statement, so the last chunk sees them all.
            totals = list(
                session.scalars(select(DetectionChunkRow).where(DetectionChunkRow.job_id == job_id))
            )
            done = len(totals) >= (job.chunks_total or 0) > 0
            if counted and done:
                self._finish_fan_out(session, job, totals, version=version, top_k=top_k, now=now)
            return ChunkOutcome(job=job_record(job), completed=counted and done)

    def _record_chunk(
        self, conn: Connection, job_id: str, chunk: ChunkResult, *, now: datetime
    ) -> bool:
        row = {
            "job_id": job_id,
            "chunk_index": chunk.chunk_index,
            "n_records": chunk.tally.n_records,
            "n_anomalies": chunk.tally.n_anomalies,
            "cache_hits": chunk.tally.cache_hits,
            # The suppressed count rides in the JSON column (no column of its own in 0011).
            "top": {
                "top": [t.to_dict() for t in chunk.tally.top],
                "n_suppressed": chunk.tally.n_suppressed,
            },
            "created_at": now,
        }
        # RETURNING, not rowcount: psycopg reports -1 for an INSERT once SQLAlchemy has
        # closed the cursor, which would count every redelivered chunk again.
        statement = (
            self._insert(DetectionChunkRow)
            .values(**row)
            .on_conflict_do_nothing(index_elements=["job_id", "chunk_index"])
            .returning(DetectionChunkRow.chunk_index)
        )
        return conn.execute(statement).first() is not None

    def _finish_fan_out(
        self,
        session: Session,
        job: DetectionJobRow,
        chunks: list[DetectionChunkRow],
        *,
        version: ModelVersion,
        top_k: int,
        now: datetime,
    ) -> None:
        tallies = [
            ChunkTally(
                n_records=c.n_records,
                n_anomalies=c.n_anomalies,
                cache_hits=c.cache_hits,
                top=[TopAnomaly.from_dict(t) for t in c.top["top"]],
                n_suppressed=int(c.top.get("n_suppressed", 0)),
            )
            for c in chunks
        ]
        elapsed_ms = (now - (job.started_at or now)).total_seconds() * 1000.0
        summary = summarize(job.job_id, version, tallies, top_k=top_k, duration_ms=elapsed_ms)
        job.status = SUCCEEDED
        job.n_records = summary.n_records
        job.n_anomalies = summary.n_anomalies
        job.cache_hits = summary.cache_hits
        job.threshold = summary.threshold
        job.summary = summary.to_dict()
        job.finished_at = now
        job.duration_ms = summary.duration_ms
        session.flush()
        if summary.n_notifiable:  # all suppressed: nothing to fold
            queue_for_incidents(session.connection(), [job.job_id], now=now)
