"""Scenarios 1 and 2: a worker dies or is stopped in the middle of a job, on Redis and
on RabbitMQ.

A row lock the test holds on one job's row blocks its batch inside the database write,
so "mid-job" is deterministic, not a race against a sleep.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import text

from pynomaly_workers.client import submit_detection
from pynomaly_workers.demo import wait_for
from tests.e2e.test_crash import pool_children, wait_until_blocked
from tests.factories import engine_of, rows_with_outliers, train
from tests.faults.conftest import BROKERS, FaultBroker, FaultStack, report_outcome, wait_settled

pytestmark = pytest.mark.e2e

ROWS = rows_with_outliers(n=20, outliers=(3,))
STOP_BOUND_S = 15.0
"""A warm shutdown finishes the running job (released at once here) and exits within this."""


@contextmanager
def job_row_locked(stack: FaultStack, job_id: str, model: str) -> Iterator[None]:
    """Hold a lock on ``job_id``'s row until the block exits (the test's 'mid-job')."""
    stack.adapters.store.enqueue_job(job_id, model=model, now=stack.adapters.clock.now())
    connection = engine_of(stack.adapters).connect()
    transaction = connection.begin()
    connection.execute(
        text("SELECT 1 FROM detection_jobs WHERE job_id = :j FOR UPDATE"), {"j": job_id}
    )
    try:
        yield
    finally:
        transaction.rollback()
        connection.close()


def send_jobs(stack: FaultStack, model: str, job_ids: list[str]) -> None:
    for job_id in job_ids:
        submit_detection(model=model, records=ROWS, job_id=job_id, app=stack.app)


def settle_all(
    stack: FaultStack, broker: FaultBroker, name: str, job_ids: list[str], since: float
) -> float:
    """Every job succeeded once; record the figures under ``name``, suffixed by broker.
    Returns the seconds from ``since`` until every job had settled."""
    counts = wait_settled(stack.adapters, job_ids, timeout=300)
    recovery = time.monotonic() - since
    report_outcome(f"{name}_{broker.kind}", job_ids, counts, recovery_seconds=recovery)
    missing = sorted(set(job_ids) - counts.succeeded())
    assert not missing, (
        f"{len(missing)} jobs did not succeed: {[(j, counts.status.get(j)) for j in missing]}; "
        f"{[counts.error.get(j) for j in missing]}; broker: {broker.state()}\n{stack.log_text()}"
    )
    assert counts.duplicated() == set()
    return recovery


@pytest.mark.timeout(180)
@pytest.mark.parametrize("broker", BROKERS, indirect=True)
def test_killing_every_pool_process_mid_job_loses_and_duplicates_nothing(
    fault_stack: FaultStack, broker: FaultBroker
) -> None:
    # Given a worker blocked in the middle of a batch, with more jobs behind it
    model = train(fault_stack.adapters, model="kill-pool").label
    worker = fault_stack.start_worker()
    job_ids = ["kill-pool-locked", *(f"kill-pool-{i}" for i in range(60))]
    with job_row_locked(fault_stack, job_ids[0], model):
        send_jobs(fault_stack, model, job_ids)
        wait_until_blocked(fault_stack.adapters)

        # When every pool process is killed with SIGKILL
        for child in pool_children(worker):
            os.kill(child, signal.SIGKILL)
        killed_at = time.monotonic()

    # Then the lost batch is requeued and every job succeeds once
    settle_all(fault_stack, broker, "kill_pool_process", job_ids, killed_at)
    assert wait_for(broker.drained, timeout=30)
    assert worker.alive()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("broker", BROKERS, indirect=True)
def test_a_warm_shutdown_mid_job_finishes_or_requeues_and_keeps_prefetched_jobs(
    fault_stack: FaultStack, broker: FaultBroker
) -> None:
    # Given a worker blocked in the middle of a batch, holding prefetched jobs
    model = train(fault_stack.adapters, model="sigterm").label
    worker = fault_stack.start_worker(name="stopping")
    job_ids = ["sigterm-locked", *(f"sigterm-{i}" for i in range(150))]
    with job_row_locked(fault_stack, job_ids[0], model):
        send_jobs(fault_stack, model, job_ids)
        wait_until_blocked(fault_stack.adapters)

        # When its main process gets SIGTERM (what Kubernetes sends), mid-job
        os.kill(worker.process.pid, signal.SIGTERM)
        terminated_at = time.monotonic()
        assert wait_for(lambda: "Warm shutdown" in worker.log_path.read_text(), timeout=30)
    assert wait_for(lambda: not worker.alive(), timeout=60), fault_stack.log_text()
    stopped_at = time.monotonic()
    # ... and stops well within Kubernetes' default grace period (30 s): a pool process
    # that ran a job the shutdown had forgotten once waited 30 s to be read (workers/pool.py)
    assert stopped_at - terminated_at < STOP_BOUND_S, (
        f"the worker took {stopped_at - terminated_at:.1f} s to stop\n{fault_stack.log_text()}"
    )

    # Then a new worker completes every job, each once
    fault_stack.start_worker(name="replacement")
    settle_all(fault_stack, broker, "warm_shutdown", job_ids, stopped_at)
    assert wait_for(broker.drained, timeout=30)


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "broker",
    [
        # Redis hands the dead worker's messages out again after the visibility timeout.
        pytest.param("redis", marks=pytest.mark.slow),
        # RabbitMQ requeues them as soon as the dead worker's connection closes.
        pytest.param("rabbitmq", marks=pytest.mark.slow),
    ],
    indirect=True,
)
def test_killing_the_main_process_mid_job_redelivers_every_job(
    fault_stack: FaultStack, broker: FaultBroker
) -> None:
    # Given a short time limit, so Redis redelivers after 2 x 25 + 60 = 110 s
    fault_stack.env.update(PYNOMALY_TASK_SOFT_TIME_LIMIT="20", PYNOMALY_TASK_TIME_LIMIT="25")
    model = train(fault_stack.adapters, model="kill-main").label
    worker = fault_stack.start_worker(name="killed")
    job_ids = ["kill-main-locked", *(f"kill-main-{i}" for i in range(60))]
    with job_row_locked(fault_stack, job_ids[0], model):
        send_jobs(fault_stack, model, job_ids)
        wait_until_blocked(fault_stack.adapters)

        # When the worker's main process is killed with SIGKILL (its pool goes with it),
        # once it holds every message: a BRPOP answered but not yet read by the dying
        # process is lost, kombu's Redis transport cannot help that (README).
        assert wait_for(lambda: broker.state()["queued"] == 0, timeout=30)
        os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait()
        killed_at = time.monotonic()

    # Then another worker runs every job once: on Redis after the visibility timeout, on
    # RabbitMQ well before it (the killed connection's deliveries are requeued at once)
    fault_stack.start_worker(name="survivor")
    recovery = settle_all(fault_stack, broker, "kill_main_process", job_ids, killed_at)
    assert wait_for(broker.drained, timeout=30)
    if broker.kind == "rabbitmq":
        assert recovery < (2 * 25 + 60) / 2, recovery  # half Redis's visibility timeout
