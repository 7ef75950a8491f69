"""Detection: score jobs, persist their anomalies, record their outcome.

Three paths, chosen per job:

* **small** inline jobs (up to ``chunk_rows`` records) are handled in micro-batches: all
  small jobs of one flush are scored together per model version (one scorer call, one
  cache round trip) and settled in ONE database transaction;
* **in-process** jobs (large inline payloads, single-chunk sources) are scored chunk by
  chunk in the worker that received them;
* **fan-out** jobs (sources and datasets of several chunks) are planned here and scored
  by ``pynomaly.detect.chunk`` tasks on every worker; the last chunk completes the job.

At-least-once delivery, exactly-once effect: jobs are keyed by ``job_id``, anomalies are
unique on (job_id, record_index), chunks count once, and a job that already finished
answers with its stored outcome instead of running again.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from pynomaly_workers.adapters.scorers.loader import LoadedModel
from pynomaly_workers.domain.errors import InvalidInput, InvalidMessage
from pynomaly_workers.domain.jobs import (
    DatasetInput,
    DetectionRequest,
    InlineRecords,
    JobSummary,
    SourceInput,
    TopAnomaly,
    check_job_id,
    merge_top,
    parse_detection_request,
    top_anomalies,
)
from pynomaly_workers.domain.models import ModelRef, ModelVersion, parse_model_ref
from pynomaly_workers.domain.ports import (
    AnomalyBatch,
    ChunkResult,
    ChunkSpec,
    JobFailure,
    JobRecord,
    JobResult,
    SourceChunk,
)
from pynomaly_workers.domain.records import RecordLimits, check_width
from pynomaly_workers.domain.scoring import Scores, anomaly_mask, severity
from pynomaly_workers.services.context import Services
from pynomaly_workers.services.inputs import input_label, iter_chunks

CHUNK_TASK = "pynomaly.detect.chunk"


class JobAlreadyFailed(InvalidInput):
    """A redelivered job that had already failed on bad input: fail it the same way."""

    code = "job_failed"


@dataclass(frozen=True, slots=True)
class DetectMessage:
    """One ``pynomaly.detect`` delivery: Celery's task id and the keyword arguments."""

    task_id: str
    kwargs: Mapping[str, Any]
    args: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Succeeded:
    """The job's summary (fresh or stored)."""

    summary: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Failed:
    """The job failed on bad input; never retried."""

    error: InvalidInput


@dataclass(frozen=True, slots=True)
class FannedOut:
    """The job was split; publish ``chunks`` as ``pynomaly.detect.chunk`` tasks. The last
    chunk stores the job's summary as the result of ``task_id``."""

    job_id: str
    task_id: str
    chunks: list[dict[str, Any]]


Outcome = Succeeded | Failed | FannedOut


@dataclass(slots=True)
class _Pending:
    """A small job between parsing and settling."""

    index: int
    message: DetectMessage
    request: DetectionRequest


@dataclass(slots=True)
class _Tally:
    n_records: int = 0
    n_anomalies: int = 0
    cache_hits: int = 0
    tops: list[list[TopAnomaly]] = field(default_factory=list)


def record_limits(services: Services) -> RecordLimits:
    """The inline-payload limits from the settings."""
    return RecordLimits(
        max_records=services.settings.max_records_per_job,
        max_features=services.settings.max_features,
    )


# -- entry points ------------------------------------------------------------------------
def detect_batch(services: Services, messages: Sequence[DetectMessage]) -> list[Outcome]:
    """Run a batch of ``pynomaly.detect`` deliveries; one outcome per message, in order."""
    outcomes: dict[int, Outcome] = {}
    small: list[_Pending] = []
    failures: list[tuple[int, str, str, InvalidInput]] = []
    first_of: dict[str, int] = {}  # the same job twice in one batch runs once
    duplicates: dict[int, int] = {}
    for index, message in enumerate(messages):
        try:
            job_id = check_job_id(message.kwargs.get("job_id") or message.task_id)
        except InvalidInput as exc:
            outcomes[index] = Failed(exc)  # no usable job id: nothing to record
            continue
        if job_id in first_of:
            duplicates[index] = first_of[job_id]
            continue
        first_of[job_id] = index
        try:
            if message.args:
                raise InvalidMessage("pynomaly.detect takes keyword arguments only, no args")
            request = parse_detection_request(
                message.kwargs, default_job_id=job_id, limits=record_limits(services)
            )
        except InvalidInput as exc:
            failures.append((index, job_id, str(message.kwargs.get("model", "")), exc))
            continue
        if _is_small(services, request):
            small.append(_Pending(index, message, request))
        else:
            outcomes[index] = run_large(services, message, request)
    outcomes.update(_run_small(services, small, failures))
    outcomes.update({index: outcomes[first] for index, first in duplicates.items()})
    return [outcomes[i] for i in range(len(messages))]


