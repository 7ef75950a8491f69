"""Training: fit an estimator, calibrate it, export and parity-check ONNX, register it."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pynomaly_workers.contract import FAILED, SUCCEEDED, TRAIN_TASK
from pynomaly_workers.domain.errors import InvalidInput, InvalidRecords, PayloadTooLarge
from pynomaly_workers.domain.joblog import (
    DUPLICATE,
    JobLine,
    failure_line,
    printable,
    seconds_to_ms,
)
from pynomaly_workers.domain.jobs import (
    TrainingRequest,
    parse_training_item,
    parse_training_request,
    training_item_id,
)
from pynomaly_workers.domain.models import ModelVersion
from pynomaly_workers.domain.ports import FittedModel, ModelDraft, Trainer
from pynomaly_workers.domain.profile import profile_training_data
from pynomaly_workers.domain.records import Matrix, RecordLimits
from pynomaly_workers.domain.scoring import fit_score_stats, parity_error
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.services.detection.batch import record_limits
from pynomaly_workers.services.inputs import iter_chunks

log = logging.getLogger(__name__)

MIN_TRAINING_ROWS = 10
_HOLDOUT_MIN_ROWS = 50
_HOLDOUT_MAX = 2_000
UNNAMED_TRAINING = "-"
"""The job id of a training line when the training ran with no task id (a tool)."""


@dataclass(frozen=True, slots=True)
class OnnxCandidate:
    """The ONNX export and how far its scores strayed from scikit-learn's."""

    content: bytes | None
    max_error: float | None


def train_message(
    adapters: Adapters,
    kwargs: Mapping[str, Any],
    *,
    task_id: str,
    queue_wait_s: float | None = None,
) -> ModelVersion:
    """Validate a ``pynomaly.train`` message and train it (:func:`train_model`); a
    message that fails validation leaves its failed line too, then raises."""
    started = adapters.clock.monotonic()
    try:
        request = parse_training_request(kwargs, limits=record_limits(adapters))
    except InvalidInput as exc:
        _log_failure(
            adapters, task_id, kwargs.get("model"), exc, started=started, queue_wait_s=queue_wait_s
        )
        raise
    return train_model(adapters, request, task_id=task_id, queue_wait_s=queue_wait_s)


def train_model(
    adapters: Adapters,
    request: TrainingRequest,
    *,
    task_id: str | None = None,
    queue_wait_s: float | None = None,
) -> ModelVersion:
    """Fit, calibrate and register a new immutable version of ``request.model``, and
    write its line (``adapters.job_log``; the job id is ``task_id``).

    With the request's ``task_id``, training is idempotent: a redelivered message (a
    worker lost, a visibility timeout passed) returns the version the first delivery
    registered, without fitting again (its line says ``duplicate``).
    """
    started = adapters.clock.monotonic()
    if task_id is not None:
        done = adapters.store.find_trained_by(task_id)
        if done is not None:
            log.info(
                "training task %s already registered %s@%d; not training again",
                task_id,
                done.name,
                done.version,
            )
            _log_version(adapters, task_id, done, started, queue_wait_s, duplicate=True)
            return done
    # Fitting, exporting and the parity check run isolated (a forked child in a worker):
    # their heap and the exporter's imports go away with it; registering stays here.
    try:
        draft = adapters.isolation.run(lambda: build_draft(adapters, request, task_id=task_id))
    except InvalidInput as exc:
        _log_failure(
            adapters, task_id, request.model, exc, started=started, queue_wait_s=queue_wait_s
        )
        raise
    version = adapters.store.register_model(draft, now=adapters.clock.now())
    _log_version(adapters, task_id, version, started, queue_wait_s, duplicate=False)
    return version


def _log_version(
    adapters: Adapters,
    task_id: str | None,
    version: ModelVersion,
    started: float,
    queue_wait_s: float | None,
    *,
    duplicate: bool,
) -> None:
    if not adapters.job_log.enabled:
        return
    line = JobLine(
        job_id=task_id or UNNAMED_TRAINING,
        task=TRAIN_TASK,
        status=DUPLICATE if duplicate else SUCCEEDED,
        model=version.name,
        model_version=version.version,
        records=version.n_training_rows,
        duration_ms=(adapters.clock.monotonic() - started) * 1000.0,
        queue_wait_ms=seconds_to_ms(queue_wait_s),
    )
    adapters.job_log.finished(line)


def _log_failure(
    adapters: Adapters,
    task_id: str | None,
    model: object,
    error: InvalidInput,
    *,
    started: float,
    queue_wait_s: float | None,
) -> None:
    if not adapters.job_log.enabled:
        return
    line = failure_line(
        task_id or UNNAMED_TRAINING,
        task=TRAIN_TASK,
        model=printable(model),
        error_type=error.code,
        duration_ms=(adapters.clock.monotonic() - started) * 1000.0,
        queue_wait_ms=seconds_to_ms(queue_wait_s),
    )
    adapters.job_log.finished(line)


def build_draft(
    adapters: Adapters, request: TrainingRequest, *, task_id: str | None = None
) -> ModelDraft:
    """Read the training data, fit, calibrate, export and parity-check: the version to
    register, not yet registered."""
    matrix, names = load_training_data(adapters, request)
    fit_rows, holdout = split_holdout(matrix)
    fitted = adapters.trainer.fit(
        request.algorithm, fit_rows, contamination=request.contamination, params=request.params
    )
    stats = fit_score_stats(fitted.training_scores, contamination=request.contamination)
    profile = profile_training_data(fit_rows, fitted.training_scores, names=names)
    tolerance = adapters.settings.onnx_parity_tolerance
    candidate = onnx_candidate(adapters.trainer, fitted, holdout, tolerance=tolerance)
    adapters.models.prepare(hashlib.sha256(fitted.artifact).hexdigest(), fitted.estimator)
    return ModelDraft(
        name=request.model,
        algorithm=request.algorithm,
        artifact=fitted.artifact,
        onnx=candidate.content,
        n_features=matrix.shape[1],
        stats=stats,
        params=fitted.params,
        parity_max_error=candidate.max_error,
        parity_tolerance=tolerance,
        n_training_rows=len(fit_rows),
        profile=profile,
        training_task_id=task_id,
    )


