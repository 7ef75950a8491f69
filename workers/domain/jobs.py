"""Detection and training requests as the public contract defines them, and the job summary."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from pynomaly_workers.contract import (
    DETECT_TASK,
    JOB_ID_PATTERN,
    SUCCEEDED,
    TRAIN_MANY_TASK,
    TRAIN_TASK,
    JobStatus,
    kwargs_keys,
)
from pynomaly_workers.domain.errors import InvalidMessage, InvalidRecords
from pynomaly_workers.domain.models import (
    ALGORITHMS,
    ModelRef,
    ModelVersion,
    check_model_name,
    parse_model_ref,
)
from pynomaly_workers.domain.records import Matrix, RecordLimits, to_matrix

_JOB_ID = re.compile(JOB_ID_PATTERN)
_DETECT_KEYS = kwargs_keys(DETECT_TASK)
_TRAIN_KEYS = kwargs_keys(TRAIN_TASK)
_TRAIN_MANY_KEYS = kwargs_keys(TRAIN_MANY_TASK)
TRAINING_TASK_ID_MAX_LENGTH = 255
"""The longest training task id a version can record (``models.training_task_id``)."""


@dataclass(frozen=True, slots=True)
class InlineRecords:
    """Records carried in the message itself."""

    matrix: Matrix
    record_ids: tuple[str, ...] | None
    timestamps: tuple[datetime, ...] | None
    entities: tuple[str, ...] | None = None
    """The entity (device, customer...) of each record: incidents are kept per entity."""


@dataclass(frozen=True, slots=True)
class DatasetInput:
    """A registered dataset, by name."""

    name: str
    entity_field: str | None = None
    """The column naming each record's entity (not a feature)."""


@dataclass(frozen=True, slots=True)
class SourceInput:
    """A CSV/Parquet file the workers can read (the claim-check for large inputs)."""

    path: str
    entity_field: str | None = None
    """The column naming each record's entity (not a feature)."""


DataInput = InlineRecords | DatasetInput | SourceInput
"""Where a job's rows come from: the message, a registered dataset or a source file."""


@dataclass(frozen=True, slots=True)
class DetectionRequest:
    """A validated ``pynomaly.detect`` message."""

    job_id: str
    model: ModelRef
    input: DataInput


@dataclass(frozen=True, slots=True)
class TrainingRequest:
    """A validated ``pynomaly.train`` message."""

    model: str
    algorithm: str
    input: DataInput
    contamination: float
    params: dict[str, Any]


def parse_detection_request(
    kwargs: Mapping[str, Any], *, default_job_id: str, limits: RecordLimits
) -> DetectionRequest:
    """Validate the keyword arguments of ``pynomaly.detect``."""
    _reject_unknown_keys(kwargs, _DETECT_KEYS, task=DETECT_TASK)
    job_id = check_job_id(kwargs.get("job_id") or default_job_id)
    if "model" not in kwargs:
        raise InvalidMessage(f"{DETECT_TASK} needs 'model' (a model name or 'name@version')")
    model = parse_model_ref(kwargs["model"])
    return DetectionRequest(job_id=job_id, model=model, input=_parse_input(kwargs, limits))