def run_detection(
    services: Services, kwargs: Mapping[str, Any], *, default_job_id: str
) -> dict[str, Any]:
    """Run one message to completion in this process (fan-out chunks included) and return
    its summary, or raise the job's :class:`InvalidInput`. For tests and tools."""
    (outcome,) = detect_batch(services, [DetectMessage(default_job_id, kwargs)])
    if isinstance(outcome, FannedOut):
        for chunk in outcome.chunks:
            run_chunk(services, chunk)
        job = services.store.get_job(outcome.job_id)
        assert job is not None
        outcome = _stored_outcome(job)
    if isinstance(outcome, Failed):
        raise outcome.error
    assert isinstance(outcome, Succeeded)
    return outcome.summary


def _is_small(services: Services, request: DetectionRequest) -> bool:
    data = request.input
    return isinstance(data, InlineRecords) and len(data.matrix) <= services.settings.chunk_rows


# -- small jobs: micro-batched -----------------------------------------------------------
def _run_small(
    services: Services,
    pending: list[_Pending],
    failures: list[tuple[int, str, str, InvalidInput]],
) -> dict[int, Outcome]:
    started = services.clock.monotonic()
    versions = _resolve_models(services, {p.request.model for p in pending})
    results: dict[int, JobResult] = {}
    errors = {index: (job_id, model, exc) for index, job_id, model, exc in failures}
    for version_or_error, group in _group_by_model(pending, versions):
        if isinstance(version_or_error, InvalidInput):
            for p in group:
                errors[p.index] = (p.request.job_id, str(p.request.model), version_or_error)
            continue
        scored, bad = _score_group(services, version_or_error, group, started=started)
        results.update(scored)
        errors.update(bad)
    replays = services.store.settle_jobs(
        list(results.values()),
        [
            JobFailure(job_id, model[:140], str(exc), exc.code)
            for job_id, model, exc in errors.values()
        ],
        now=services.clock.now(),
    )
    outcomes: dict[int, Outcome] = {i: Succeeded(r.summary.to_dict()) for i, r in results.items()}
    outcomes.update({i: Failed(exc) for i, (_, _, exc) in errors.items()})
    for index in list(outcomes):
        job_id = _job_id_of(index, results, errors)
        if job_id in replays:
            outcomes[index] = _stored_outcome(replays[job_id])
    return outcomes


def _job_id_of(
    index: int, results: dict[int, JobResult], errors: dict[int, tuple[str, str, InvalidInput]]
) -> str:
    return results[index].summary.job_id if index in results else errors[index][0]


def _resolve_models(
    services: Services, refs: set[ModelRef]
) -> dict[ModelRef, ModelVersion | InvalidInput]:
    resolved: dict[ModelRef, ModelVersion | InvalidInput] = {}
    for ref in refs:
        try:
            resolved[ref] = services.models.resolve(ref)
        except InvalidInput as exc:
            resolved[ref] = exc
    return resolved


def _group_by_model(
    pending: list[_Pending], versions: dict[ModelRef, ModelVersion | InvalidInput]
) -> list[tuple[ModelVersion | InvalidInput, list[_Pending]]]:
    groups: dict[int, tuple[ModelVersion | InvalidInput, list[_Pending]]] = {}
    for p in pending:
        target = versions[p.request.model]
        key = target.id if isinstance(target, ModelVersion) else id(target)
        groups.setdefault(key, (target, []))[1].append(p)
    return list(groups.values())


def _score_group(
    services: Services, version: ModelVersion, group: list[_Pending], *, started: float
) -> tuple[dict[int, JobResult], dict[int, tuple[str, str, InvalidInput]]]:
    """Score every job of one model version with a single scorer call."""
    errors: dict[int, tuple[str, str, InvalidInput]] = {}
    valid: list[_Pending] = []
    for p in group:
        try:
            check_width(_inline(p).matrix, n_features=version.n_features, model=version.label)
            valid.append(p)
        except InvalidInput as exc:
            errors[p.index] = (p.request.job_id, version.label, exc)
    if not valid:
        return {}, errors
    loaded = services.models.load(version)
    stacked = np.vstack([_inline(p).matrix for p in valid])
    scores, hits = score_rows(services, loaded, stacked)
    now = services.clock.now()
    elapsed_ms = (services.clock.monotonic() - started) * 1000.0
    bounds = itertools.accumulate((len(_inline(p).matrix) for p in valid), initial=0)
    results: dict[int, JobResult] = {}
    for p, (a, b) in zip(valid, itertools.pairwise(bounds), strict=True):
        job_hits = int(hits[a:b].sum())
        results[p.index] = _job_result(
            services, p, loaded, scores[a:b], hits=job_hits, now=now, elapsed_ms=elapsed_ms
        )
    return results, errors


