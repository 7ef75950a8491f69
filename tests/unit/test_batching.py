"""The consumer's micro-batching decision: while every pool process is busy, a buffer
short of a full batch waits for one to free up instead of queueing behind them."""

from __future__ import annotations

import time
from collections import deque
from types import SimpleNamespace
from typing import Any

from pynomaly_workers.tasks.detection import DetectionBatches


def batches_on(*, processes: int, busy: int) -> tuple[DetectionBatches, list[list[Any]]]:
    """A DetectionBatches whose prefork pool has ``busy`` of ``processes`` processes
    running something; what it hands to the pool is recorded, not run."""
    batches = DetectionBatches()
    inner = SimpleNamespace(
        _all_inqueues=set(range(processes)), _busy_workers=set(range(busy)), outbound_buffer=deque()
    )
    batches._pool = SimpleNamespace(_pool=inner)
    batches.eager = True
    batches.flush_every = 64
    handed: list[list[Any]] = []
    batches.flush = lambda requests: handed.append(list(requests))  # type: ignore[method-assign]
    batches._buffer._take = lambda request: False  # every delivery is a small job
    return batches, handed


def buffer_jobs(batches: DetectionBatches, count: int) -> None:
    for i in range(count):
        batches._buffer.put(SimpleNamespace(id=f"job-{i}", eta=None))


def test_a_job_goes_to_the_pool_when_a_process_is_idle() -> None:
    batches, handed = batches_on(processes=3, busy=2)
    buffer_jobs(batches, 1)

    batches._do_flush()

    assert [len(batch) for batch in handed] == [1]


def test_while_every_process_is_busy_the_timer_keeps_jobs_for_one_batch() -> None:
    # Given every process busy, and jobs arriving between two timer ticks
    batches, handed = batches_on(processes=3, busy=3)
    buffer_jobs(batches, 1)
    batches._do_flush()
    buffer_jobs(batches, 4)
    batches._do_flush()
    assert handed == []  # held: each tick would have queued a batch of one or two

    # When a process frees up, the next flush hands everything over as one batch
    batches._pool._pool._busy_workers.discard(0)
    batches._do_flush()

    assert [len(batch) for batch in handed] == [5]


def test_a_full_batch_goes_at_once_even_when_every_process_is_busy() -> None:
    batches, handed = batches_on(processes=3, busy=3)
    buffer_jobs(batches, 64)

    batches._do_flush()

    assert [len(batch) for batch in handed] == [64]


def test_without_eager_dispatch_the_timer_flushes_as_celery_batches_does() -> None:
    batches, handed = batches_on(processes=3, busy=3)
    batches.eager = False
    buffer_jobs(batches, 2)

    batches._do_flush()

    assert [len(batch) for batch in handed] == [2]


def test_jobs_held_past_the_limit_go_to_the_pool_anyway() -> None:
    # Given a pool that reports every process busy for longer than the hold limit
    # (a wrong count must not strand a job)
    batches, handed = batches_on(processes=3, busy=3)
    batches.hold_limit_s = 0.05
    buffer_jobs(batches, 1)
    batches._do_flush()
    assert handed == []

    time.sleep(0.06)
    batches._do_flush()

    assert [len(batch) for batch in handed] == [1]
