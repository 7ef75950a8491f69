"""A pool process killed in the middle of a job: the job is redelivered and written once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import text

from pynomaly_workers.client import submit_detection
from pynomaly_workers.demo import WorkerProcess
from pynomaly_workers.services.context import Services
from tests.e2e.test_worker import wait_job
from tests.factories import rows_with_outliers, train

pytestmark = pytest.mark.e2e


def pool_children(worker: WorkerProcess) -> list[int]:
    pid = worker.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]


def wait_until_blocked(services: Services, timeout: float = 20) -> None:
    """Until a worker's statement waits on the row lock the test holds."""
    deadline = time.monotonic() + timeout
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND application_name = 'pynomaly-workers'"
    )
    while time.monotonic() < deadline:
        with services.maintenance.engine.connect() as conn:
            if conn.execute(query).scalar():
                return
        time.sleep(0.05)
    raise AssertionError("no worker blocked on the job row")


def test_a_job_whose_process_dies_mid_write_is_redelivered_and_written_once(
    worker: WorkerProcess, e2e_app: Celery, e2e_services: Services
) -> None:
    # Given a model, and the job's row locked by the test so the worker blocks while
    # settling it: deterministically in the middle of the job
    model = train(e2e_services, model="crash").label
    e2e_services.store.enqueue_job("crash-1", model=model, now=e2e_services.clock.now())
    lock = e2e_services.maintenance.engine.connect()
    transaction = lock.begin()
    lock.execute(text("SELECT 1 FROM detection_jobs WHERE job_id = 'crash-1' FOR UPDATE"))
    submission = submit_detection(
        model=model, records=rows_with_outliers(), job_id="crash-1", app=e2e_app
    )
    wait_until_blocked(e2e_services)

    # When every pool process is killed and the lock released
    for child in pool_children(worker):
        os.kill(child, signal.SIGKILL)
    time.sleep(0.5)
    transaction.rollback()
    lock.close()

    # Then the requeued job runs again on a new process, once
    job = wait_job(e2e_services, "crash-1", timeout=60)
    assert job.status == "succeeded", job.error
    found = e2e_services.store.list_anomalies(job_id="crash-1", limit=1000)
    assert len(found) == job.n_anomalies
    assert {3, 50, 120} <= {a.record_index for a in found}
    assert [j.job_id for j in e2e_services.store.list_jobs(limit=1000)].count("crash-1") == 1
    assert e2e_app.AsyncResult(submission.task_id).get(timeout=30) == job.summary
    assert worker.alive()
