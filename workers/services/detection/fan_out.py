"""Fan-out: a source or dataset of several chunks is planned here and scored by
``pynomaly.detect.chunk`` tasks on every worker; the last chunk completes the job."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pynomaly_workers.contract import DETECT_TASK, RUNNING
from pynomaly_workers.domain.errors import InvalidInput
from pynomaly_workers.domain.joblog import failure_line, seconds_to_ms, summary_line
from pynomaly_workers.domain.jobs import DatasetInput, DetectionRequest, SourceInput
from pynomaly_workers.domain.models import ModelVersion, parse_model_ref
from pynomaly_workers.domain.ports import ChunkSpec, JobRecord, SourcePlan
from pynomaly_workers.domain.records import check_width
from pynomaly_workers.domain.thresholds import with_threshold
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.services.detection.outcomes import (
    Failed,
    FannedOut,
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
from pynomaly_workers.services.inputs import chunk_rows_for, input_label


@dataclass(frozen=True, slots=True)
class FanOutPlan:
    """The file a job reads and its chunks."""

    path: str
    plan: SourcePlan


def plan_fan_out(
    adapters: Adapters, request: DetectionRequest, version: ModelVersion
) -> FanOutPlan | None:
    """The job's chunks if it reads a file of more than one chunk, else None."""
    path, label_field = _source_path(adapters, request)
    if path is None:
        return None
    rows = chunk_rows_for(adapters.settings, n_features=version.n_features)
    data = request.input
    entity_field = data.entity_field if isinstance(data, DatasetInput | SourceInput) else None
    # A labelled dataset's label column is read apart, never as a feature.
    plan = adapters.sources.plan(
        path, chunk_rows=rows, entity_field=entity_field, label_field=label_field
    )
    if plan.n_features != version.n_features:
        raise InvalidInput(
            f"source {path} has {plan.n_features} feature columns but model {version.label} "
            f"expects {version.n_features}"
        )
    return FanOutPlan(path, plan) if len(plan.chunks) > 1 else None


def _source_path(adapters: Adapters, request: DetectionRequest) -> tuple[str | None, str | None]:
    """The file the job reads, and its label column (a labelled dataset's)."""
    data = request.input
    if isinstance(data, DatasetInput):
        dataset = adapters.store.get_dataset(data.name)
        return dataset.uri, dataset.label_column
    return (data.path if isinstance(data, SourceInput) else None), None


def start_fan_out(
    adapters: Adapters,
    *,
    task_id: str,
    request: DetectionRequest,
    version: ModelVersion,
    planned: FanOutPlan,
    queue_wait_s: float | None = None,
) -> FannedOut:
    """Record the chunk count and the waiting task, and describe each chunk's task
    (each carries the job's queue wait, for the line of the chunk that finishes it)."""
    plan = planned.plan
    challenger = challenger_for(adapters, request.model)
    adapters.store.start_fan_out(
        request.job_id,
        task_id=task_id,
        chunks_total=len(plan.chunks),
        model_id=version.id,
        dataset_name=input_label(request.input),
    )
    chunks = [
        {
            "job_id": request.job_id,
            "model_id": version.id,
            "model": version.label,
            "path": planned.path,
            "columns": plan.columns,
            "pin": plan.pin,
            "entity_field": plan.entity_field,
            "label_field": plan.label_field,
            "shadow": challenger.label if challenger is not None else None,
            "chunk": [spec.index, spec.offset, spec.n_rows, spec.start, spec.stop],
            # a threshold changed while the job runs applies to the next job, not to the
            # rest of this one: every chunk uses the threshold of the plan
            "threshold": version.threshold,
            "queue_wait_ms": seconds_to_ms(queue_wait_s),
        }
        for spec in plan.chunks
    ]
    return FannedOut(job_id=request.job_id, task_id=task_id, chunks=chunks)


