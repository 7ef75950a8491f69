"""The SQL store: one class for PostgreSQL and SQLite, SQLAlchemy 2 Core and ORM."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pynomaly_workers.adapters.stores.bulk import insert_anomalies
from pynomaly_workers.adapters.stores.tables import (
    AnomalyRow,
    DatasetRow,
    DetectionChunkRow,
    DetectionJobRow,
    ModelArtifactRow,
    ModelRow,
)
from pynomaly_workers.domain.errors import ArtifactCorrupt, UnknownDataset, UnknownModel
from pynomaly_workers.domain.jobs import JobStatus, JobSummary, TopAnomaly, fan_out_summary
from pynomaly_workers.domain.models import ModelRef, ModelVersion
from pynomaly_workers.domain.ports import (
    AnomalyBatch,
    AnomalyRecord,
    ChunkOutcome,
    ChunkResult,
    Dataset,
    JobFailure,
    JobRecord,
    JobResult,
    ModelDraft,
)
from pynomaly_workers.domain.scoring import ScoreStats

_OPEN_STATUSES = ("queued", "running")
_REGISTER_ATTEMPTS = 5


class SqlStore:
    """Implements every store role on one SQLAlchemy engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._final_upsert: Any = None  # built once: constructing it costs ~1 ms

    # -- models -----------------------------------------------------------------------
    def register_model(self, draft: ModelDraft, *, now: datetime) -> ModelVersion:
        """Next version number for the name; retried if two trainers race for it."""
        for attempt in range(_REGISTER_ATTEMPTS):
            try:
                return self._insert_model(draft, now=now)
            except IntegrityError:
                if attempt == _REGISTER_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _insert_model(self, draft: ModelDraft, *, now: datetime) -> ModelVersion:
        with Session(self.engine) as session, session.begin():
            if self.dialect == "postgresql":
                # Serialize registrations of one name: optimistic retries alone starve
                # when several trainers race (8 at once exhausted the 5 attempts).
                session.execute(select(func.pg_advisory_xact_lock(func.hashtext(draft.name))))
            for content, media in ((draft.artifact, "sklearn"), (draft.onnx, "onnx")):
                if content is not None:
                    self._put_artifact(session, content, media_type=media, now=now)
            latest = session.scalar(
                select(func.max(ModelRow.version)).where(ModelRow.name == draft.name)
            )
            session.execute(
                update(ModelRow).where(ModelRow.name == draft.name).values(active=False)
            )
            session.flush()
            row = ModelRow(
                name=draft.name,
                version=(latest or 0) + 1,
                algorithm=draft.algorithm,
                artifact_sha256=sha256(draft.artifact),
                onnx_sha256=sha256(draft.onnx) if draft.onnx is not None else None,
                n_features=draft.n_features,
                contamination=draft.stats.contamination,
                threshold=draft.stats.threshold,
                score_stats=draft.stats.to_dict(),
                params=draft.params,
                parity_max_error=draft.parity_max_error,
                parity_tolerance=draft.parity_tolerance,
                n_training_rows=draft.n_training_rows,
                active=True,
                created_at=now,
            )
            session.add(row)
            session.flush()
            return _model_version(row)

    def _put_artifact(
        self, session: Session, content: bytes, *, media_type: str, now: datetime
    ) -> None:
        digest = sha256(content)
        if session.get(ModelArtifactRow, digest) is None:
            session.add(
                ModelArtifactRow(
                    sha256=digest,
                    media_type=media_type,
                    size_bytes=len(content),
                    content=content,
                    created_at=now,
                )
            )
            session.flush()

    def get_model(self, ref: ModelRef) -> ModelVersion:
        query = select(ModelRow).where(ModelRow.name == ref.name)
        if ref.version is None:
            query = query.where(ModelRow.active.is_(True))
        else:
            query = query.where(ModelRow.version == ref.version)
        with Session(self.engine) as session:
            row = session.scalars(query).first()
            if row is None:
                raise UnknownModel(_unknown_model_message(session, ref))
            return _model_version(row)

    def list_models(self, *, name: str | None = None) -> list[ModelVersion]:
        query = select(ModelRow).order_by(ModelRow.name, ModelRow.version.desc())
        if name is not None:
            query = query.where(ModelRow.name == name)
        with Session(self.engine) as session:
            return [_model_version(row) for row in session.scalars(query)]

    def load_artifact(self, sha256_hex: str) -> bytes:
        with Session(self.engine) as session:
            content = session.scalar(
                select(ModelArtifactRow.content).where(ModelArtifactRow.sha256 == sha256_hex)
            )
        if content is None:
            raise ArtifactCorrupt(f"artifact {sha256_hex} is missing from model_artifacts")
        if sha256(content) != sha256_hex:
            raise ArtifactCorrupt(f"artifact {sha256_hex} does not match its sha256; refusing it")
        return bytes(content)

    # -- jobs -------------------------------------------------------------------------
    def enqueue_job(self, job_id: str, *, model: str, now: datetime) -> None:
        self._insert_job_if_absent(job_id, model=model, status="queued", now=now)

    def claim_job(self, job_id: str, *, model: str, now: datetime) -> JobRecord:
        self._insert_job_if_absent(job_id, model=model, status="queued", now=now)
        with self.engine.begin() as conn:
            conn.execute(
                update(DetectionJobRow)
                .where(
                    DetectionJobRow.job_id == job_id,
                    DetectionJobRow.status.in_(_OPEN_STATUSES),
                )
                .values(
                    status="running",
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
            conn.execute(
                update(DetectionJobRow)
                .where(DetectionJobRow.job_id == summary.job_id)
                .values(
                    status="succeeded",
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
            )

    def fail_job(self, job_id: str, *, error: str, error_type: str, now: datetime) -> None:
        self._insert_job_if_absent(job_id, model="", status="queued", now=now)
        with self.engine.begin() as conn:
            self._fail(conn, JobFailure(job_id, "", error, error_type), now=now)

    def _fail(self, conn: Connection, failure: JobFailure, *, now: datetime) -> None:
        failed = conn.execute(
            update(DetectionJobRow)
            .where(DetectionJobRow.job_id == failure.job_id, DetectionJobRow.status != "succeeded")
            .values(
                status="failed",
                error=failure.error[:4000],
                error_type=failure.error_type,
                finished_at=now,
            )
        ).rowcount
        if failed:
            conn.execute(delete(AnomalyRow).where(AnomalyRow.job_id == failure.job_id))

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
        with self.engine.begin() as conn:
            settled = self._upsert_final(conn, rows)
            fresh = [r for r in results if r.summary.job_id in settled]
            insert_anomalies(conn, [r.anomalies for r in fresh])
            failed = [f.job_id for f in failures if f.job_id in settled]
            if failed:
                conn.execute(delete(AnomalyRow).where(AnomalyRow.job_id.in_(failed)))
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
        is_open = or_(*(DetectionJobRow.status == status for status in _OPEN_STATUSES))
        return insert.on_conflict_do_update(
            index_elements=["job_id"], set_=updated, where=is_open
        ).returning(DetectionJobRow.job_id)

    def _jobs(self, conn: Connection, job_ids: list[str]) -> dict[str, JobRecord]:
        with Session(bind=conn) as session:
            query = select(DetectionJobRow).where(DetectionJobRow.job_id.in_(job_ids))
            return {row.job_id: _job_record(row) for row in session.scalars(query)}

    # -- fan-out ----------------------------------------------------------------------
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
                .where(DetectionJobRow.job_id == job_id, DetectionJobRow.status == "running")
                .values(
                    chunks_total=chunks_total,
                    task_id=task_id,
                    model_id=model_id,
                    dataset_name=dataset_name,
                )
            )

    def complete_chunk(
        self, job_id: str, chunk: ChunkResult, *, threshold: float, top_k: int, now: datetime
    ) -> ChunkOutcome:
        with Session(self.engine) as session, session.begin():
            job = session.scalars(
                select(DetectionJobRow).where(DetectionJobRow.job_id == job_id).with_for_update()
            ).one()
            if job.status != "running":
                return ChunkOutcome(job=_job_record(job), completed=False, counted=False)
            conn = session.connection()
            insert_anomalies(conn, [chunk.anomalies])
            counted = self._record_chunk(conn, job_id, chunk, now=now)
            totals = list(
                session.scalars(select(DetectionChunkRow).where(DetectionChunkRow.job_id == job_id))
            )
            done = len(totals) >= (job.chunks_total or 0) > 0
            if counted and done:
                self._finish_fan_out(
                    session, job, totals, threshold=threshold, top_k=top_k, now=now
                )
            return ChunkOutcome(job=_job_record(job), completed=counted and done, counted=counted)

    def _record_chunk(
        self, conn: Connection, job_id: str, chunk: ChunkResult, *, now: datetime
    ) -> bool:
        row = {
            "job_id": job_id,
            "chunk_index": chunk.chunk_index,
            "n_records": chunk.n_records,
            "n_anomalies": chunk.n_anomalies,
            "cache_hits": chunk.cache_hits,
            "top": {"top": [t.to_dict() for t in chunk.top]},
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
        threshold: float,
        top_k: int,
        now: datetime,
    ) -> None:
        model = session.get(ModelRow, job.model_id) if job.model_id is not None else None
        summary = fan_out_summary(
            job_id=job.job_id,
            model=model.name if model else (job.model_name or ""),
            model_version=model.version if model else 0,
            threshold=threshold,
            counts=[(c.n_records, c.n_anomalies, c.cache_hits) for c in chunks],
            tops=[[TopAnomaly.from_dict(t) for t in c.top["top"]] for c in chunks],
            top_k=top_k,
            duration_ms=(now - (job.started_at or now)).total_seconds() * 1000.0,
        )
        job.status = "succeeded"
        job.n_records = summary.n_records
        job.n_anomalies = summary.n_anomalies
        job.cache_hits = summary.cache_hits
        job.threshold = threshold
        job.summary = summary.to_dict()
        job.finished_at = now
        job.duration_ms = summary.duration_ms
        session.flush()

    def get_job(self, job_id: str) -> JobRecord | None:
        with Session(self.engine) as session:
            row = session.scalars(
                select(DetectionJobRow).where(DetectionJobRow.job_id == job_id)
            ).first()
            return _job_record(row) if row is not None else None

    def list_jobs(self, *, status: str | None = None, limit: int = 50) -> list[JobRecord]:
        query = select(DetectionJobRow).order_by(DetectionJobRow.created_at.desc()).limit(limit)
        if status is not None:
            query = query.where(DetectionJobRow.status == status)
        with Session(self.engine) as session:
            return [_job_record(row) for row in session.scalars(query)]

    # -- anomalies --------------------------------------------------------------------
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
            return [_anomaly_record(row) for row in session.scalars(query)]

    # -- datasets ---------------------------------------------------------------------
    def register_dataset(self, dataset: Dataset, *, now: datetime) -> Dataset:
        values = {
            "name": dataset.name,
            "uri": dataset.uri,
            "format": dataset.format,
            "n_rows": dataset.n_rows,
            "n_features": dataset.n_features,
            "columns": {"features": dataset.columns},
            "status": dataset.status,
            "created_at": now,
        }
        statement = self._insert(DatasetRow).values(**values)
        updates = {k: v for k, v in values.items() if k != "name"}
        with self.engine.begin() as conn:
            conn.execute(statement.on_conflict_do_update(index_elements=["name"], set_=updates))
        return self.get_dataset(dataset.name)

    def get_dataset(self, name: str) -> Dataset:
        with Session(self.engine) as session:
            row = session.scalars(select(DatasetRow).where(DatasetRow.name == name)).first()
            if row is None:
                raise UnknownDataset(
                    f"no dataset named {name!r}; register it with "
                    "'pynomaly-workers datasets add NAME PATH' or pass 'source' instead"
                )
            return _dataset(row)

    def list_datasets(self) -> list[Dataset]:
        with Session(self.engine) as session:
            rows = session.scalars(select(DatasetRow).order_by(DatasetRow.created_at.desc()))
            return [_dataset(row) for row in rows]

    # -- helpers ----------------------------------------------------------------------
    def _insert(self, table: Any) -> Any:
        """A dialect insert that knows ON CONFLICT (PostgreSQL and SQLite both do)."""
        if self.dialect == "postgresql":
            return postgresql.insert(table)
        if self.dialect == "sqlite":
            return sqlite.insert(table)
        return insert(table)


def sha256(content: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(content).hexdigest()


def _success_row(result: JobResult, now: datetime) -> dict[str, Any]:
    summary = result.summary
    return _final_row(
        summary.job_id,
        model=summary.model,
        now=now,
        status="succeeded",
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
        status="failed",
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


def _unknown_model_message(session: Session, ref: ModelRef) -> str:
    versions = session.scalars(
        select(ModelRow.version).where(ModelRow.name == ref.name).order_by(ModelRow.version)
    ).all()
    if not versions:
        return (
            f"no model named {ref.name!r}; train one with pynomaly.train "
            "('pynomaly-workers train') or check the name with 'pynomaly-workers models'"
        )
    if ref.version is None:
        return f"model {ref.name!r} has no active version; pass 'name@version'"
    return f"model {ref.name!r} has no version {ref.version}; it has versions {list(versions)}"


def _model_version(row: ModelRow) -> ModelVersion:
    return ModelVersion(
        id=row.id,
        name=row.name,
        version=row.version,
        algorithm=row.algorithm,
        artifact_sha256=row.artifact_sha256,
        onnx_sha256=row.onnx_sha256,
        n_features=row.n_features,
        stats=ScoreStats.from_dict(row.score_stats),
        params=dict(row.params),
        parity_max_error=row.parity_max_error,
        parity_tolerance=row.parity_tolerance,
        n_training_rows=row.n_training_rows,
        active=row.active,
        created_at=row.created_at,
    )


def _job_record(row: DetectionJobRow) -> JobRecord:
    status: JobStatus = row.status  # type: ignore[assignment]
    return JobRecord(
        job_id=row.job_id,
        status=status,
        model=row.model_name,
        n_records=row.n_records,
        n_anomalies=row.n_anomalies,
        cache_hits=row.cache_hits,
        threshold=row.threshold,
        error=row.error,
        error_type=row.error_type,
        summary=row.summary,
        attempts=row.attempts,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        duration_ms=row.duration_ms,
        task_id=row.task_id,
    )


def _anomaly_record(row: AnomalyRow) -> AnomalyRecord:
    return AnomalyRecord(
        job_id=row.job_id,
        record_index=row.record_index,
        model_id=row.model_id,
        record_id=row.record_id,
        timestamp=row.timestamp,
        score=row.score,
        severity=row.severity,
        status=row.status,
    )


def _dataset(row: DatasetRow) -> Dataset:
    return Dataset(
        name=row.name,
        uri=row.uri,
        format=row.format,
        n_rows=row.n_rows,
        n_features=row.n_features,
        status=row.status,
        created_at=row.created_at,
        columns=list(row.columns.get("features", [])),
    )
