"""A ``pynomaly.train`` message delivered twice (a worker lost, a visibility timeout
passed) registers one model version: training is idempotent by its Celery task id."""

from __future__ import annotations

import re
import time
import urllib.request
import uuid

import pytest
from celery import Celery

from pynomaly_workers.client import publish
from pynomaly_workers.contract import TRAIN_TASK, TRAINING_QUEUE
from pynomaly_workers.demo import WorkerProcess
from pynomaly_workers.services.context import Adapters
from tests.factories import training_rows

pytestmark = pytest.mark.e2e

KWARGS = {
    "model": "redelivered",
    "algorithm": "iforest",
    "records": training_rows(),
    "contamination": 0.05,
    "params": {"n_estimators": 25},
}


def training_runs(port: int) -> float:
    """The worker's count of succeeded training runs, summed over its processes."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        body = response.read().decode()
    found = re.search(
        r'^pynomaly_training_runs_total\{outcome="succeeded"\} (\S+)$', body, re.MULTILINE
    )
    return float(found.group(1)) if found else 0.0


def wait_training_runs(port: int, count: float, *, worker: WorkerProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if training_runs(port) >= count:
            return
        time.sleep(0.1)
    log = worker.log_path.read_text()[-4000:]
    raise AssertionError(f"the worker did not finish {count:.0f} training runs; log:\n{log}")


def test_the_same_training_message_twice_registers_one_version(
    worker: WorkerProcess, e2e_app: Celery, e2e_adapters: Adapters
) -> None:
    # Given a worker, and what it has trained so far
    port = e2e_adapters.settings.metrics_port
    before = training_runs(port)
    task_id = str(uuid.uuid4())

    # When one training request reaches the queue twice at once under its task id
    # (both deliveries may run side by side on the two pool processes)
    for _ in range(2):
        publish(e2e_app, TRAIN_TASK, kwargs=KWARGS, queue=TRAINING_QUEUE, task_id=task_id)
    wait_training_runs(port, before + 2, worker=worker, timeout=180)

    # Then both deliveries ran, and one version exists, the one both returned
    assert [v.version for v in e2e_adapters.store.list_models(name="redelivered")] == [1]
    assert e2e_app.AsyncResult(task_id).get(timeout=30)["model_version"] == 1

    # When it is delivered once more after it finished
    publish(e2e_app, TRAIN_TASK, kwargs=KWARGS, queue=TRAINING_QUEUE, task_id=task_id)
    wait_training_runs(port, before + 3, worker=worker, timeout=180)

    # Then that delivery found the version without training again
    assert [v.version for v in e2e_adapters.store.list_models(name="redelivered")] == [1]
    assert f"training task {task_id} already registered redelivered@1" in (
        worker.log_path.read_text()
    )

    # and a new request (a new task id) still trains a new version
    fresh = publish(e2e_app, TRAIN_TASK, kwargs=KWARGS, queue=TRAINING_QUEUE)
    assert fresh.get(timeout=180)["model_version"] == 2
    assert [v.version for v in e2e_adapters.store.list_models(name="redelivered")] == [2, 1]