def parse_training_request(kwargs: Mapping[str, Any], *, limits: RecordLimits) -> TrainingRequest:
    """Validate the keyword arguments of ``pynomaly.train``."""
    _reject_unknown_keys(kwargs, _TRAIN_KEYS, task=TRAIN_TASK)
    name = kwargs.get("model")
    if not isinstance(name, str):
        raise InvalidMessage(f"{TRAIN_TASK} needs 'model': the name to register the version under")
    algorithm = kwargs.get("algorithm", "iforest")
    if algorithm not in ALGORITHMS:
        raise InvalidMessage(f"algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    contamination = kwargs.get("contamination", 0.01)
    if isinstance(contamination, bool) or not isinstance(contamination, int | float):
        raise InvalidMessage(f"contamination must be a number in (0, 0.5), got {contamination!r}")
    if not 0.0 < float(contamination) < 0.5:
        raise InvalidMessage(f"contamination must be in (0, 0.5), got {contamination}")
    params = kwargs.get("params") or {}
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise InvalidMessage("params must be a JSON object of estimator parameters")
    return TrainingRequest(
        model=check_model_name(name),
        algorithm=str(algorithm),
        input=_parse_input(kwargs, limits),
        contamination=float(contamination),
        params=dict(params),
    )


def parse_training_batch(
    kwargs: Mapping[str, Any], *, task_id: str, max_models: int
) -> list[object]:
    """Validate the envelope of ``pynomaly.train_many`` and return its items, each left
    for :func:`parse_training_item`: one bad item fails alone, not the message."""
    _reject_unknown_keys(kwargs, _TRAIN_MANY_KEYS, task=TRAIN_MANY_TASK)
    items = kwargs.get("models")
    if not isinstance(items, list) or not items:
        raise InvalidMessage(
            f"{TRAIN_MANY_TASK} needs 'models': a non-empty list of {TRAIN_TASK} arguments"
        )
    if len(items) > max_models:
        raise InvalidMessage(
            f"{TRAIN_MANY_TASK} got {len(items)} models; send at most {max_models} per "
            "message (split the list, or raise PYNOMALY_TRAIN_MANY_MAX_MODELS)"
        )
    longest = len(training_item_id(task_id, len(items) - 1))
    if longest > TRAINING_TASK_ID_MAX_LENGTH:
        raise InvalidMessage(
            f"task id {task_id[:40]!r}... is too long to key {len(items)} models: use at "
            f"most {TRAINING_TASK_ID_MAX_LENGTH - (longest - len(task_id))} characters "
            "(a UUID, Celery's default, fits)"
        )
    return list(items)


def parse_training_item(item: object, *, index: int, limits: RecordLimits) -> TrainingRequest:
    """Validate item ``index`` of a ``pynomaly.train_many`` message."""
    if not isinstance(item, Mapping):
        raise InvalidMessage(
            f"models[{index}] must be an object of {TRAIN_TASK} arguments, got "
            f"{type(item).__name__}"
        )
    return parse_training_request(item, limits=limits)


def training_item_id(task_id: str, index: int) -> str:
    """The training task id of item ``index`` of a ``pynomaly.train_many`` message: its
    version records it, so a redelivered message registers each item once."""
    return f"{task_id}:{index}"


def check_job_id(job_id: object) -> str:
    """Return ``job_id`` if it is a usable idempotency key, else raise."""
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise InvalidMessage(
            f"job_id {job_id!r} is invalid: use 1-128 letters, digits, '_', '-', '.' or ':'"
        )
    return job_id


def _reject_unknown_keys(kwargs: Mapping[str, Any], allowed: frozenset[str], *, task: str) -> None:
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise InvalidMessage(
            f"{task} got unknown argument(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )


def _parse_input(kwargs: Mapping[str, Any], limits: RecordLimits) -> DataInput:
    given = [key for key in ("records", "dataset", "source") if kwargs.get(key) is not None]
    if len(given) != 1:
        raise InvalidMessage(
            "give exactly one of 'records', 'dataset' or 'source'"
            + (f" (got {', '.join(given)})" if given else "")
        )
    entity_field = kwargs.get("entity_field")
    if given[0] != "records":
        for key in ("record_ids", "timestamps", "entities"):
            if kwargs.get(key) is not None:
                raise InvalidMessage(
                    f"{key} goes with records only; a {given[0]} carries its own columns"
                    + (" (name the entity column with entity_field)" if key == "entities" else "")
                )
        if entity_field is not None:
            entity_field = _string(entity_field, "entity_field")
    elif entity_field is not None:
        raise InvalidMessage(
            "entity_field names a column of a dataset or source; with records, send "
            "entities (one per record)"
        )
    if given[0] == "dataset":
        return DatasetInput(check_model_name(_string(kwargs["dataset"], "dataset")), entity_field)
    if given[0] == "source":
        return SourceInput(_string(kwargs["source"], "source"), entity_field)
    matrix = to_matrix(kwargs["records"], limits=limits)
    return InlineRecords(
        matrix=matrix,
        record_ids=_record_ids(kwargs.get("record_ids"), len(matrix)),
        timestamps=_timestamps(kwargs.get("timestamps"), len(matrix)),
        entities=_entities(kwargs.get("entities"), len(matrix)),
    )


def _string(value: object, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidMessage(f"{key} must be a non-empty string, got {value!r}")
    return value


def _record_ids(value: object, n: int) -> tuple[str, ...] | None:
    if value is None:
        return None
    _check_parallel(value, n, "record_ids")
    assert isinstance(value, Sequence)
    if not all(isinstance(v, str | int) and not isinstance(v, bool) for v in value):
        raise InvalidRecords("record_ids must be strings or integers")
    ids = tuple(str(v) for v in value)
    if any(len(v) > 256 for v in ids):
        raise InvalidRecords("record_ids must be at most 256 characters each")
    return ids


def _entities(value: object, n: int) -> tuple[str, ...] | None:
    if value is None:
        return None
    _check_parallel(value, n, "entities")
    assert isinstance(value, Sequence)
    if not all(isinstance(v, str | int) and not isinstance(v, bool) for v in value):
        raise InvalidRecords("entities must be strings or integers")
    names = tuple(str(v) for v in value)
    if any(len(v) > 256 for v in names):
        raise InvalidRecords("entities must be at most 256 characters each")
    return names


def _timestamps(value: object, n: int) -> tuple[datetime, ...] | None:
    if value is None:
        return None
    _check_parallel(value, n, "timestamps")
    assert isinstance(value, Sequence)
    return tuple(parse_timestamp(v, index=i) for i, v in enumerate(value))


def _check_parallel(value: object, n: int, key: str) -> None:
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise InvalidRecords(f"{key} must be a list with one entry per record")
    if len(value) != n:
        raise InvalidRecords(f"{key} has {len(value)} entries but there are {n} records")


def parse_timestamp(value: object, *, index: int) -> datetime:
    """ISO-8601 text or Unix seconds -> aware UTC datetime (naive text is taken as UTC)."""
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(float(value), tz=UTC)
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        pass
    raise InvalidRecords(f"timestamp {index} ({value!r}) is neither ISO-8601 text nor Unix seconds")


@dataclass(frozen=True, slots=True)
class TopAnomaly:
    """One of the highest-scoring anomalies of a job."""

    record_index: int
    record_id: str | None
    score: float
    severity: float
    explanation: dict[str, Any] | None = None
    suppressed_by: int | None = None
    """The suppression rule that matched it (stored, never notified)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the contract's keys; ``explanation`` when there is one,
        ``suppressed_by`` when a rule suppressed it)."""
        data: dict[str, Any] = {
            "record_index": self.record_index,
            "record_id": self.record_id,
            "score": self.score,
            "severity": self.severity,
        }
        if self.explanation is not None:
            data["explanation"] = self.explanation
        if self.suppressed_by is not None:
            data["suppressed_by"] = self.suppressed_by
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TopAnomaly:
        """Inverse of :meth:`to_dict`."""
        return cls(
            record_index=int(data["record_index"]),
            record_id=data["record_id"],
            score=float(data["score"]),
            severity=float(data["severity"]),
            explanation=data.get("explanation"),
            suppressed_by=data.get("suppressed_by"),
        )


def top_anomalies(
    scores: npt.NDArray[np.float64],
    severities: npt.NDArray[np.float64],
    mask: npt.NDArray[np.bool_],
    *,
    k: int,
    offset: int = 0,
    record_ids: Sequence[str] | None = None,
    explanations: Mapping[int, dict[str, Any]] | None = None,
    suppressed: Mapping[int, int] | None = None,
) -> list[TopAnomaly]:
    """The ``k`` anomalies with the highest scores, highest first (with the explanation
    of each, and the rule that suppressed it, by row, when given)."""
    indices = np.flatnonzero(mask)
    if k <= 0 or indices.size == 0:
        return []
    if indices.size > k:
        best = np.argpartition(-scores[indices], k - 1)[:k]
        indices = indices[best]
    indices = indices[np.argsort(-scores[indices], kind="stable")]
    return [
        TopAnomaly(
            record_index=offset + i,
            record_id=record_ids[i] if record_ids is not None else None,
            score=float(scores[i]),
            severity=float(severities[i]),
            explanation=explanations.get(i) if explanations is not None else None,
            suppressed_by=suppressed.get(i) if suppressed is not None else None,
        )
        for i in indices.tolist()
    ]


def merge_top(groups: Sequence[Sequence[TopAnomaly]], *, k: int) -> list[TopAnomaly]:
    """Merge per-chunk top lists into the job's top ``k``."""
    merged = [item for group in groups for item in group]
    merged.sort(key=lambda a: (-a.score, a.record_index))
    return merged[:k]


@dataclass(frozen=True, slots=True)
class JobSummary:
    """The JSON summary ``pynomaly.detect`` returns and the job record keeps."""

    job_id: str
    model: str
    model_version: int
    n_records: int
    n_anomalies: int
    threshold: float
    cache_hits: int
    duration_ms: float
    top_anomalies: list[TopAnomaly]
    status: JobStatus = SUCCEEDED
    n_suppressed: int = 0
    """Of ``n_anomalies`` (every anomaly stored), those a suppression rule matched."""

    @property
    def n_notifiable(self) -> int:
        """The anomalies incidents (and so notifications) hear about."""
        return self.n_anomalies - self.n_suppressed

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; the key names are part of the public contract."""
        return {
            "job_id": self.job_id,
            "status": self.status,
            "model": self.model,
            "model_version": self.model_version,
            "n_records": self.n_records,
            "n_anomalies": self.n_anomalies,
            "threshold": self.threshold,
            "cache_hits": self.cache_hits,
            "duration_ms": round(self.duration_ms, 3),
            "top_anomalies": [a.to_dict() for a in self.top_anomalies],
        } | ({"n_suppressed": self.n_suppressed} if self.n_suppressed else {})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobSummary:
        """Inverse of :meth:`to_dict` (a stored summary)."""
        return cls(
            job_id=str(data["job_id"]),
            model=str(data["model"]),
            model_version=int(data["model_version"]),
            n_records=int(data["n_records"]),
            n_anomalies=int(data["n_anomalies"]),
            threshold=float(data["threshold"]),
            cache_hits=int(data["cache_hits"]),
            duration_ms=float(data["duration_ms"]),
            top_anomalies=[TopAnomaly.from_dict(a) for a in data["top_anomalies"]],
            status=data.get("status", SUCCEEDED),
            n_suppressed=int(data.get("n_suppressed", 0)),
        )


@dataclass(frozen=True, slots=True)
class ChunkTally:
    """What one scored piece of a job (a micro-batched job, a chunk) adds to its summary."""

    n_records: int
    n_anomalies: int
    cache_hits: int
    top: list[TopAnomaly]
    n_suppressed: int = 0


def summarize(
    job_id: str,
    version: ModelVersion,
    tallies: Sequence[ChunkTally],
    *,
    top_k: int,
    duration_ms: float,
) -> JobSummary:
    """The summary of a job from its pieces: the one place a summary is built, whether
    the job was micro-batched, scored in one process or fanned out."""
    return JobSummary(
        job_id=job_id,
        model=version.name,
        model_version=version.version,
        n_records=sum(t.n_records for t in tallies),
        n_anomalies=sum(t.n_anomalies for t in tallies),
        threshold=version.threshold,
        cache_hits=sum(t.cache_hits for t in tallies),
        duration_ms=duration_ms,
        top_anomalies=merge_top([t.top for t in tallies], k=top_k),
        n_suppressed=sum(t.n_suppressed for t in tallies),
    )


def rows_per_chunk(*, n_features: int, max_rows: int, max_bytes: int) -> int:
    """Rows per chunk of a source: at most ``max_rows``, and few enough that the chunk's
    float64 feature matrix fits in ``max_bytes``. A worker process holds several times
    that matrix while it reads, scores and writes the chunk, so a wide source gets
    fewer rows per chunk instead of a larger process."""
    if max_rows <= 0 or max_bytes <= 0:
        raise ValueError(f"max_rows and max_bytes must be positive, got {max_rows}, {max_bytes}")
    return max(1, min(max_rows, max_bytes // (8 * max(n_features, 1))))


def split_rows(n_rows: int, *, max_rows: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges covering ``n_rows`` in pieces of at most ``max_rows``."""
    if max_rows <= 0:
        raise ValueError(f"max_rows must be positive, got {max_rows}")
    return [(start, min(start + max_rows, n_rows)) for start in range(0, n_rows, max_rows)]