def _inline(pending: _Pending) -> InlineRecords:
    data = pending.request.input
    assert isinstance(data, InlineRecords)
    return data


def _job_result(
    services: Services,
    pending: _Pending,
    loaded: LoadedModel,
    scores: Scores,
    *,
    hits: int,
    now: datetime,
    elapsed_ms: float,
) -> JobResult:
    data = _inline(pending)
    chunk = SourceChunk(0, data.matrix, data.record_ids, data.timestamps)
    version = loaded.version
    result = _chunk_result(
        services, pending.request.job_id, version, chunk=chunk, scores=scores, hits=hits, now=now
    )
    summary = JobSummary(
        job_id=pending.request.job_id,
        model=version.name,
        model_version=version.version,
        n_records=result.n_records,
        n_anomalies=result.n_anomalies,
        threshold=version.threshold,
        cache_hits=hits,
        duration_ms=elapsed_ms,
        top_anomalies=result.top,
    )
    return JobResult(summary=summary, model_id=version.id, anomalies=result.anomalies)


# -- scoring shared by every path --------------------------------------------------------
def score_rows(
    services: Services, loaded: LoadedModel, matrix: np.ndarray[Any, np.dtype[np.float64]]
) -> tuple[Scores, np.ndarray[Any, np.dtype[np.bool_]]]:
    """Scores for the rows and which came from the prediction cache.

    The cache is skipped for a model whose scoring costs less per row than
    ``cache_min_row_cost_us`` (a cache round trip would cost more than it saves).
    """
    cache = services.cache
    cost = loaded.row_cost_us()
    worthwhile = cost is None or cost >= services.settings.cache_min_row_cost_us
    if cache is None or not worthwhile:
        return loaded.scorer_for(len(matrix)).score(matrix), np.zeros(len(matrix), bool)
    key = loaded.version.content_hash
    scores = cache.get_many(key, matrix)
    hits = ~np.isnan(scores)
    missing = np.flatnonzero(~hits)
    if missing.size:
        fresh = loaded.scorer_for(int(missing.size)).score(matrix[missing])
        scores[missing] = fresh
        cache.set_many(key, matrix[missing], fresh)
    return scores, hits


def _chunk_result(
    services: Services,
    job_id: str,
    version: ModelVersion,
    *,
    chunk: SourceChunk,
    scores: Scores,
    hits: int,
    now: datetime,
) -> ChunkResult:
    mask = anomaly_mask(scores, threshold=version.threshold)
    severities = severity(scores, version.stats)
    top = top_anomalies(
        scores,
        severities,
        mask,
        k=services.settings.top_anomalies,
        offset=chunk.offset,
        record_ids=chunk.record_ids,
    )
    return ChunkResult(
        chunk_index=0,
        n_records=len(chunk.matrix),
        n_anomalies=int(mask.sum()),
        cache_hits=hits,
        top=top,
        anomalies=anomaly_batch(
            job_id, version.id, chunk, scores=scores, severities=severities, mask=mask, now=now
        ),
    )


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


# -- large jobs: in process or fanned out ------------------------------------------------
def run_large(services: Services, message: DetectMessage, request: DetectionRequest) -> Outcome:
    """Claim the job, then score it here or plan its fan-out."""
    job = services.store.claim_job(
        request.job_id, model=str(request.model), now=services.clock.now()
    )
    if job.status != "running":
        return _stored_outcome(job)
    try:
        version = services.store.get_model(request.model)
        plan = _fan_out_plan(services, request, version)
        if plan is not None:
            return _start_fan_out(services, message, request, version, plan)
        return Succeeded(_run_in_process(services, request, version))
    except InvalidInput as exc:
        services.store.fail_job(
            request.job_id, error=str(exc), error_type=exc.code, now=services.clock.now()
        )
        return Failed(exc)


def _source_path(services: Services, request: DetectionRequest) -> str | None:
    data = request.input
    if isinstance(data, DatasetInput):
        return services.store.get_dataset(data.name).uri
    return data.path if isinstance(data, SourceInput) else None


