"""Small inline jobs, micro-batched: all small jobs of one flush are scored together per
model version (one scorer call, one cache round trip) and settled in ONE transaction."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from pynomaly_workers.domain.errors import InvalidInput
from pynomaly_workers.domain.jobs import DetectionRequest, InlineRecords, summarize
from pynomaly_workers.domain.models import ModelRef, ModelVersion
from pynomaly_workers.domain.ports import JobFailure, JobRecord, JobResult, SourceChunk
from pynomaly_workers.domain.records import check_width
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.services.detection.outcomes import (
    DetectMessage,
    Failed,
    Outcome,
    Succeeded,
    stored_outcome,
)
from pynomaly_workers.services.detection.scoring import (
    Explaining,
    chunk_result,
    live_rules,
    score_rows,
)
from pynomaly_workers.services.detection.shadow import challenger_for, shadow_chunk


@dataclass(frozen=True, slots=True)
class SmallJob:
    """A parsed small job, at its position in the batch."""

    index: int
    message: DetectMessage
    request: DetectionRequest

    @property
    def records(self) -> InlineRecords:
        """The job's inline records (a small job always has them)."""
        data = self.request.input
        assert isinstance(data, InlineRecords)
        return data


@dataclass(frozen=True, slots=True)
class Rejected:
    """A job of the batch that failed on bad input, at its position."""

    index: int
    job_id: str
    model: str
    error: InvalidInput


def run_small(
    adapters: Adapters, jobs: list[SmallJob], rejected: list[Rejected]
) -> dict[int, Outcome]:
    """Score ``jobs``, settle them and ``rejected`` in one transaction; one outcome per
    batch position. A job that had finished before answers with its stored outcome."""
    started = adapters.clock.monotonic()
    versions = _resolve_models(adapters, {job.request.model for job in jobs})
    results: dict[int, JobResult] = {}
    errors = {r.index: r for r in rejected}
    for target, group in _group_by_model(jobs, versions):
        if isinstance(target, InvalidInput):
            errors.update({j.index: _reject(j, str(j.request.model), target) for j in group})
            continue
        scored, bad = _score_group(adapters, target, group, started=started)
        results.update(scored)
        errors.update(bad)
    replays = adapters.store.settle_jobs(
        list(results.values()),
        [JobFailure(r.job_id, r.model[:140], str(r.error), r.error.code) for r in errors.values()],
        now=adapters.clock.now(),
    )
    outcomes: dict[int, Outcome] = {i: Succeeded(r.summary) for i, r in results.items()}
    outcomes.update({i: Failed(r.error) for i, r in errors.items()})
    return _replayed(outcomes, results, errors, replays)


def _replayed(
    outcomes: dict[int, Outcome],
    results: dict[int, JobResult],
    errors: dict[int, Rejected],
    replays: dict[str, JobRecord],
) -> dict[int, Outcome]:
    """Swap in the stored outcome of each job that had already finished."""
    for index in list(outcomes):
        job_id = results[index].summary.job_id if index in results else errors[index].job_id
        if job_id in replays:
            outcomes[index] = stored_outcome(replays[job_id], replayed=True)
    return outcomes


def _reject(job: SmallJob, model: str, error: InvalidInput) -> Rejected:
    return Rejected(job.index, job.request.job_id, model, error)


def _resolve_models(
    adapters: Adapters, refs: set[ModelRef]
) -> dict[ModelRef, ModelVersion | InvalidInput]:
    return adapters.models.resolve_many(refs)


def _group_by_model(
    jobs: list[SmallJob], versions: dict[ModelRef, ModelVersion | InvalidInput]
) -> list[tuple[ModelVersion | InvalidInput, list[SmallJob]]]:
    groups: dict[int, tuple[ModelVersion | InvalidInput, list[SmallJob]]] = {}
    for job in jobs:
        target = versions[job.request.model]
        key = target.id if isinstance(target, ModelVersion) else id(target)
        groups.setdefault(key, (target, []))[1].append(job)
    return list(groups.values())


def _score_group(
    adapters: Adapters, version: ModelVersion, group: list[SmallJob], *, started: float
) -> tuple[dict[int, JobResult], dict[int, Rejected]]:
    """Score every job of one model version with a single scorer call."""
    errors: dict[int, Rejected] = {}
    valid: list[SmallJob] = []
    for job in group:
        try:
            check_width(job.records.matrix, n_features=version.n_features, model=version.label)
            valid.append(job)
        except InvalidInput as exc:
            errors[job.index] = _reject(job, version.label, exc)
    if not valid:
        return {}, errors
    loaded = adapters.models.load(version)
    scores, hits = score_rows(adapters, loaded, np.vstack([j.records.matrix for j in valid]))
    now = adapters.clock.now()
    elapsed_ms = (adapters.clock.monotonic() - started) * 1000.0
    top_k = adapters.settings.top_anomalies
    explaining = Explaining.of(adapters, loaded)
    rules = live_rules(adapters, version)
    bounds = itertools.accumulate((len(j.records.matrix) for j in valid), initial=0)
    results: dict[int, JobResult] = {}
    for job, (a, b) in zip(valid, itertools.pairwise(bounds), strict=True):
        data = job.records
        chunk = SourceChunk(
            0, data.matrix, data.record_ids, data.timestamps, entities=data.entities
        )
        job_id = job.request.job_id
        job_hits = int(hits[a:b].sum())
        result = chunk_result(
            job_id,
            version,
            chunk=chunk,
            scores=scores[a:b],
            hits=job_hits,
            top_k=top_k,
            now=now,
            explaining=explaining,
            rules=rules,
        )
        summary = summarize(job_id, version, [result.tally], top_k=top_k, duration_ms=elapsed_ms)
        results[job.index] = JobResult(summary, version.id, result.anomalies)
        challenger = challenger_for(adapters, job.request.model)
        if challenger is not None:
            shadow_chunk(
                adapters,
                job_id=job_id,
                chunk_index=0,
                chunk=chunk,
                champion=version,
                champion_scores=scores[a:b],
                challenger=challenger,
            )
    return results, errors