def load_training_data(
    adapters: Adapters, request: TrainingRequest
) -> tuple[Matrix, tuple[str, ...] | None]:
    """All training rows as one matrix (bounded by ``max_training_rows``), and the
    feature column names when the input has them."""
    limit = adapters.settings.max_training_rows
    parts, total, names = [], 0, None
    for chunk in iter_chunks(
        request.input,
        datasets=adapters.store,
        sources=adapters.sources,
        chunk_rows=adapters.settings.chunk_rows,
    ):
        total += len(chunk.matrix)
        if total > limit:
            raise PayloadTooLarge(
                f"training data has more than {limit} rows; sample it or raise "
                "PYNOMALY_MAX_TRAINING_ROWS"
            )
        parts.append(chunk.matrix)
        names = tuple(chunk.features) if chunk.features is not None else None
    matrix = np.vstack(parts) if parts else np.empty((0, 0))
    if len(matrix) < MIN_TRAINING_ROWS:
        raise InvalidRecords(f"training needs at least {MIN_TRAINING_ROWS} rows, got {len(matrix)}")
    return matrix, names


def split_holdout(matrix: Matrix) -> tuple[Matrix, Matrix]:
    """Rows to fit on and rows held out for the ONNX parity check (seeded, repeatable).

    Below 50 rows nothing can be spared; the parity check then uses the training rows.
    """
    n = len(matrix)
    if n < _HOLDOUT_MIN_ROWS:
        return matrix, matrix
    n_holdout = min(max(n // 10, 1), _HOLDOUT_MAX)
    order = np.random.default_rng(0).permutation(n)
    return matrix[np.sort(order[n_holdout:])], matrix[np.sort(order[:n_holdout])]


def onnx_candidate(
    trainer: Trainer, fitted: FittedModel, holdout: Matrix, *, tolerance: float
) -> OnnxCandidate:
    """Export to ONNX and keep it only if it scores the held-out rows like scikit-learn."""
    exported = trainer.export(fitted, n_features=holdout.shape[1])
    if exported is None:
        return OnnxCandidate(content=None, max_error=None)
    error = parity_error(fitted.scorer.score(holdout), exported.scorer.score(holdout))
    return OnnxCandidate(content=exported.content if error <= tolerance else None, max_error=error)


def version_summary(version: ModelVersion) -> dict[str, Any]:
    """The JSON ``pynomaly.train`` returns."""
    return {
        "model": version.name,
        "model_version": version.version,
        "model_id": version.id,
        "algorithm": version.algorithm,
        "artifact_sha256": version.artifact_sha256,
        "onnx": version.onnx_sha256 is not None,
        "onnx_sha256": version.onnx_sha256,
        "parity_max_error": version.parity_max_error,
        "parity_tolerance": version.parity_tolerance,
        "n_features": version.n_features,
        "n_training_rows": version.n_training_rows,
        "threshold": version.threshold,
        "contamination": version.stats.contamination,
    }


def train_many(
    adapters: Adapters,
    items: Sequence[object],
    *,
    task_id: str,
    limits: RecordLimits,
    queue_wait_s: float | None = None,
) -> dict[str, Any]:
    """Train and register each item of a ``pynomaly.train_many`` message as its own
    version, in order. The JSON it returns lists, per item, its version summary or why it
    failed (``models``), and counts both.

    Bad input fails its item only. Item ``i`` trains under the task id ``task_id:i``, so a
    redelivered message returns the versions already registered instead of adding them
    again. Anything else (a database outage) propagates: the message is retried whole.
    """
    results = [
        _train_item(
            adapters, item, index=index, task_id=task_id, limits=limits, queue_wait_s=queue_wait_s
        )
        for index, item in enumerate(items)
    ]
    failed = sum(1 for result in results if result["status"] == FAILED)
    return {
        "n_models": len(results),
        "n_succeeded": len(results) - failed,
        "n_failed": failed,
        "models": results,
    }


def _train_item(
    adapters: Adapters,
    item: object,
    *,
    index: int,
    task_id: str,
    limits: RecordLimits,
    queue_wait_s: float | None,
) -> dict[str, Any]:
    """Train one item; its line is its own (job id ``task_id:index``)."""
    item_id = training_item_id(task_id, index)
    started = adapters.clock.monotonic()
    name = item.get("model") if isinstance(item, dict) else None
    try:
        request = parse_training_item(item, index=index, limits=limits)
    except InvalidInput as exc:
        _log_failure(adapters, item_id, name, exc, started=started, queue_wait_s=queue_wait_s)
        log.warning("train_many %s: models[%d] (%r) failed: %s", task_id, index, name, exc)
        return {"model": name, "status": FAILED, "error": str(exc), "error_type": exc.code}
    try:
        version = train_model(adapters, request, task_id=item_id, queue_wait_s=queue_wait_s)
    except InvalidInput as exc:
        log.warning("train_many %s: models[%d] (%r) failed: %s", task_id, index, name, exc)
        return {"model": name, "status": FAILED, "error": str(exc), "error_type": exc.code}
    return {**version_summary(version), "status": SUCCEEDED}
