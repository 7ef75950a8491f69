"""The in-memory store: every store role in dicts, for unit tests of the services.

It follows :class:`~pynomaly_workers.adapters.stores.sql.SqlStore` rule for rule; the
contract tests in ``tests/integration/test_store_contract.py`` run the same assertions
against both, so a fake that drifts from the real store fails there first.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from dataclasses import replace
from datetime import datetime
from typing import Any

from pynomaly_workers.domain.errors import ArtifactCorrupt, UnknownDataset, UnknownModel
from pynomaly_workers.domain.jobs import JobStatus, JobSummary
from pynomaly_workers.domain.models import ModelRef, ModelVersion
from pynomaly_workers.domain.ports import (
    AnomalyBatch,
    AnomalyRecord,
    Dataset,
    JobRecord,
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
        # Columns the JobRecord does not expose (model_id and ``extra`` of complete_job).
        self.job_columns: dict[str, dict[str, Any]] = {}
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
            self.jobs[summary.job_id] = replace(
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
            self.job_columns[summary.job_id] = {"model_id": model_id, **extra}

    def fail_job(self, job_id: str, *, error: str, error_type: str, now: datetime) -> None:
        with self._lock:
            job = self._insert_job_if_absent(job_id, model="", now=now)
            if job.status != "succeeded":
                self.jobs[job_id] = replace(
                    job, status="failed", error=error[:4000], error_type=error_type, finished_at=now
                )

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
        rows = zip(
            batch.record_index.tolist(),
            batch.record_id,
            batch.timestamp,
            batch.score.tolist(),
            batch.severity.tolist(),
            strict=True,
        )
        added = 0
        with self._lock:
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

    def delete_job_anomalies(self, job_id: str) -> int:
        """Remove a job's anomalies (as ``SqlStore.delete_job_anomalies``)."""
        with self._lock:
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
