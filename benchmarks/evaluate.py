"""Labelled evaluation (issue #22): its rate beside the bulk detection rate in the same
run, and average precision per algorithm beside PyOD's on real labelled data.

**Rate.** The bulk section's readings (same seed, so the same records), written once
more with their ``label`` column (which records were pushed off-manifold), registered
as a labelled dataset. One worker, one IsolationForest; a ``source`` detection job on
the unlabelled file and an evaluation of the labelled one are alternated ``ROUNDS``
times, each timed from publishing to the moment its result is visible (the job record
succeeded; the evaluation's figures stored). The ratio compares the best of each, as
the bulk section does: load on a shared machine only ever adds time.

**Average precision.** The WBC-style set (``benchmarks.labelled``): each algorithm
trained through ``pynomaly.train`` on the training half and evaluated through
``pynomaly.evaluate`` on the labelled test half, beside PyOD's implementation fitted on
the rows ``pynomaly.train`` fits on (it holds 10% out for its ONNX parity check), and on
the whole training half, and scored on the same test half.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from celery import Celery

from benchmarks.config import IFOREST_MODEL, RESULTS
from benchmarks.data import cached_readings_csv, cached_training_csv, readings
from benchmarks.jobs import publisher, result_client, send_detection, wait_job
from benchmarks.labelled import (
    ALGORITHMS,
    LABEL_COLUMN,
    pyod_average_precision,
    split,
    wbc,
    write_labelled_csv,
)
from benchmarks.models import train
from benchmarks.progress import say
from benchmarks.stack import Stack, running_worker
from benchmarks.stats import rate, ratio
from pynomaly_workers.client import publish, submit_training
from pynomaly_workers.contract import (
    EVALUATE_TASK,
    EVALUATION_PURPOSES,
    FINAL_STATUSES,
    SUCCEEDED,
)
from pynomaly_workers.services.evaluation import labelled
from pynomaly_workers.services.training import split_holdout

ROUNDS = 2
"""Detection/evaluation pairs, alternated."""
SEED = 13  # the bulk section's readings (inputs.prepare_inputs)
WBC_PREFIX = "bench-wbc-"
TRAIN_TIMEOUT = 120.0


def labelled_readings_csv(folder: Path, rows: int, *, n_features: int, fraction: float) -> Path:
    """The bulk section's readings with a ``label`` column, generated on first use and
    written as ``data.write_csv`` writes them (four decimals), so each row is the same
    record as in the unlabelled file."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    path = folder / f"readings-{rows}x{n_features}-s{SEED}-a{fraction}-labelled-v1.csv"
    if path.is_file():
        return path
    data = readings(rows, n_features=n_features, seed=SEED, anomaly_fraction=fraction)
    rounded = np.round(data.matrix, 4)
    columns = {f"f{i}": rounded[:, i] for i in range(n_features)}
    table = pa.table({**columns, LABEL_COLUMN: data.injected.astype(np.int8)})
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    pacsv.write_csv(table, partial)
    partial.replace(path)
    return path


def register_labelled(stack: Stack, name: str, path: Path) -> None:
    """Register ``path`` as dataset ``name`` with its label column, as
    ``datasets add --label-column`` does."""
    described = labelled(stack.adapters.sources.describe(str(path)), LABEL_COLUMN)
    stack.adapters.store.register_dataset(
        replace(described, name=name), now=stack.adapters.clock.now()
    )


def send_evaluation(stack: Stack, app: Celery, *, model: str, dataset: str) -> tuple[str, float]:
    """Record and publish one evaluation, as ``pynomaly-workers evaluate`` does; its job
    id and the wall-clock time just before publishing."""
    job_id = f"bench-eval-{uuid.uuid4().hex[:8]}"
    stack.adapters.store.enqueue_evaluation(
        job_id,
        model=model,
        dataset=dataset,
        purpose=EVALUATION_PURPOSES[0],
        actor="bench",
        now=stack.adapters.clock.now(),
    )
    sent_at = time.time()
    kwargs = {"job_id": job_id, "model": model, "dataset": dataset, "actor": "bench"}
    publish(app, EVALUATE_TASK, kwargs=kwargs)
    return job_id, sent_at


