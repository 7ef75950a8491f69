"""Labelled evaluation: score a dataset registered with a label column through the
workers, as a fanned-out detection job is scored (same chunks, same scorer, same
prediction cache), and store how well the scores rank the labelled anomalies.

``pynomaly.evaluate`` plans the run (:func:`plan_evaluation`); each
``pynomaly.evaluate.chunk`` scores one chunk and stores its scores and labels
(:func:`run_evaluation_chunk`); the chunk that finds every chunk in computes the figures
(``domain.evaluation``) and stores them in ``evaluations``. Nothing is written to
``anomalies``, and the records are not counted for drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from pynomaly_workers.contract import RUNNING
from pynomaly_workers.domain.errors import InvalidInput, InvalidLabels, InvalidMessage
from pynomaly_workers.domain.evaluation import (
    EvaluationRequest,
    evaluate,
    parse_evaluation_request,
    parse_labels,
)
from pynomaly_workers.domain.jobs import check_job_id
from pynomaly_workers.domain.models import ModelVersion, parse_model_ref
from pynomaly_workers.domain.ports import ChunkSpec, Dataset, EvaluationChunk, EvaluationRun
from pynomaly_workers.domain.records import check_width
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.services.detection.scoring import score_rows
from pynomaly_workers.services.inputs import chunk_rows_for


def labelled(dataset: Dataset, label_column: str) -> Dataset:
    """``dataset`` (as a file describes it) with ``label_column`` as its label: the
    column must be there, and is no longer counted as a feature."""
    if label_column not in dataset.columns:
        raise InvalidLabels(
            f"{dataset.uri} has no column {label_column!r} to use as the label; its columns "
            f"are {', '.join(dataset.columns)}"
        )
    features = [c for c in dataset.columns if c != label_column]
    return replace(dataset, columns=features, n_features=len(features), label_column=label_column)


def plan_evaluation(adapters: Adapters, kwargs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Claim the run and describe each chunk's ``pynomaly.evaluate.chunk`` task; no
    chunks when the run already finished (a redelivery) or was refused (bad input: the
    run is failed with the reason)."""
    request = _request(adapters, kwargs)
    run = adapters.store.claim_evaluation(
        request.job_id,
        model=str(request.model),
        dataset=request.dataset,
        purpose=request.purpose,
        actor=request.actor,
        now=adapters.clock.now(),
    )
    if run.status != RUNNING:
        return []
    try:
        return _chunks(adapters, request)
    except InvalidInput as exc:
        _fail(adapters, request.job_id, exc)
        return []


def _request(adapters: Adapters, kwargs: Mapping[str, Any]) -> EvaluationRequest:
    """The checked message; a malformed one fails its run (if it has one) and raises."""
    try:
        return parse_evaluation_request(kwargs)
    except InvalidMessage as exc:
        job_id = kwargs.get("job_id")
        if isinstance(job_id, str) and adapters.store.get_evaluation_run(check_job_id(job_id)):
            _fail(adapters, job_id, exc)
        raise


def _chunks(adapters: Adapters, request: EvaluationRequest) -> list[dict[str, Any]]:
    version = adapters.store.get_model(request.model)
    dataset = adapters.store.get_dataset(request.dataset)
    if dataset.label_column is None:
        raise InvalidLabels(
            f"dataset {dataset.name!r} has no label column; register it with "
            f"'pynomaly-workers datasets add {dataset.name} PATH --label-column COLUMN'"
        )
    rows = chunk_rows_for(adapters.settings, n_features=version.n_features)
    plan = adapters.sources.plan(dataset.uri, chunk_rows=rows, label_field=dataset.label_column)
    if plan.n_features != version.n_features:
        raise InvalidInput(
            f"dataset {dataset.name!r} has {plan.n_features} feature columns but model "
            f"{version.label} expects {version.n_features}"
        )
    adapters.store.start_evaluation(
        request.job_id, model_id=version.id, chunks_total=len(plan.chunks)
    )
    return [
        {
            "job_id": request.job_id,
            "model": version.label,  # exact: every chunk scores with the same version
            "dataset": dataset.name,
            "path": dataset.uri,
            "columns": plan.columns,
            "pin": plan.pin,
            "label_field": plan.label_field,
            "chunk": [spec.index, spec.offset, spec.n_rows, spec.start, spec.stop],
        }
        for spec in plan.chunks
    ]


def run_evaluation_chunk(adapters: Adapters, kwargs: Mapping[str, Any]) -> EvaluationRun | None:
    """Score one chunk and store its scores and labels; the chunk that completes the
    run stores its figures. Returns the run if this chunk finished it."""
    job_id = str(kwargs["job_id"])
    run = adapters.store.get_evaluation_run(job_id)
    if run is None or run.status != RUNNING:
        return None
    version = adapters.models.resolve(parse_model_ref(kwargs["model"]))
    try:
        chunk = _score_chunk(adapters, version, kwargs)
    except InvalidInput as exc:
        return _fail(adapters, job_id, exc)
    if not adapters.store.add_evaluation_chunk(job_id, chunk, now=adapters.clock.now()):
        return None
    return finish_evaluation(adapters, job_id, version=version, dataset=str(kwargs["dataset"]))


def _score_chunk(
    adapters: Adapters, version: ModelVersion, kwargs: Mapping[str, Any]
) -> EvaluationChunk:
    spec = ChunkSpec(*(int(v) for v in kwargs["chunk"]))
    label_field = str(kwargs["label_field"])
    chunk = adapters.sources.read_chunk(
        str(kwargs["path"]),
        spec,
        columns=kwargs["columns"],
        pin=kwargs.get("pin"),
        label_field=label_field,
    )
    check_width(chunk.matrix, n_features=version.n_features, model=version.label)
    assert chunk.labels is not None
    labels = parse_labels(chunk.labels, column=label_field, first_index=chunk.offset)
    # The same scorer and cache as detection: a record scores here what a detection job
    # stores for it. Not counted for drift: this is not the traffic the model serves.
    scores, _ = score_rows(adapters, adapters.models.load(version), chunk.matrix, observe=False)
    return EvaluationChunk(
        chunk_index=spec.index,
        offset=chunk.offset,
        scores=scores,
        labels=labels,
        record_ids=chunk.record_ids,
    )


def finish_evaluation(
    adapters: Adapters, job_id: str, *, version: ModelVersion, dataset: str
) -> EvaluationRun:
    """Compute the figures over every stored chunk and store them (once)."""
    scored = adapters.store.evaluation_scores(job_id)
    try:
        evaluation = evaluate(
            scored.labels,
            scored.scores,
            threshold=version.threshold,
            dataset=f"dataset {dataset!r}",
        )
    except InvalidInput as exc:
        return _fail(adapters, job_id, exc)
    return adapters.store.finish_evaluation(job_id, evaluation, now=adapters.clock.now())


def _fail(adapters: Adapters, job_id: str, exc: InvalidInput) -> EvaluationRun:
    return adapters.store.fail_evaluation(
        job_id, error=str(exc), error_type=exc.code, now=adapters.clock.now()
    )


def run_evaluation(adapters: Adapters, kwargs: Mapping[str, Any]) -> EvaluationRun:
    """Plan and score every chunk in this process (tests and tools); the run as it
    ended."""
    for chunk in plan_evaluation(adapters, kwargs):
        run_evaluation_chunk(adapters, chunk)
    run = adapters.store.get_evaluation_run(str(kwargs["job_id"]))
    assert run is not None
    return run
