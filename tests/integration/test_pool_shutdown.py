"""The worker's pool stops at once after a warm shutdown forgot a job its process had
already read (workers/pool.py): real pool processes, driven by a real event loop."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from celery.concurrency import asynpool
from kombu.asynchronous import Hub

from pynomaly_workers import pool as pynomaly_pool


def nap() -> str:
    time.sleep(0.2)
    return "done"


def run_until(loop: object, done: Callable[[], bool], *, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the pool's event loop did not get there"
        next(loop)  # type: ignore[call-overload]


def stop_with_a_forgotten_job(pool_class: type[asynpool.AsynPool]) -> float:
    """Seconds the pool took to join, after Celery's warm-shutdown steps (``flush`` and
    ``close``) ran while its one process had read a job whose acceptance the pool had
    not read yet: ``flush`` forgets such a job, and the process runs it anyway."""
    hub = Hub()
    pool: Any = pool_class(processes=1, threads=False)
    try:
        pool.register_with_event_loop(hub)
        loop = hub.create_loop()
        run_until(loop, lambda: not pool._waiting_to_start)
        job: Any = pool.apply_async(nap)
        # One turn of the loop at a time until the job is written: its acceptance is
        # read on a later turn, which never comes.
        run_until(loop, lambda: job._write_to is not None and not pool._active_writes)
        assert not job.accepted()
        pool.flush()
        pool.close()
        started = time.monotonic()
        pool.join()
        return time.monotonic() - started
    finally:
        pool.terminate()
        hub.close()


def test_the_pool_joins_as_soon_as_its_process_has_run_the_forgotten_job() -> None:
    assert stop_with_a_forgotten_job(pynomaly_pool.AsynPool) < 5


@pytest.mark.slow
def test_celerys_own_pool_waits_30_s_on_the_forgotten_job() -> None:
    # Why workers/pool.py exists: the process waits for its report to be read.
    assert stop_with_a_forgotten_job(asynpool.AsynPool) >= 25
