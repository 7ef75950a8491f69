"""The in-memory store: every store role in dicts, for unit tests of the services.

It follows :class:`~pynomaly_workers.adapters.stores.sql.SqlStore` rule for rule; the
contract tests in ``tests/integration/test_store_contract.py`` run the same assertions
against both, so a fake that drifts from the real store fails there first.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from pynomaly_workers.domain.errors import ArtifactCorrupt, UnknownDataset, UnknownModel
from pynomaly_workers.domain.jobs import JobStatus, JobSummary, fan_out_summary
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

_FINISHED: frozenset[JobStatus] = frozenset({"succeeded", "failed"})


class InMemoryStore:
    """Implements ``Store`` in process memory; one lock makes each call atomic."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model_ids = itertools.count(1)
        self.models: dict[int, ModelVersion] = {}
        # Public so tests can corrupt an artifact the way a bad disk would.
        self.artifacts: dict[str, bytes] = {}
        self.jobs: dict[str, JobRecord] = {}
        # Columns the JobRecord does not expose: model_id, dataset_name, chunks_total.
        self.job_columns: dict[str, dict[str, Any]] = {}
        # Recorded chunks of fanned-out jobs, by job_id then chunk_index.
        self.chunks: dict[str, dict[int, ChunkResult]] = {}
        self.anomalies: dict[tuple[str, int], AnomalyRecord] = {}
        self.datasets: dict[str, Dataset] = {}

    # -- models -----------------------------------------------------------------------
    def register_model(self, draft: ModelDraft, *, now: datetime) -> ModelVersion:
        """Next version number for the name; it becomes the only active one."""
        with self._lock:
            for content in (draft.artifact, draft.onnx):
                if content is not None:
                    self.artifacts.setdefault(_sha256(content), bytes(content))
            versions = [m.version for m in self.models.values() if m.name == draft.name]
            for model_id, model in self.models.items():
                if model.name == draft.name and model.active:
                    self.models[model_id] = replace(model, active=False)
            model = _model_version(
                draft, model_id=next(self._model_ids), version=max(versions, default=0) + 1, now=now
            )
            self.models[model.id] = model
            return model

    def get_model(self, ref: ModelRef) -> ModelVersion:
        with self._lock:
            named = [m for m in self.models.values() if m.name == ref.name]
        for model in named:
            if model.version == ref.version or (ref.version is None and model.active):
                return model
        raise UnknownModel(_unknown_model_message(ref, sorted(m.version for m in named)))

    def list_models(self, *, name: str | None = None) -> list[ModelVersion]:
        with self._lock:
            models = [m for m in self.models.values() if name is None or m.name == name]
        return sorted(models, key=lambda m: (m.name, -m.version))

    def load_artifact(self, sha256: str) -> bytes:
        with self._lock:
            content = self.artifacts.get(sha256)
        if content is None:
            raise ArtifactCorrupt(f"artifact {sha256} is missing from model_artifacts")
        if _sha256(content) != sha256:
            raise ArtifactCorrupt(f"artifact {sha256} does not match its sha256; refusing it")
        return content

    # -- jobs -------------------------------------------------------------------------
    def enqueue_job(self, job_id: str, *, model: str, now: datetime) -> None:
        with self._lock:
            self._insert_job_if_absent(job_id, model=model, now=now)

    def claim_job(self, job_id: str, *, model: str, now: datetime) -> JobRecord:
        with self._lock:
            job = self._insert_job_if_absent(job_id, model=model, now=now)
            if job.status not in _FINISHED:
                job = replace(
                    job,
                    status="running",
                    attempts=job.attempts + 1,
                    started_at=job.started_at or now,
                    model=model,
                )
                self.jobs[job_id] = job
            return job

    def _insert_job_if_absent(self, job_id: str, *, model: str, now: datetime) -> JobRecord:
        return self.jobs.setdefault(
            job_id, JobRecord(job_id=job_id, status="queued", model=model, created_at=now)
        )

    def complete_job(
        self, summary: JobSummary, *, model_id: int, now: datetime, extra: dict[str, Any]
    ) -> None:
        with self._lock:
            job = self.jobs.get(summary.job_id)
            if job is None:  # like an UPDATE that matches no row
                return
            self.jobs[summary.job_id] = _succeeded(job, summary, now=now)
            self.job_columns.setdefault(summary.job_id, {}).update(model_id=model_id, **extra)

    def fail_job(self, job_id: str, *, error: str, error_type: str, now: datetime) -> None:
        with self._lock:
            self._insert_job_if_absent(job_id, model="", now=now)
            self._fail(JobFailure(job_id, "", error, error_type), now=now)

    def _fail(self, failure: JobFailure, *, now: datetime) -> None:
        """Fail the job unless it succeeded; a failed job keeps no anomalies."""
        job = self.jobs[failure.job_id]
        if job.status == "succeeded":
            return
        self.jobs[failure.job_id] = replace(
            job,
            status="failed",
            error=failure.error[:4000],
            error_type=failure.error_type,
            finished_at=now,
        )
        self._delete_anomalies(failure.job_id)

    # -- batches of small jobs --------------------------------------------------------
    def settle_jobs(
        self, results: Sequence[JobResult], failures: Sequence[JobFailure], *, now: datetime
    ) -> dict[str, JobRecord]:
        models = {r.summary.job_id: r.summary.model for r in results}
        models.update({f.job_id: f.model for f in failures})
        with self._lock:
            for job_id, model in models.items():
                self._count_attempt(job_id, model=model[:140], now=now)
            finished = {j: self.jobs[j] for j in models if self.jobs[j].status in _FINISHED}
            fresh = [r for r in results if r.summary.job_id not in finished]
            for result in fresh:
                self._add_anomalies(result.anomalies)
            for result in fresh:
                self._succeed(result, now=now)
            for failure in failures:
                if failure.job_id not in finished:
                    self._fail(failure, now=now)
        return finished

    def _count_attempt(self, job_id: str, *, model: str, now: datetime) -> None:
        """A new job starts running at attempt 1; an open one counts one more attempt."""
        job = self.jobs.get(job_id)
        if job is None:
            self.jobs[job_id] = JobRecord(
                job_id=job_id,
                status="running",
                model=model,
                attempts=1,
                created_at=now,
                started_at=now,
            )
        elif job.status not in _FINISHED:
            self.jobs[job_id] = replace(job, attempts=job.attempts + 1)

    def _succeed(self, result: JobResult, *, now: datetime) -> None:
        job_id = result.summary.job_id
        self.jobs[job_id] = _succeeded(self.jobs[job_id], result.summary, now=now)
        self.job_columns.setdefault(job_id, {}).update(
            model_id=result.model_id, dataset_name=result.dataset_name
        )

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
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None or job.status != "running":
                return
            self.jobs[job_id] = replace(job, task_id=task_id)
            self.job_columns.setdefault(job_id, {}).update(
                chunks_total=chunks_total, model_id=model_id, dataset_name=dataset_name
            )

    def complete_chunk(
        self, job_id: str, chunk: ChunkResult, *, threshold: float, top_k: int, now: datetime
    ) -> ChunkOutcome:
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None:  # SqlStore finds no row to lock and raises too
                raise KeyError(f"no job {job_id!r}")
            if job.status != "running":
                return ChunkOutcome(job=job, completed=False, counted=False)
            self._add_anomalies(chunk.anomalies)
            recorded = self.chunks.setdefault(job_id, {})
            counted = chunk.chunk_index not in recorded
            recorded.setdefault(chunk.chunk_index, chunk)
            total = self.job_columns.get(job_id, {}).get("chunks_total") or 0
            completed = counted and len(recorded) >= total > 0
            if completed:
                job = self._finish_fan_out(
                    job, list(recorded.values()), threshold=threshold, top_k=top_k, now=now
                )
            return ChunkOutcome(job=job, completed=completed, counted=counted)

    def _finish_fan_out(
        self,
        job: JobRecord,
        chunks: list[ChunkResult],
        *,
        threshold: float,
        top_k: int,
        now: datetime,
    ) -> JobRecord:
        model_id = self.job_columns.get(job.job_id, {}).get("model_id")
        model = self.models.get(model_id) if model_id is not None else None
        summary = fan_out_summary(
            job_id=job.job_id,
            model=model.name if model else (job.model or ""),
            model_version=model.version if model else 0,
            threshold=threshold,
            counts=[(c.n_records, c.n_anomalies, c.cache_hits) for c in chunks],
            tops=[c.top for c in chunks],
            top_k=top_k,
            duration_ms=(now - (job.started_at or now)).total_seconds() * 1000.0,
        )
        finished = replace(
            job,
            status="succeeded",
            n_records=summary.n_records,
            n_anomalies=summary.n_anomalies,
            cache_hits=summary.cache_hits,
            threshold=threshold,
            summary=summary.to_dict(),
            finished_at=now,
            duration_ms=summary.duration_ms,
        )
        self.jobs[job.job_id] = finished
        return finished

    def get_job(self, job_id: str) -> JobRecord | None:
        with self._lock:
            return self.jobs.get(job_id)

    def list_jobs(self, *, status: str | None = None, limit: int = 50) -> list[JobRecord]:
        with self._lock:
            jobs = [j for j in self.jobs.values() if status is None or j.status == status]
        jobs.sort(key=lambda j: _when(j.created_at), reverse=True)
        return jobs[:limit]

    # -- anomalies --------------------------------------------------------------------
    def add_anomalies(self, batch: AnomalyBatch) -> int:
        with self._lock:
            return self._add_anomalies(batch)

    def _add_anomalies(self, batch: AnomalyBatch) -> int:
        rows = zip(
            batch.record_index.tolist(),
            batch.record_id,
            batch.timestamp,
            batch.score.tolist(),
            batch.severity.tolist(),
            strict=True,
        )
        added = 0
        for index, record_id, timestamp, score, severity in rows:
            key = (batch.job_id, int(index))
            if key in self.anomalies:
                continue
            self.anomalies[key] = AnomalyRecord(
                job_id=batch.job_id,
                record_index=int(index),
                model_id=batch.model_id,
                record_id=record_id,
                timestamp=timestamp,
                score=float(score),
                severity=float(severity),
                status="active",
            )
            added += 1
        return added

    def list_anomalies(
        self,
        *,
        job_id: str | None = None,
        model: str | None = None,
        min_severity: float = 0.0,
        limit: int = 50,
    ) -> list[AnomalyRecord]:
        with self._lock:
            model_ids = {m.id for m in self.models.values() if m.name == model}
            found = [
                a
                for a in self.anomalies.values()
                if a.severity >= min_severity
                and (job_id is None or a.job_id == job_id)
                and (model is None or a.model_id in model_ids)
            ]
        found.sort(key=lambda a: (-a.severity, a.record_index))
        return found[:limit]

    def _delete_anomalies(self, job_id: str) -> int:
        keys = [key for key in self.anomalies if key[0] == job_id]
        for key in keys:
            del self.anomalies[key]
        return len(keys)

    # -- datasets ---------------------------------------------------------------------
    def register_dataset(self, dataset: Dataset, *, now: datetime) -> Dataset:
        stored = replace(dataset, created_at=now, columns=list(dataset.columns))
        with self._lock:
            self.datasets[dataset.name] = stored
        return stored

    def get_dataset(self, name: str) -> Dataset:
        with self._lock:
            dataset = self.datasets.get(name)
        if dataset is None:
            raise UnknownDataset(
                f"no dataset named {name!r}; register it with "
                "'pynomaly-workers datasets add NAME PATH' or pass 'source' instead"
            )
        return dataset

    def list_datasets(self) -> list[Dataset]:
        with self._lock:
            datasets = list(self.datasets.values())
        return sorted(datasets, key=lambda d: _when(d.created_at), reverse=True)