@dataclass(frozen=True, slots=True)
class ChunkDone:
    """What a chunk task did. ``final`` is set when this chunk finished the job: the
    outcome to store as the result of ``task_id``."""

    job: JobRecord
    final: Succeeded | Failed | None = None

    @property
    def task_id(self) -> str | None:
        """The ``pynomaly.detect`` task waiting for the job's outcome."""
        return self.job.task_id


def run_chunk(adapters: Adapters, kwargs: Mapping[str, Any]) -> ChunkDone:
    """Score one chunk and settle it; bad data fails the whole job."""
    job_id = str(kwargs["job_id"])
    job = adapters.store.get_job(job_id)
    if job is None:
        raise LookupError(f"chunk of unknown job {job_id}: its job row is missing")
    if job.status != RUNNING:
        return ChunkDone(job=job)
    spec = ChunkSpec(*(int(v) for v in kwargs["chunk"]))
    version = adapters.models.resolve(parse_model_ref(kwargs["model"]))  # exact: cached
    planned = kwargs.get("threshold")
    if isinstance(planned, float):  # chunks planned before thresholds were pinned have none
        version = with_threshold(version, planned)
    try:
        chunk = adapters.sources.read_chunk(
            str(kwargs["path"]),
            spec,
            columns=kwargs["columns"],
            pin=kwargs.get("pin"),
            entity_field=kwargs.get("entity_field"),
            label_field=kwargs.get("label_field"),
        )
        check_width(chunk.matrix, n_features=version.n_features, model=version.label)
    except InvalidInput as exc:
        failed = adapters.store.fail_job(
            job_id, error=str(exc), error_type=exc.code, now=adapters.clock.now()
        )
        return _finished(adapters, kwargs, ChunkDone(job=failed, final=Failed(exc)))
    loaded = adapters.models.load(version)
    scores, hits = score_rows(adapters, loaded, chunk.matrix)
    now = adapters.clock.now()
    top_k = adapters.settings.top_anomalies
    result = chunk_result(
        job_id,
        version,
        chunk=chunk,
        scores=scores,
        hits=int(hits.sum()),
        top_k=top_k,
        now=now,
        chunk_index=spec.index,
        explaining=Explaining.of(adapters, loaded),
        rules=live_rules(adapters, version),
    )
    if kwargs.get("shadow"):
        shadow_chunk(
            adapters,
            job_id=job_id,
            chunk_index=spec.index,
            chunk=chunk,
            champion=version,
            champion_scores=scores,
            challenger=adapters.models.resolve(parse_model_ref(kwargs["shadow"])),
        )
    done = adapters.store.complete_chunk(job_id, result, version=version, top_k=top_k, now=now)
    final = stored_outcome(done.job) if done.completed else None
    return _finished(adapters, kwargs, ChunkDone(job=done.job, final=final))


def _finished(adapters: Adapters, kwargs: Mapping[str, Any], done: ChunkDone) -> ChunkDone:
    """Write the job's line if this chunk finished it: the job's duration from its record
    (its start on the worker that planned it -> now), its wait from the chunk's kwargs."""
    if done.final is None or not adapters.job_log.enabled:
        return done
    job = done.job
    started = job.started_at
    elapsed = (adapters.clock.now() - started).total_seconds() * 1000.0 if started else None
    wait_ms = kwargs.get("queue_wait_ms")
    wait = float(wait_ms) if isinstance(wait_ms, int | float) else None
    if isinstance(done.final, Succeeded):
        summary = done.final.summary
        line = summary_line(
            summary,
            task=DETECT_TASK,
            duration_ms=summary.duration_ms,
            queue_wait_ms=wait,
            task_id=job.task_id,
        )
    else:
        line = failure_line(
            job.job_id,
            task=DETECT_TASK,
            model=job.model,
            error_type=done.final.error.code,
            duration_ms=elapsed,
            queue_wait_ms=wait,
            task_id=job.task_id,
        )
    adapters.job_log.finished(line)
    return done