def wait_evaluation(stack: Stack, job_id: str, *, timeout: float) -> dict[str, Any]:
    """Poll until the evaluation's figures are stored; its figures."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = stack.adapters.store.get_evaluation_run(job_id)
        if run is not None and run.status in FINAL_STATUSES:
            if run.status != SUCCEEDED or run.finished_at is None:
                raise RuntimeError(f"evaluation {job_id} {run.status}: {run.error}")
            stored = stack.adapters.store.evaluation_of(job_id)
            assert stored is not None
            return {"finished_at": run.finished_at.timestamp(), **stored.metrics}
        time.sleep(0.02)
    raise RuntimeError(f"evaluation {job_id} did not finish within {timeout:.0f}s")


def timed_detection(stack: Stack, app: Celery, *, source: Path, rows: int) -> float:
    """Seconds from publishing a ``source`` job to its record saying succeeded."""
    job_id = f"bench-evdet-{uuid.uuid4().hex[:8]}"
    sent = send_detection(app, job_id=job_id, model=IFOREST_MODEL, source=str(source))
    job = wait_job(stack.adapters, job_id, timeout=stack.sizes.patience(rows / 2_000))
    if job.status != SUCCEEDED or job.finished_at is None or job.n_records != rows:
        raise RuntimeError(f"detection {job_id} {job.status} ({job.n_records}): {job.error}")
    return job.finished_at.timestamp() - sent.sent_at


def timed_evaluation(
    stack: Stack, app: Celery, *, dataset: str, rows: int
) -> tuple[float, dict[str, Any]]:
    """Seconds from publishing an evaluation to its figures being stored, and them."""
    job_id, sent_at = send_evaluation(stack, app, model=IFOREST_MODEL, dataset=dataset)
    found = wait_evaluation(stack, job_id, timeout=stack.sizes.patience(rows / 2_000))
    return found.pop("finished_at") - sent_at, found


def measure_rate(stack: Stack, app: Celery, *, source: Path, labelled_csv: Path) -> dict[str, Any]:
    """The alternated detection and evaluation runs (see the module)."""
    rows = stack.sizes.bulk_rows
    register_labelled(stack, "bench-labelled", labelled_csv)
    detect_s: list[float] = []
    evaluate_s: list[float] = []
    figures: dict[str, Any] = {}
    for round_ in range(ROUNDS):
        detect_s.append(round(timed_detection(stack, app, source=source, rows=rows), 3))
        seconds, figures = timed_evaluation(stack, app, dataset="bench-labelled", rows=rows)
        evaluate_s.append(round(seconds, 3))
        say(
            f"evaluate round {round_}: detection {rate(rows, detect_s[-1])} records/s, "
            f"evaluation {rate(rows, evaluate_s[-1])} records/s"
        )
    return {
        "records": rows,
        "detect_s": detect_s,
        "evaluate_s": evaluate_s,
        "detect_records_per_s": rate(rows, min(detect_s)),
        "evaluate_records_per_s": rate(rows, min(evaluate_s)),
        "ratio_to_detect": ratio(min(detect_s), min(evaluate_s)),
        "ratio_to_detect_first": ratio(detect_s[0], evaluate_s[0]),
        "metrics": {k: round(float(v), 6) for k, v in figures.items()},
    }


def measure_wbc(stack: Stack) -> dict[str, Any]:
    """Average precision per algorithm on the WBC-style test half, through the workers
    and with PyOD on the same split."""
    training, test = split(wbc(seed=0))
    fit_rows, _ = split_holdout(training.matrix)  # the rows pynomaly.train fits on
    folder = RESULTS / "data"
    register_labelled(stack, "bench-wbc-test", write_labelled_csv(folder / "wbc-test.csv", test))
    with result_client(stack.settings) as app:
        sent = {
            algorithm: submit_training(
                model=f"{WBC_PREFIX}{algorithm}",
                algorithm=algorithm,
                records=training.matrix.tolist(),
                contamination=training.contamination,
                app=app,
            )
            for algorithm in ALGORITHMS
        }
        for submission in sent.values():
            app.AsyncResult(submission.task_id).get(timeout=TRAIN_TIMEOUT)
    out: dict[str, Any] = {
        "dataset": "scikit-learn breast cancer, ODDS WBC style",
        "train_records": len(training.labels),
        "test_records": len(test.labels),
        "test_anomalies": int(test.labels.sum()),
    }
    with publisher(stack.settings) as app:
        jobs = {
            a: send_evaluation(stack, app, model=f"{WBC_PREFIX}{a}", dataset="bench-wbc-test")[0]
            for a in ALGORITHMS
        }
        for algorithm, job_id in jobs.items():
            found = wait_evaluation(stack, job_id, timeout=stack.sizes.patience(60))
            c = training.contamination
            pyod = pyod_average_precision(algorithm, fit_rows, test, contamination=c)
            whole = pyod_average_precision(algorithm, training.matrix, test, contamination=c)
            out[algorithm] = {
                "average_precision": round(found["average_precision"], 4),
                "pyod_average_precision": round(pyod, 4),
                "pyod_whole_half_average_precision": round(whole, 4),
                "roc_auc": round(found["roc_auc"], 4),
                "ratio_to_pyod": ratio(found["average_precision"], pyod),
            }
    return out


def run_evaluate(stack: Stack) -> dict[str, Any]:
    """The section (see the module): its own worker, model and files."""
    sizes = stack.sizes
    folder = RESULTS / "data"
    fraction, width = sizes.anomaly_fraction, sizes.n_features
    source = cached_readings_csv(
        folder, sizes.bulk_rows, n_features=width, seed=SEED, anomaly_fraction=fraction
    )
    labelled_csv = labelled_readings_csv(
        folder, sizes.bulk_rows, n_features=width, fraction=fraction
    )
    training_csv = cached_training_csv(folder, sizes.train_rows, n_features=width, seed=11)
    with running_worker(stack, cache=False, name="worker-evaluate"):
        with result_client(stack.settings) as app:
            train(app, algorithms={IFOREST_MODEL: "iforest"}, source=training_csv)
        with publisher(stack.settings) as app:
            rate_figures = measure_rate(stack, app, source=source, labelled_csv=labelled_csv)
        wbc_figures = measure_wbc(stack)
    return {**rate_figures, "wbc": wbc_figures}
