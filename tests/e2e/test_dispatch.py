"""End to end: a detection batch goes to a pool process as soon as one is free, not when
the flush timer fires, and batches still grow while the processes are busy.

The worker here runs with a flush timer of 10 s (``PYNOMALY_BATCH_MAX_WAIT_MS``): a job
that waited for it would take at least that long.
"""

from __future__ import annotations

import re
import time
import urllib.request
from typing import Any

import pytest
from celery import Celery

from pynomaly_workers.client import submit_detection, submit_training
from pynomaly_workers.demo import WorkerProcess
from tests.factories import training_rows

pytestmark = pytest.mark.e2e

TIMER_S = 10.0


@pytest.fixture(scope="module")
def e2e_env(e2e_env: dict[str, str]) -> dict[str, str]:
    return {**e2e_env, "PYNOMALY_BATCH_MAX_WAIT_MS": str(int(TIMER_S * 1000))}


@pytest.fixture(scope="module")
def trained(worker: WorkerProcess, e2e_app: Celery) -> str:
    submission = submit_training(
        model="dispatch", records=training_rows(), params={"n_estimators": 25}, app=e2e_app
    )
    e2e_app.AsyncResult(submission.task_id).get(timeout=120)
    # each pool process loads the model once; these jobs take that cost out of the timing
    warm = [_send(e2e_app, f"warm-{i}") for i in range(8)]
    for task_id in warm:
        e2e_app.AsyncResult(task_id).get(timeout=60)
    return "dispatch"


def _send(app: Celery, job_id: str) -> str:
    row = [0.1 * (len(job_id) % 7), 0.0, -0.2, 0.3]
    return submit_detection(model="dispatch", records=[row], job_id=job_id, app=app).task_id


def _batch_sizes(metrics_port: str) -> tuple[float, float]:
    """(jobs, batches) from the worker's batch-size histogram."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        body = response.read().decode()
    total = re.search(r"^pynomaly_batch_size_sum(?:\{[^}]*\})? (\S+)$", body, re.M)
    count = re.search(r"^pynomaly_batch_size_count(?:\{[^}]*\})? (\S+)$", body, re.M)
    assert total, "the worker serves no batch-size histogram"
    assert count, "the worker serves no batch-size histogram"
    return float(total.group(1)), float(count.group(1))


def test_a_lone_job_is_not_held_for_the_flush_timer(trained: str, e2e_app: Celery) -> None:
    # Given an idle worker whose flush timer is 10 s
    time.sleep(0.5)
    # When one job arrives
    started = time.monotonic()
    result: dict[str, Any] = e2e_app.AsyncResult(_send(e2e_app, "lone")).get(timeout=30)
    waited = time.monotonic() - started
    # Then it went to a free process at once
    assert result["n_records"] == 1
    assert waited < TIMER_S / 2, f"a lone job took {waited:.1f}s: it waited for the timer"


def test_jobs_that_arrive_while_the_processes_are_busy_go_together(
    trained: str, e2e_app: Celery, e2e_env: dict[str, str]
) -> None:
    # Given the batch-size histogram so far
    jobs_before, batches_before = _batch_sizes(e2e_env["PYNOMALY_METRICS_PORT"])
    # When 300 one-record jobs arrive at once
    started = time.monotonic()
    sent = [_send(e2e_app, f"burst-{i}") for i in range(300)]
    for task_id in sent:
        e2e_app.AsyncResult(task_id).get(timeout=60)
    took = time.monotonic() - started
    # Then none waited for the timer (the tail short of a full batch went when a process
    # came free), and the jobs went in batches, not one by one
    assert took < TIMER_S - 1, f"the burst took {took:.1f}s: its tail waited for the timer"
    jobs, batches = _batch_sizes(e2e_env["PYNOMALY_METRICS_PORT"])
    assert jobs - jobs_before == 300
    assert (jobs - jobs_before) / (batches - batches_before) > 2
