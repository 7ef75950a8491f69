"""Scenario 8: overload at twice the sustainable rate for a minute.

The test first measures what one worker (two pool processes) sustains: a backlog of
small jobs is drained and timed. Then jobs arrive at twice that rate for 60 s, so a
backlog of about a minute's work builds up in the broker. It must stay there: the worker
holds at most ``PYNOMALY_PREFETCH_MULTIPLIER`` x concurrency messages, so its memory is
bounded by that, not by the backlog. Asserted: the worker's total PSS (main process and
pool, sampled from /proc every second) grows by less than ``MEMORY_GROWTH_MB`` over its
warmed-up size and stays under the guide's 2 GB per instance; the backlog drains; every
job succeeds once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
from sqlalchemy import text

from benchmarks.memory import pss_kb, tree
from pynomaly_workers.client import submit_detection
from pynomaly_workers.contract import FAILED, SUCCEEDED
from pynomaly_workers.demo import wait_for
from tests.factories import engine_of, rows_with_outliers, train
from tests.faults.conftest import FaultStack, RedisServer, count_jobs, report_outcome
from tests.faults.load import Producer

pytestmark = pytest.mark.e2e

ROWS = rows_with_outliers(n=20, outliers=(3,))
CALIBRATION_JOBS = 1_500
OVERLOAD_SECONDS = 60
MEMORY_GROWTH_MB = 150  # over the warmed-up worker; messages held are bounded by prefetch
MEMORY_LIMIT_MB = 2_048  # the guide's per-instance target


@dataclass
class MemorySampler:
    """Total PSS of a process tree and the broker's backlog, sampled every second."""

    root: int
    broker: RedisServer
    pss_mb: list[float] = field(default_factory=list)
    held: list[int] = field(default_factory=list)  # delivered, not yet acknowledged
    queued: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> None:
        """One sample of the worker's memory and the broker's queues."""
        self.pss_mb.append(sum(pss_kb(pid) for pid in tree(self.root)) / 1024)
        state = self.broker.state()
        self.held.append(state["unacked"])
        self.queued.append(state["queued"])

    @contextmanager
    def running(self) -> Iterator[MemorySampler]:
        """Sample in a background thread until the block ends."""

        def loop() -> None:
            while not self._stop.wait(1.0):
                self.sample()

        thread = threading.Thread(target=loop, name="pss-sampler", daemon=True)
        self.sample()
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


def settled_count(stack: FaultStack, prefix: str) -> int:
    """Jobs whose id starts with ``prefix`` that reached a final status."""
    query = text("SELECT count(*) FROM detection_jobs WHERE job_id LIKE :p AND status IN (:s, :f)")
    with engine_of(stack.adapters).connect() as conn:
        return int(
            conn.execute(query, {"p": f"{prefix}%", "s": SUCCEEDED, "f": FAILED}).scalar_one()
        )


def drain_rate(stack: FaultStack, model: str) -> float:
    """Jobs per second the worker completes from a backlog: publish a burst, time how
    long the 10th to the 90th percentile of it take to complete."""
    job_ids = [f"calibrate-{i}" for i in range(CALIBRATION_JOBS)]
    for job_id in job_ids:
        submit_detection(model=model, records=ROWS, job_id=job_id, app=stack.app)
    low, high = CALIBRATION_JOBS // 10, CALIBRATION_JOBS * 9 // 10
    assert wait_for(lambda: settled_count(stack, "calibrate-") >= low, timeout=120, interval=0.1)
    started = time.monotonic()
    assert wait_for(lambda: settled_count(stack, "calibrate-") >= high, timeout=300, interval=0.1)
    rate = (high - low) / (time.monotonic() - started)
    assert wait_for(lambda: settled_count(stack, "calibrate-") == CALIBRATION_JOBS, timeout=120)
    return rate


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_twice_the_sustainable_rate_for_a_minute_keeps_memory_bounded_and_loses_nothing(
    fault_stack: FaultStack, broker_redis: RedisServer
) -> None:
    # Given a warmed-up worker and the rate it sustains
    model = train(fault_stack.adapters, model="overload").label
    worker = fault_stack.start_worker()
    sustainable = drain_rate(fault_stack, model)
    sampler = MemorySampler(worker.process.pid, broker_redis)
    sampler.sample()
    warm_mb = sampler.pss_mb[-1]

    # When jobs arrive at twice that rate for a minute
    rate = 2 * sustainable
    job_ids = [f"overload-{i}" for i in range(round(rate * OVERLOAD_SECONDS))]
    with sampler.running():
        producer = Producer(
            fault_stack.settings, model=model, rows=ROWS, job_ids=job_ids, rate=rate
        ).start()
        producer.join(timeout=OVERLOAD_SECONDS * 3)
        stopped_at = time.monotonic()
        backlog = len(job_ids) - settled_count(fault_stack, "overload-")
        # Then the backlog drains, within three times what the measured rate predicts
        drain_bound = 3 * backlog / sustainable + 30
        drained = wait_for(
            lambda: settled_count(fault_stack, "overload-") == len(job_ids),
            timeout=drain_bound,
            interval=1.0,
        )
        drain_seconds = time.monotonic() - stopped_at
    counts = count_jobs(fault_stack.adapters, job_ids)
    peak_mb = max(sampler.pss_mb)
    report_outcome(
        "overload_2x",
        job_ids,
        counts,
        recovery_seconds=drain_seconds,
        extra={
            "sustainable_jobs_per_s": round(sustainable, 1),
            "offered_jobs_per_s": round(rate, 1),
            "achieved_jobs_per_s": round(producer.achieved_rate, 1),
            "backlog_at_end_of_overload": backlog,
            "max_queued": max(sampler.queued),
            "max_held_by_worker": max(sampler.held),
            "worker_pss_warm_mb": round(warm_mb, 1),
            "worker_pss_peak_mb": round(peak_mb, 1),
            "memory_bound_mb": round(warm_mb + MEMORY_GROWTH_MB, 1),
        },
    )
    assert producer.achieved_rate >= 1.8 * sustainable, (
        f"the test could not offer the overload: {producer.achieved_rate:.0f} jobs/s sent, "
        f"{rate:.0f} wanted"
    )
    assert backlog > sustainable * OVERLOAD_SECONDS / 4, f"no real backlog built: {backlog}"
    assert drained, (
        f"the backlog did not drain in {drain_bound:.0f} s: "
        f"{len(job_ids) - settled_count(fault_stack, 'overload-')} jobs left"
    )
    # ... memory stayed bounded: the backlog waited in the broker, not in the worker
    assert peak_mb <= warm_mb + MEMORY_GROWTH_MB, (
        f"worker PSS grew from {warm_mb:.0f} MB to {peak_mb:.0f} MB under overload"
    )
    assert peak_mb <= MEMORY_LIMIT_MB
    held_bound = fault_stack.settings.prefetch_multiplier * 2
    assert max(sampler.held) <= held_bound, f"held {max(sampler.held)} > prefetch {held_bound}"
    # ... and every job succeeded once
    missing = sorted(set(job_ids) - counts.succeeded())
    assert not missing, f"{len(missing)} jobs did not succeed, e.g. {missing[:10]}"
    assert counts.duplicated() == set()
    assert set(counts.rows.values()) == {1}
    assert worker.alive()
