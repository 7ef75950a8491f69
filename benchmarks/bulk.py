"""A large ``source`` job end to end, and the one-process limit it is compared with.

The limit is one process with no queue: read the same CSV with pyarrow in blocks (as
the source adapter does), score with the backend the inference measurement found
fastest, and write the anomalies with the project's own ``store.add_anomalies``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from celery import Celery

from benchmarks.data import Matrix
from benchmarks.inference import ONNX_THREADS
from benchmarks.jobs import send_detection, wait_job
from benchmarks.memory import sampling_rss
from benchmarks.stack import Stack
from benchmarks.stats import rate
from pynomaly_workers.adapters.scorers import sklearn
from pynomaly_workers.adapters.scorers.explain import explainer_for
from pynomaly_workers.adapters.scorers.forest import ForestScorer
from pynomaly_workers.adapters.scorers.onnx import OnnxScorer
from pynomaly_workers.contract import SUCCEEDED
from pynomaly_workers.domain.models import ModelRef, ModelVersion
from pynomaly_workers.domain.ports import AnomalyBatch, Scorer
from pynomaly_workers.domain.scoring import anomaly_mask, severity

BLOCK_BYTES = 8 << 20  # the source adapter's CSV block size


def run_bulk(
    stack: Stack,
    app: Celery,
    *,
    model: str,
    source: Path | str,
    rows: int,
    worker_pid: int,
    sample: bool = True,
) -> dict[str, Any]:
    """Enqueue one ``source`` job and time it until its record says succeeded; with
    ``sample``, the worker's memory is sampled meanwhile."""
    job_id = f"bulk-{uuid.uuid4().hex[:8]}"
    with sampling_rss(worker_pid) if sample else nullcontext(None) as peak:
        sent = send_detection(app, job_id=job_id, model=model, source=str(source))
        job = wait_job(stack.adapters, job_id, timeout=stack.sizes.patience(rows / 2_000))
    if job.status != SUCCEEDED or job.finished_at is None:
        raise RuntimeError(f"bulk job {job_id} {job.status}: {job.error}")
    seconds = job.finished_at.timestamp() - sent.sent_at
    return {
        "job": {
            "records": job.n_records or 0,
            "seconds": round(seconds, 3),
            "records_per_s": rate(job.n_records or 0, seconds),
            "anomalies": job.n_anomalies,
            "worker_duration_s": round((job.duration_ms or 0.0) / 1000, 3),
            "queue_wait_s": _queue_wait(job.started_at, sent.sent_at),
            "cache_hits": job.cache_hits,
        },
        "memory": peak.report() if peak is not None else None,
    }


def alternate(
    stack: Stack,
    app: Celery,
    *,
    model: str,
    source: Path,
    rows: int,
    backend: str,
    worker_pid: int,
    repeats: int,
) -> dict[str, list[float]]:
    """The bulk job and the one-process limit again, alternated ``repeats`` times, so a
    ratio can compare the best of each: on a shared machine, load only ever adds time,
    and a single pair can differ by 20% from the next."""
    jobs: list[float] = []
    limits: list[float] = []
    for _ in range(repeats):
        run = run_bulk(
            stack, app, model=model, source=source, rows=rows, worker_pid=worker_pid, sample=False
        )
        jobs.append(run["job"]["seconds"])
        limits.append(run_limit(stack, model=model, source=source, backend=backend)["seconds"])
    return {"job_s": jobs, "limit_s": limits}


def _queue_wait(started_at: datetime | None, sent_at: float) -> float | None:
    return round(started_at.timestamp() - sent_at, 3) if started_at is not None else None


def best_scorer(stack: Stack, version: ModelVersion, backend: str) -> Scorer:
    """The model version's scorer for ``backend``, loaded from the store."""
    store = stack.adapters.store
    if backend == "onnx" and version.onnx_sha256 is not None:
        return OnnxScorer(store.load_artifact(version.onnx_sha256), threads=ONNX_THREADS)
    estimator = sklearn.load(store.load_artifact(version.artifact_sha256))
    if backend == "forest" and ForestScorer.supports(estimator):
        return ForestScorer(estimator)
    return sklearn.SklearnScorer(estimator)


def csv_blocks(source: Path) -> Iterator[Matrix]:
    """The CSV's rows as float64 matrices, one per pyarrow block."""
    import pyarrow.csv as pacsv

    reader = pacsv.open_csv(source, read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES))
    for batch in reader:
        columns = [column.to_numpy(zero_copy_only=False) for column in batch.columns]
        yield np.ascontiguousarray(np.column_stack(columns), dtype=np.float64)


def run_limit(
    stack: Stack, *, model: str, source: Path, backend: str, explain: bool = False
) -> dict[str, Any]:
    """Read, score and persist the whole CSV in this one process; no queue, no worker.
    With ``explain``, the flagged rows are also explained, as the workers do."""
    version = stack.adapters.store.get_model(ModelRef(model))
    scorer = best_scorer(stack, version, backend)
    explainer = _explainer(stack, version) if explain else None
    job_id = f"limit-{uuid.uuid4().hex[:8]}"
    records = anomalies = 0
    started = time.perf_counter()
    for matrix in csv_blocks(source):
        scores = scorer.score(matrix)
        if explainer is not None:
            flagged = anomaly_mask(scores, threshold=version.threshold)
            explainer(matrix[flagged])
        anomalies += _persist(stack, version, job_id, matrix, scores=scores, offset=records)
        records += len(matrix)
    seconds = time.perf_counter() - started
    return {
        "records": records,
        "seconds": round(seconds, 3),
        "records_per_s": rate(records, seconds),
        "anomalies": anomalies,
        "backend": scorer.backend,
    }


def _explainer(stack: Stack, version: ModelVersion) -> Any:
    estimator = sklearn.load(stack.adapters.store.load_artifact(version.artifact_sha256))
    return explainer_for(estimator, profile=version.profile)


def explain_overhead(
    stack: Stack, *, model: str, source: Path, backend: str, repeats: int = 3
) -> dict[str, Any]:
    """The one-process pipeline with and without explanations, alternated ``repeats``
    times; the overhead compares the best of each, which load on a shared machine
    distorts far less than two worker jobs minutes apart."""
    best = {True: float("inf"), False: float("inf")}
    for _ in range(repeats):
        for explain in (False, True):
            run = run_limit(stack, model=model, source=source, backend=backend, explain=explain)
            best[explain] = min(best[explain], run["seconds"])
    return {
        "off_s": round(best[False], 3),
        "on_s": round(best[True], 3),
        "overhead": round(best[True] / best[False] - 1.0, 3),
        "repeats": repeats,
    }


def _persist(
    stack: Stack,
    version: ModelVersion,
    job_id: str,
    matrix: Matrix,
    *,
    scores: Any,
    offset: int,
) -> int:
    mask = anomaly_mask(scores, threshold=version.threshold)
    rows = np.flatnonzero(mask)
    now = datetime.now(UTC)
    batch = AnomalyBatch(
        job_id=job_id,
        model_id=version.id,
        record_index=(rows + offset).astype(np.int64),
        score=scores[rows],
        severity=severity(scores[rows], version.stats),
        timestamp=[now] * len(rows),
        record_id=[None] * len(rows),
    )
    return stack.adapters.store.add_anomalies(batch)
