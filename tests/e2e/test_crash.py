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
from pynomaly_workers.services.context import Adapters
from tests.e2e.test_worker import wait_job
from tests.factories import engine_of, rows_with_outliers, train

pytestmark = pytest.mark.e2e


def pool_children(worker: WorkerProcess) -> list[int]:
    pid = worker.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]


def wait_until_gone(pids: list[int], timeout: float = 20) -> None:
    """Until none of ``pids`` is a live process any more (reaped or a zombie)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if _running(pid)]
        if not alive:
            return
        time.sleep(0.02)
    raise AssertionError(f"processes {pids} still run")


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def count_anomaly_rows(adapters: Adapters, job_id: str) -> int:
    """Anomaly rows stored for the job, counted by the database."""
    with engine_of(adapters).connect() as conn:
        query = text("SELECT count(*) FROM anomalies WHERE job_id = :job_id")
        return int(conn.execute(query, {"job_id": job_id}).scalar_one())


def wait_until_blocked(adapters: Adapters, timeout: float = 20) -> None:
    """Until a worker's statement waits on the row lock the test holds."""
    deadline = time.monotonic() + timeout
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND application_name = 'pynomaly-workers'"
    )
    while time.monotonic() < deadline:
        with engine_of(adapters).connect() as conn:
            if conn.execute(query).scalar():
                return
        time.sleep(0.05)
    raise AssertionError("no worker blocked on the job row")


def test_a_job_whose_process_dies_mid_write_is_redelivered_and_written_once(
    worker: WorkerProcess, e2e_app: Celery, e2e_adapters: Adapters
) -> None:
    # Given a model, and the job's row locked by the test so the worker blocks while
    # settling it: deterministically in the middle of the job
    model = train(e2e_adapters, model="crash").label
    e2e_adapters.store.enqueue_job("crash-1", model=model, now=e2e_adapters.clock.now())
    lock = engine_of(e2e_adapters).connect()
    transaction = lock.begin()
    lock.execute(text("SELECT 1 FROM detection_jobs WHERE job_id = 'crash-1' FOR UPDATE"))
    submission = submit_detection(
        model=model, records=rows_with_outliers(), job_id="crash-1", app=e2e_app
    )
    wait_until_blocked(e2e_adapters)

    # When every pool process is killed (and gone) and the lock released
    killed = pool_children(worker)
    for child in killed:
        os.kill(child, signal.SIGKILL)
    wait_until_gone(killed)
    transaction.rollback()
    lock.close()

    # Then the requeued job runs again on a new process, once
    job = wait_job(e2e_adapters, "crash-1", timeout=60)
    assert job.status == "succeeded", job.error
    found = e2e_adapters.store.list_anomalies(job_id="crash-1", limit=1000)
    assert len(found) == job.n_anomalies
    assert {3, 50, 120} <= {a.record_index for a in found}
    # exactly one settle wrote the job: the killed attempt never committed
    assert job.attempts == 1
    assert count_anomaly_rows(e2e_adapters, "crash-1") == job.n_anomalies
    assert e2e_app.AsyncResult(submission.task_id).get(timeout=30) == job.summary
    assert worker.alive()
