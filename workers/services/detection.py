"""Detection: score a job's records, persist its anomalies, record its summary.

At-least-once delivery, exactly-once effect: the job row is claimed by ``job_id``,
anomalies are unique on (job_id, record_index), and a job that already finished returns
its stored outcome instead of running again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from pynomaly_workers.adapters.scorers.loader import LoadedModel
from pynomaly_workers.domain.errors import InvalidInput
from pynomaly_workers.domain.jobs import (
    DetectionRequest,
    JobSummary,
    TopAnomaly,
    check_job_id,
    merge_top,
    parse_detection_request,
    top_anomalies,
)
from pynomaly_workers.domain.ports import AnomalyBatch, JobRecord, SourceChunk
from pynomaly_workers.domain.records import RecordLimits, check_width
from pynomaly_workers.domain.scoring import Scores, anomaly_mask, severity
from pynomaly_workers.services.context import Services
from pynomaly_workers.services.inputs import input_label, iter_chunks


class JobAlreadyFailed(InvalidInput):
    """A redelivered job that had already failed on bad input: fail it the same way."""

    code = "job_failed"


@dataclass(slots=True)
class _Tally:
    n_records: int = 0
    n_anomalies: int = 0
    cache_hits: int = 0
    tops: list[list[TopAnomaly]] = field(default_factory=list)


def run_detection(
    services: Services, kwargs: Mapping[str, Any], *, default_job_id: str
) -> dict[str, Any]:
    """Run one ``pynomaly.detect`` message and return its JSON summary."""
    job_id = check_job_id(kwargs.get("job_id") or default_job_id)
    started = services.clock.monotonic()
    job = services.store.claim_job(
        job_id, model=str(kwargs.get("model", ""))[:140], now=services.clock.now()
    )
    if job.status != "running":
        return _replay(job)
    try:
        request = parse_detection_request(
            kwargs, default_job_id=job_id, limits=record_limits(services)
        )
        version = services.store.get_model(request.model)
        loaded = services.models.load(version)
        tally = score_job(services, request, loaded)
    except InvalidInput as exc:
        services.store.fail_job(
            job_id, error=str(exc), error_type=exc.code, now=services.clock.now()
        )
        raise
    summary = JobSummary(
        job_id=job_id,
        model=version.name,
        model_version=version.version,
        n_records=tally.n_records,
        n_anomalies=tally.n_anomalies,
        threshold=version.threshold,
        cache_hits=tally.cache_hits,
        duration_ms=(services.clock.monotonic() - started) * 1000.0,
        top_anomalies=merge_top(tally.tops, k=services.settings.top_anomalies),
    )
    services.store.complete_job(
        summary,
        model_id=version.id,
        now=services.clock.now(),
        extra={"dataset_name": input_label(request.input)},
    )
    return summary.to_dict()


def record_limits(services: Services) -> RecordLimits:
    """The inline-payload limits from the settings."""
    return RecordLimits(
        max_records=services.settings.max_records_per_job,
        max_features=services.settings.max_features,
    )


def score_job(services: Services, request: DetectionRequest, loaded: LoadedModel) -> _Tally:
    """Score every chunk of the input and write its anomalies."""
    tally = _Tally()
    now = services.clock.now()
    for chunk in iter_chunks(
        request.input,
        datasets=services.store,
        sources=services.sources,
        chunk_rows=services.settings.chunk_rows,
    ):
        _score_chunk(services, request.job_id, loaded, chunk, tally=tally, now=now)
    return tally


def _score_chunk(
    services: Services,
    job_id: str,
    loaded: LoadedModel,
    chunk: SourceChunk,
    *,
    tally: _Tally,
    now: datetime,
) -> None:
    version = loaded.version
    check_width(chunk.matrix, n_features=version.n_features, model=version.label)
    scores, hits = score_rows(services, loaded, chunk)
    mask = anomaly_mask(scores, threshold=version.threshold)
    severities = severity(scores, version.stats)
    services.store.add_anomalies(
        anomaly_batch(
            job_id, version.id, chunk, scores=scores, severities=severities, mask=mask, now=now
        )
    )
    tally.n_records += len(chunk.matrix)
    tally.n_anomalies += int(mask.sum())
    tally.cache_hits += hits
    tally.tops.append(
        top_anomalies(
            scores,
            severities,
            mask,
            k=services.settings.top_anomalies,
            offset=chunk.offset,
            record_ids=chunk.record_ids,
        )
    )


def score_rows(services: Services, loaded: LoadedModel, chunk: SourceChunk) -> tuple[Scores, int]:
    """Scores for the chunk's rows, from the prediction cache where it has them."""
    matrix = chunk.matrix
    cache = services.cache
    if cache is None:
        return loaded.scorer_for(len(matrix)).score(matrix), 0
    key = loaded.version.content_hash
    scores = cache.get_many(key, matrix)
    missing = np.flatnonzero(np.isnan(scores))
    if missing.size:
        fresh = loaded.scorer_for(int(missing.size)).score(matrix[missing])
        scores[missing] = fresh
        cache.set_many(key, matrix[missing], fresh)
    return scores, len(matrix) - int(missing.size)


def anomaly_batch(
    job_id: str,
    model_id: int,
    chunk: SourceChunk,
    *,
    scores: Scores,
    severities: Scores,
    mask: np.ndarray[Any, np.dtype[np.bool_]],
    now: datetime,
) -> AnomalyBatch:
    """The rows of a chunk above threshold, in columnar form."""
    rows = np.flatnonzero(mask)
    positions = rows.tolist()
    ids = chunk.record_ids
    times = chunk.timestamps
    return AnomalyBatch(
        job_id=job_id,
        model_id=model_id,
        record_index=(rows + chunk.offset).astype(np.int64),
        score=scores[rows],
        severity=severities[rows],
        timestamp=[times[i] for i in positions] if times is not None else [now] * len(rows),
        record_id=[ids[i] for i in positions] if ids is not None else [None] * len(rows),
    )


def _replay(job: JobRecord) -> dict[str, Any]:
    if job.status == "succeeded" and job.summary is not None:
        return dict(job.summary)
    raise JobAlreadyFailed(
        f"job {job.job_id} already failed ({job.error_type}): {job.error}; "
        "submit a new job_id to try again"
    )
