"""Training the benchmark's models through ``pynomaly.train``, like an upstream service."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celery import Celery

from benchmarks.config import CONTAMINATION
from benchmarks.jobs import send_detection, wait_prefix
from benchmarks.stack import Stack
from pynomaly_workers.client import submit_training

TRAIN_TIMEOUT = 120.0


def train(app: Celery, *, algorithms: dict[str, str], source: Path) -> dict[str, Any]:
    """Publish ``pynomaly.train`` for each model (name -> algorithm) on a CSV of normal
    rows, all at once so the worker processes train in parallel; wait for every version."""
    started = time.perf_counter()
    submissions = {
        model: submit_training(
            model=model,
            algorithm=algorithm,
            source=str(source),
            contamination=CONTAMINATION,
            app=app,
        )
        for model, algorithm in algorithms.items()
    }
    summaries: dict[str, Any] = {}
    for model, submission in submissions.items():
        summaries[model] = app.AsyncResult(submission.task_id).get(timeout=TRAIN_TIMEOUT)
        summaries[model]["train_s"] = round(time.perf_counter() - started, 2)
    return summaries


def warm_up(
    stack: Stack, app: Celery, *, models: Sequence[str], records: Sequence[list[float]], tag: str
) -> int:
    """A burst of one-record jobs per model, so every worker process has each model loaded
    before anything is timed (loading is a one-off cost per process and version, not per
    job), and before the in-process inference measurement, which wants idle workers.
    Returns how many of the jobs finished within ``wait_s``; the run goes on regardless."""
    prefix = f"warm-{tag}-"
    sent = [
        send_detection(app, job_id=f"{prefix}{model}-{i}", model=model, records=[record])
        for model in models
        for i, record in enumerate(records)
    ]
    return wait_prefix(stack.engine, prefix, expected=len(sent), timeout=stack.sizes.wait_s)
