"""Evaluation runs on SQL: each chunk's scores stored once, the figures stored once."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from pynomaly_workers.adapters.stores.sql.base import SqlBase
from pynomaly_workers.adapters.stores.tables import (
    EvaluationChunkRow,
    EvaluationRow,
    EvaluationRunRow,
    ModelRow,
)
from pynomaly_workers.contract import FAILED, OPEN_STATUSES, QUEUED, RUNNING, SUCCEEDED, JobStatus
from pynomaly_workers.domain.evaluation import Evaluation
from pynomaly_workers.domain.ports import (
    EvaluationChunk,
    EvaluationRun,
    ScoredRecords,
    StoredEvaluation,
)

_SCORES = np.dtype("<f8")
_LABELS = np.dtype("u1")


class SqlEvaluationStore(SqlBase):
    """:class:`~pynomaly_workers.domain.ports.EvaluationStore` on SQL."""

    def enqueue_evaluation(
        self, job_id: str, *, model: str, dataset: str, purpose: str, actor: str, now: datetime
    ) -> None:
        values = _new_run(job_id, model=model, dataset=dataset, purpose=purpose, actor=actor)
        statement = self._insert(EvaluationRunRow).values(**values, created_at=now)
        with self.engine.begin() as conn:
            conn.execute(statement.on_conflict_do_nothing(index_elements=["job_id"]))

    def claim_evaluation(
        self, job_id: str, *, model: str, dataset: str, purpose: str, actor: str, now: datetime
    ) -> EvaluationRun:
        self.enqueue_evaluation(
            job_id, model=model, dataset=dataset, purpose=purpose, actor=actor, now=now
        )
        with Session(self.engine) as session, session.begin():
            row = session.get(EvaluationRunRow, job_id, with_for_update=True)
            assert row is not None
            if row.status in OPEN_STATUSES:
                row.status = RUNNING
                row.started_at = row.started_at or now
            return _run(row)

    def start_evaluation(self, job_id: str, *, model_id: int, chunks_total: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(EvaluationRunRow)
                .where(EvaluationRunRow.job_id == job_id, EvaluationRunRow.status == RUNNING)
                .values(model_id=model_id, chunks_total=chunks_total)
            )

    def fail_evaluation(
        self, job_id: str, *, error: str, error_type: str, now: datetime
    ) -> EvaluationRun:
        with Session(self.engine) as session, session.begin():
            row = session.get(EvaluationRunRow, job_id, with_for_update=True)
            if row is None:
                raise LookupError(f"no evaluation run {job_id!r}")
            if row.status in OPEN_STATUSES:
                row.status, row.error, row.error_type = FAILED, error[:4000], error_type
                row.finished_at = now
                # a failed run keeps no scores
                session.execute(
                    delete(EvaluationChunkRow).where(EvaluationChunkRow.job_id == job_id)
                )
            return _run(row)

    def add_evaluation_chunk(self, job_id: str, chunk: EvaluationChunk, *, now: datetime) -> bool:
        ids = {"ids": list(chunk.record_ids)} if chunk.record_ids is not None else None
        row = {
            "job_id": job_id,
            "chunk_index": chunk.chunk_index,
            "record_offset": chunk.offset,
            "n_records": len(chunk.scores),
            "n_positive": int(np.count_nonzero(chunk.labels)),
            "scores": np.ascontiguousarray(chunk.scores, dtype=_SCORES).tobytes(),
            "labels": np.ascontiguousarray(chunk.labels, dtype=_LABELS).tobytes(),
            "record_ids": ids,
            "created_at": now,
        }
        statement = self._insert(EvaluationChunkRow).values(**row)
        with Session(self.engine) as session, session.begin():
            run = session.get(EvaluationRunRow, job_id, with_for_update=True)
            if run is None or run.status != RUNNING:
                return False
            session.execute(
                statement.on_conflict_do_nothing(index_elements=["job_id", "chunk_index"])
            )
            done = session.scalar(select(func.count()).where(EvaluationChunkRow.job_id == job_id))
            # Every chunk in, whichever delivery this is: a redelivered last chunk (its
            # worker died before finishing the run) finishes it too.
            return int(done or 0) >= (run.chunks_total or 0) > 0

    def evaluation_scores(self, job_id: str) -> ScoredRecords:
        query = (
            select(EvaluationChunkRow)
            .where(EvaluationChunkRow.job_id == job_id)
            .order_by(EvaluationChunkRow.chunk_index)
        )
        with Session(self.engine) as session:
            rows = list(session.scalars(query))
        return _scored(rows)

    def finish_evaluation(
        self, job_id: str, evaluation: Evaluation, *, now: datetime
    ) -> EvaluationRun:
        with Session(self.engine) as session, session.begin():
            run = session.get(EvaluationRunRow, job_id, with_for_update=True)
            if run is None:
                raise LookupError(f"no evaluation run {job_id!r}")
            if run.status != RUNNING or run.model_id is None:
                return _run(run)
            values = {
                "model_id": run.model_id,
                "dataset_name": run.dataset_name,
                "job_id": job_id,
                "threshold": evaluation.threshold,
                "n_records": evaluation.n_records,
                "n_positive": evaluation.n_positive,
                "metrics": dict(evaluation.metrics),
                "purpose": run.purpose,
                "actor": run.actor,
                "created_at": now,
            }
            session.execute(
                self._insert(EvaluationRow)
                .values(**values)
                .on_conflict_do_nothing(index_elements=["job_id"])
            )
            run.status, run.finished_at = SUCCEEDED, now
            return _run(run)

    def get_evaluation_run(self, job_id: str) -> EvaluationRun | None:
        with Session(self.engine) as session:
            row = session.get(EvaluationRunRow, job_id)
            return _run(row) if row is not None else None

    def evaluation_of(self, job_id: str) -> StoredEvaluation | None:
        found = self._evaluations(EvaluationRow.job_id == job_id, limit=1)
        return found[0] if found else None

    def list_evaluations(self, name: str, *, limit: int = 50) -> list[StoredEvaluation]:
        return self._evaluations(ModelRow.name == name, limit=limit)

    def _evaluations(self, condition: Any, *, limit: int) -> list[StoredEvaluation]:
        query = (
            select(EvaluationRow, ModelRow.name, ModelRow.version)
            .join(ModelRow, ModelRow.id == EvaluationRow.model_id)
            .where(condition)
            .order_by(EvaluationRow.created_at.desc(), EvaluationRow.id.desc())
            .limit(limit)
        )
        with Session(self.engine) as session:
            return [
                _stored(row, name=name, version=version)
                for row, name, version in session.execute(query)
            ]


def _new_run(job_id: str, *, model: str, dataset: str, purpose: str, actor: str) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "status": QUEUED,
        "model": model,
        "dataset_name": dataset,
        "purpose": purpose,
        "actor": actor,
    }


def _run(row: EvaluationRunRow) -> EvaluationRun:
    status: JobStatus = row.status  # type: ignore[assignment]
    return EvaluationRun(
        job_id=row.job_id,
        status=status,
        model=row.model,
        dataset_name=row.dataset_name,
        purpose=row.purpose,
        actor=row.actor,
        model_id=row.model_id,
        chunks_total=row.chunks_total,
        error=row.error,
        error_type=row.error_type,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


def _scored(rows: list[EvaluationChunkRow]) -> ScoredRecords:
    """The chunks' arrays end to end, each record at its place in the file."""
    index = [np.arange(r.record_offset, r.record_offset + r.n_records) for r in rows]
    scores = [np.frombuffer(r.scores, dtype=_SCORES) for r in rows]
    labels = [np.frombuffer(r.labels, dtype=_LABELS) for r in rows]
    with_ids = all(r.record_ids is not None for r in rows)
    ids: list[str | None] | None = (
        [i for r in rows for i in (r.record_ids or {}).get("ids", [])] if with_ids else None
    )
    return ScoredRecords(
        record_index=np.concatenate(index).astype(np.int64) if rows else np.zeros(0, np.int64),
        scores=np.concatenate(scores).astype(np.float64) if rows else np.zeros(0),
        labels=np.concatenate(labels).astype(np.bool_) if rows else np.zeros(0, np.bool_),
        record_ids=ids if rows else None,
    )


def _stored(row: EvaluationRow, *, name: str, version: int) -> StoredEvaluation:
    return StoredEvaluation(
        id=row.id,
        job_id=row.job_id,
        model_name=name,
        model_version=version,
        dataset_name=row.dataset_name,
        threshold=row.threshold,
        n_records=row.n_records,
        n_positive=row.n_positive,
        metrics={k: float(v) for k, v in row.metrics.items()},
        purpose=row.purpose,
        actor=row.actor,
        created_at=row.created_at,
    )