def _fan_out_plan(
    services: Services, request: DetectionRequest, version: ModelVersion
) -> Any | None:
    path = _source_path(services, request)
    if path is None:
        return None
    plan = services.sources.plan(path, chunk_rows=services.settings.chunk_rows)
    if plan.n_features != version.n_features:
        raise InvalidInput(
            f"source {path} has {plan.n_features} feature columns but model {version.label} "
            f"expects {version.n_features}"
        )
    return (path, plan) if len(plan.chunks) > 1 else None


def _start_fan_out(
    services: Services,
    message: DetectMessage,
    request: DetectionRequest,
    version: ModelVersion,
    planned: tuple[str, Any],
) -> FannedOut:
    path, plan = planned
    services.store.start_fan_out(
        request.job_id,
        task_id=message.task_id,
        chunks_total=len(plan.chunks),
        model_id=version.id,
        dataset_name=input_label(request.input),
    )
    chunks = [
        {
            "job_id": request.job_id,
            "model_id": version.id,
            "model": version.label,
            "path": path,
            "columns": plan.columns,
            "chunk": [spec.index, spec.offset, spec.n_rows, spec.start, spec.stop],
        }
        for spec in plan.chunks
    ]
    return FannedOut(job_id=request.job_id, task_id=message.task_id, chunks=chunks)


def _run_in_process(
    services: Services, request: DetectionRequest, version: ModelVersion
) -> dict[str, Any]:
    started = services.clock.monotonic()
    loaded = services.models.load(version)
    tally = _Tally()
    now = services.clock.now()
    for chunk in iter_chunks(
        request.input,
        datasets=services.store,
        sources=services.sources,
        chunk_rows=services.settings.chunk_rows,
    ):
        check_width(chunk.matrix, n_features=version.n_features, model=version.label)
        scores, hits = score_rows(services, loaded, chunk.matrix)
        result = _chunk_result(
            services,
            request.job_id,
            version,
            chunk=chunk,
            scores=scores,
            hits=int(hits.sum()),
            now=now,
        )
        services.store.add_anomalies(result.anomalies)
        tally.n_records += result.n_records
        tally.n_anomalies += result.n_anomalies
        tally.cache_hits += result.cache_hits
        tally.tops.append(result.top)
    summary = JobSummary(
        job_id=request.job_id,
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


# -- one chunk of a fanned-out job -------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ChunkDone:
    """What a chunk task did. ``final`` is set when this chunk finished the job: the
    outcome to store as the result of ``task_id``."""

    job: JobRecord
    final: Outcome | None
    task_id: str | None


def run_chunk(services: Services, kwargs: Mapping[str, Any]) -> ChunkDone:
    """Score one chunk and settle it; bad data fails the whole job."""
    job_id = str(kwargs["job_id"])
    job = services.store.get_job(job_id)
    if job is None or job.status != "running":
        assert job is not None, f"chunk of unknown job {job_id}"
        return ChunkDone(job=job, final=None, task_id=None)
    spec = ChunkSpec(*(int(v) for v in kwargs["chunk"]))
    version = services.models.resolve(parse_model_ref(kwargs["model"]))  # exact: cached
    try:
        chunk = services.sources.read_chunk(str(kwargs["path"]), spec, columns=kwargs["columns"])
        check_width(chunk.matrix, n_features=version.n_features, model=version.label)
    except InvalidInput as exc:
        services.store.fail_job(
            job_id, error=str(exc), error_type=exc.code, now=services.clock.now()
        )
        failed = services.store.get_job(job_id)
        assert failed is not None
        return ChunkDone(job=failed, final=Failed(exc), task_id=failed.task_id)
    loaded = services.models.load(version)
    scores, hits = score_rows(services, loaded, chunk.matrix)
    now = services.clock.now()
    result = _chunk_result(
        services, job_id, version, chunk=chunk, scores=scores, hits=int(hits.sum()), now=now
    )
    done = services.store.complete_chunk(
        job_id,
        ChunkResult(
            spec.index,
            result.n_records,
            result.n_anomalies,
            result.cache_hits,
            result.top,
            result.anomalies,
        ),
        threshold=version.threshold,
        top_k=services.settings.top_anomalies,
        now=now,
    )
    if not done.completed:
        return ChunkDone(job=done.job, final=None, task_id=None)
    finished = services.store.get_job(job_id)
    assert finished is not None
    return ChunkDone(job=finished, final=_stored_outcome(finished), task_id=finished.task_id)


def _stored_outcome(job: JobRecord) -> Outcome:
    if job.status == "succeeded" and job.summary is not None:
        return Succeeded(dict(job.summary))
    return Failed(
        JobAlreadyFailed(
            f"job {job.job_id} already failed ({job.error_type}): {job.error}; "
            "submit a new job_id to try again"
        )
    )
