"""A real worker with PYNOMALY_LOG_FORMAT=json: every finished job leaves exactly one
JSON line carrying its job_id and counts (a trained model, a one-job batch, a
redelivery, a fanned-out job)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from pynomaly_workers.client import submit_detection, submit_training
from pynomaly_workers.demo import WorkerProcess, wait_for
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.services.health import check_health
from tests.e2e.conftest import finished_lines
from tests.e2e.test_worker import wait_job
from tests.factories import rows_with_outliers, training_rows, write_csv

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def json_worker(
    e2e_env: dict[str, str], e2e_adapters: Adapters, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    log = Path(tmp_path_factory.mktemp("logs")) / "worker.log"
    env = {**os.environ, **e2e_env, "PYNOMALY_LOG_FORMAT": "json", "PYNOMALY_JOB_LOG": "true"}
    process = WorkerProcess(log_path=log, concurrency=2, env=env)
    report = check_health(e2e_adapters, queues=["detection", "training"], timeout=60)
    if not report["ok"]:
        process.stop()
        pytest.fail(f"worker did not answer: {report}; log:\n{log.read_text()[-3000:]}")
    yield process
    process.stop()


def job_lines(worker: WorkerProcess, job_id: str) -> list[dict[str, Any]]:
    """The worker's finished job lines about ``job_id`` (every other line must be JSON
    too)."""
    found = []
    for text in finished_lines(worker.log_path):
        data = json.loads(text)  # JSON logs: one object a line, nothing else
        if data.get("event") == "job_finished" and data.get("job_id") == job_id:
            found.append(data)
    return found


def lines_after_quiet(worker: WorkerProcess, job_id: str, *, count: int) -> list[dict[str, Any]]:
    """Wait for ``count`` lines about the job, then a moment more, so an extra line
    written a little later would be counted too."""
    wait_for(lambda: len(job_lines(worker, job_id)) >= count, timeout=30)
    time.sleep(1.0)
    return job_lines(worker, job_id)


@pytest.fixture(scope="module")
def trained(json_worker: WorkerProcess, e2e_app: Celery) -> dict[str, Any]:
    submission = submit_training(
        model="joblog", records=training_rows(), params={"n_estimators": 25}, app=e2e_app
    )
    result: dict[str, Any] = e2e_app.AsyncResult(submission.task_id).get(timeout=120)
    return {**result, "task_id": submission.task_id}


def test_training_leaves_one_line_with_the_version(
    trained: dict[str, Any], json_worker: WorkerProcess
) -> None:
    (line,) = lines_after_quiet(json_worker, trained["task_id"], count=1)

    assert (line["task"], line["status"], line["level"]) == ("pynomaly.train", "succeeded", "INFO")
    assert (line["model"], line["model_version"]) == ("joblog", trained["model_version"])
    assert line["records"] == trained["n_training_rows"]
    assert line["queue_wait_ms"] is not None


def test_a_detection_job_leaves_exactly_one_line_with_its_counts_and_a_redelivery_a_duplicate(
    trained: dict[str, Any], json_worker: WorkerProcess, e2e_app: Celery, e2e_adapters: Adapters
) -> None:
    # Given a job with three far outliers, run by the worker
    submission = submit_detection(
        model="joblog", records=rows_with_outliers(), job_id="joblog-1", app=e2e_app
    )
    job = wait_job(e2e_adapters, "joblog-1", timeout=90)
    assert job.status == "succeeded", job.error

    # Then exactly one JSON line names it, with the counts its record holds
    (line,) = lines_after_quiet(json_worker, "joblog-1", count=1)
    assert (line["task"], line["status"]) == ("pynomaly.detect", "succeeded")
    assert (line["records"], line["anomalies"]) == (job.n_records, job.n_anomalies)
    assert line["anomalies"] >= 3
    assert line["model_version"] == trained["model_version"]
    assert line["queue_wait_ms"] is not None
    assert line["queue_wait_ms"] >= 0
    assert line["duration_ms"] > 0
    assert line["task_id"] == submission.task_id

    # When the same job is delivered again, it adds one line saying duplicate
    again = submit_detection(
        model="joblog", records=rows_with_outliers(), job_id="joblog-1", app=e2e_app
    )
    e2e_app.AsyncResult(again.task_id).get(timeout=60)
    lines = lines_after_quiet(json_worker, "joblog-1", count=2)
    assert [x["status"] for x in lines] == ["succeeded", "duplicate"]
    assert (lines[1]["records"], lines[1]["anomalies"]) == (job.n_records, job.n_anomalies)


def test_a_fanned_out_job_leaves_one_line_when_it_finishes(
    trained: dict[str, Any],
    json_worker: WorkerProcess,
    e2e_app: Celery,
    e2e_adapters: Adapters,
    tmp_path: Path,
) -> None:
    # Given a 3,500-row source: 4 chunks of at most 1,000 rows (PYNOMALY_CHUNK_ROWS)
    rows = rows_with_outliers(n=3500, outliers=(10, 1500, 3400), seed=4)
    path = write_csv(tmp_path / "fan.csv", rows)
    submit_detection(model="joblog", source=str(path), job_id="joblog-fan", app=e2e_app)
    job = wait_job(e2e_adapters, "joblog-fan", timeout=90)
    assert job.status == "succeeded", job.error

    # Then one line for the whole job, none for its chunks
    (line,) = lines_after_quiet(json_worker, "joblog-fan", count=1)
    assert (line["status"], line["records"], line["anomalies"]) == (
        "succeeded",
        3500,
        job.n_anomalies,
    )
    assert line["queue_wait_ms"] is not None