def _sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _succeeded(job: JobRecord, summary: JobSummary, *, now: datetime) -> JobRecord:
    """The job marked ``succeeded`` with the summary, any earlier error cleared."""
    return replace(
        job,
        status="succeeded",
        n_records=summary.n_records,
        n_anomalies=summary.n_anomalies,
        cache_hits=summary.cache_hits,
        threshold=summary.threshold,
        summary=summary.to_dict(),
        error=None,
        error_type=None,
        finished_at=now,
        duration_ms=summary.duration_ms,
    )


def _when(moment: datetime | None) -> float:
    """A sort key for possibly missing timestamps (aware ones from the callers)."""
    return moment.timestamp() if moment is not None else float("-inf")


def _model_version(
    draft: ModelDraft, *, model_id: int, version: int, now: datetime
) -> ModelVersion:
    return ModelVersion(
        id=model_id,
        name=draft.name,
        version=version,
        algorithm=draft.algorithm,
        artifact_sha256=_sha256(draft.artifact),
        onnx_sha256=_sha256(draft.onnx) if draft.onnx is not None else None,
        n_features=draft.n_features,
        stats=draft.stats,
        params=dict(draft.params),
        parity_max_error=draft.parity_max_error,
        parity_tolerance=draft.parity_tolerance,
        n_training_rows=draft.n_training_rows,
        active=True,
        created_at=now,
    )


def _unknown_model_message(ref: ModelRef, versions: list[int]) -> str:
    if not versions:
        return (
            f"no model named {ref.name!r}; train one with pynomaly.train "
            "('pynomaly-workers train') or check the name with 'pynomaly-workers models'"
        )
    if ref.version is None:
        return f"model {ref.name!r} has no active version; pass 'name@version'"
    return f"model {ref.name!r} has no version {ref.version}; it has versions {versions}"
