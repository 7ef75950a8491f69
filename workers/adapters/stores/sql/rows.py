"""Turning table rows into the core's records."""

from __future__ import annotations

import hashlib

from pynomaly_workers.adapters.stores.tables import (
    AnomalyRow,
    DatasetRow,
    DetectionJobRow,
    ModelRow,
)
from pynomaly_workers.contract import JobStatus
from pynomaly_workers.domain.models import ModelVersion
from pynomaly_workers.domain.ports import AnomalyRecord, Dataset, JobRecord
from pynomaly_workers.domain.profile import TrainingProfile
from pynomaly_workers.domain.scoring import ScoreStats
from pynomaly_workers.domain.thresholds import effective_stats


def sha256(content: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(content).hexdigest()


def model_version(row: ModelRow, *, threshold: float | None = None) -> ModelVersion:
    """The version of ``row``; ``threshold``, if given, is the one in force (a recorded
    change, ``model_thresholds``) instead of the trained one."""
    stats = ScoreStats.from_dict(row.score_stats)
    return ModelVersion(
        id=row.id,
        name=row.name,
        version=row.version,
        algorithm=row.algorithm,
        artifact_sha256=row.artifact_sha256,
        onnx_sha256=row.onnx_sha256,
        n_features=row.n_features,
        stats=stats if threshold is None else effective_stats(stats, threshold),
        params=dict(row.params),
        parity_max_error=row.parity_max_error,
        parity_tolerance=row.parity_tolerance,
        n_training_rows=row.n_training_rows,
        active=row.active,
        created_at=row.created_at,
        profile=TrainingProfile.from_dict(row.profile) if row.profile else None,
        trained_threshold=None if threshold is None else stats.threshold,
    )


def job_record(row: DetectionJobRow) -> JobRecord:
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


def anomaly_record(row: AnomalyRow) -> AnomalyRecord:
    return AnomalyRecord(
        job_id=row.job_id,
        record_index=row.record_index,
        model_id=row.model_id,
        record_id=row.record_id,
        timestamp=row.timestamp,
        score=row.score,
        severity=row.severity,
        status=row.status,
        explanation=row.explanation,
        id=row.id,
        entity=row.entity,
        suppressed_by=row.suppressed_by,
    )


def dataset(row: DatasetRow) -> Dataset:
    return Dataset(
        name=row.name,
        uri=row.uri,
        format=row.format,
        n_rows=row.n_rows,
        n_features=row.n_features,
        status=row.status,
        created_at=row.created_at,
        columns=list(row.columns.get("features", [])),
        label_column=row.label_column,
    )
