"""End to end: real worker processes consume tasks published by name."""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import pytest
from celery import Celery

from pynomaly_workers.client import submit_detection, submit_training
from pynomaly_workers.demo import WorkerProcess
from pynomaly_workers.domain.ports import JobRecord
from pynomaly_workers.services.context import Adapters
from tests.factories import rows_with_outliers, training_rows

pytestmark = pytest.mark.e2e


def wait_job(adapters: Adapters, job_id: str, timeout: float = 60) -> JobRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = adapters.store.get_job(job_id)
        if job is not None and job.status in ("succeeded", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s")


@pytest.fixture(scope="module")
def trained(worker: WorkerProcess, e2e_app: Celery) -> dict[str, Any]:
    submission = submit_training(
        model="e2e", records=training_rows(), params={"n_estimators": 25}, app=e2e_app
    )
    result: dict[str, Any] = e2e_app.AsyncResult(submission.task_id).get(timeout=120)
    return result


def test_train_then_detect_by_task_name(
    trained: dict[str, Any], e2e_app: Celery, e2e_adapters: Adapters
) -> None:
    # Given a model trained through the training queue
    assert trained["model"] == "e2e"
    assert trained["onnx"]

    # When an upstream service publishes pynomaly.detect by name
    submission = submit_detection(
        model="e2e", records=rows_with_outliers(), job_id="e2e-1", app=e2e_app
    )

    # Then the worker writes the job and its anomalies, and returns the summary
    job = wait_job(e2e_adapters, submission.job_id)
    assert job.status == "succeeded", job.error
    result = e2e_app.AsyncResult(submission.task_id).get(timeout=30)
    assert result == job.summary
    found = e2e_adapters.store.list_anomalies(job_id="e2e-1", limit=1000)
    assert len(found) == job.n_anomalies
    assert {3, 50, 120} <= {a.record_index for a in found}


def test_a_job_sent_three_times_writes_once(
    trained: dict[str, Any], e2e_app: Celery, e2e_adapters: Adapters
) -> None:
    rows = rows_with_outliers()
    sent = [
        submit_detection(model="e2e", records=rows, job_id="e2e-dup", app=e2e_app) for _ in range(3)
    ]
    # every one of the three deliveries ran and answered (wait for all, not just one)
    results = [e2e_app.AsyncResult(s.task_id).get(timeout=60) for s in sent]
    job = wait_job(e2e_adapters, "e2e-dup")

    assert job.status == "succeeded"
    assert results == [job.summary] * 3
    # one settle wrote the job and its anomalies; the other two answered from the record
    assert job.attempts == 1
    assert len(e2e_adapters.store.list_anomalies(job_id="e2e-dup", limit=1000)) == job.n_anomalies


def test_bad_input_fails_once_without_retry(
    trained: dict[str, Any], e2e_app: Celery, e2e_adapters: Adapters
) -> None:
    submission = submit_detection(model="e2e", records=[[1.0, 2.0]], job_id="e2e-bad", app=e2e_app)

    job = wait_job(e2e_adapters, submission.job_id)

    assert job.status == "failed"
    assert job.error == "records have 2 features but model e2e@1 expects 4"
    assert job.attempts == 1
    result = e2e_app.AsyncResult(submission.task_id)
    result.get(timeout=30, propagate=False)
    assert result.state == "FAILURE"


def test_a_raw_message_from_another_language_is_consumed(
    trained: dict[str, Any], e2e_app: Celery, e2e_adapters: Adapters
) -> None:
    # A non-Python producer sends only the task name and JSON kwargs, without job_id:
    # the worker uses the task id as the job id.
    result = e2e_app.send_task(
        "pynomaly.detect",
        kwargs={"model": "e2e@1", "records": [[0.1, 0.2, 0.3, 0.4]]},
        queue="detection",
    )

    job = wait_job(e2e_adapters, str(result.id))

    assert job.status == "succeeded"
    assert job.n_records == 1


def test_unknown_model_fails_with_advice(
    worker: WorkerProcess, e2e_app: Celery, e2e_adapters: Adapters
) -> None:
    submission = submit_detection(
        model="missing", records=[[1.0]], job_id="e2e-unknown", app=e2e_app
    )

    job = wait_job(e2e_adapters, submission.job_id)

    assert job.status == "failed"
    assert job.error_type == "unknown_model"
    assert "train one with pynomaly.train" in (job.error or "")


def test_the_worker_serves_prometheus_metrics_summed_over_its_processes(
    trained: dict[str, Any], e2e_app: Celery, e2e_adapters: Adapters, e2e_env: dict[str, str]
) -> None:
    # Given a job that finished on one of the pool processes
    submit_detection(model="e2e", records=rows_with_outliers(), job_id="e2e-metrics", app=e2e_app)
    wait_job(e2e_adapters, "e2e-metrics")
    url = f"http://127.0.0.1:{e2e_env['PYNOMALY_METRICS_PORT']}/metrics"

    # When Prometheus scrapes the worker's main process
    body = ""
    for _ in range(50):
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
        if 'pynomaly_jobs_total{outcome="succeeded"}' in body:
            break
        time.sleep(0.1)

    # Then the children's counters are there
    assert 'pynomaly_jobs_total{outcome="succeeded"}' in body
    assert "pynomaly_records_scored_total" in body
    assert "pynomaly_batch_jobs_bucket" in body
