"""Waiting for what a worker does: a task's result, a job's record."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from pynomaly_workers.cli.output import fail
from pynomaly_workers.cli.progress import measure_progress, measure_training
from pynomaly_workers.contract import FINAL_STATUSES

if TYPE_CHECKING:
    from celery.result import AsyncResult

    from pynomaly_workers.cli.progress import ProgressDisplay
    from pynomaly_workers.domain.ports import JobProgress, JobRecord
    from pynomaly_workers.services.context import Adapters

WHAT = "the training task"
PROGRESS_EVERY = 0.5
"""Seconds between two progress queries: the job record alone is polled every 0.1 s."""


def wait_result(result: AsyncResult[Any], *, timeout: float, what: str) -> dict[str, Any]:
    try:
        value = result.get(timeout=timeout, propagate=False)
    except Exception as exc:  # celery raises its own TimeoutError
        fail(
            f"{what} did not finish within {timeout:.0f}s ({type(exc).__name__}); "
            "is a worker running? ('pynomaly-workers worker', then 'pynomaly-workers health')"
        )
    if result.failed():
        fail(f"{what} failed: {value}")
    return dict(value)


def wait_training(
    result: AsyncResult[Any],
    *,
    count: Callable[[], int],
    total: int,
    timeout: float,
    display: ProgressDisplay | None,
) -> dict[str, Any]:
    """Wait for a ``train-many`` task's result, showing the models it has registered so
    far (``count``, read at most every :data:`PROGRESS_EVERY` seconds) on ``display``."""
    if display is None:
        return wait_result(result, timeout=timeout, what=WHAT)
    started = time.monotonic()
    last_read: float | None = None
    try:
        while not result.ready() and time.monotonic() < started + timeout:
            now = time.monotonic()
            if last_read is None or now - last_read >= PROGRESS_EVERY:
                last_read = now
                display.show(
                    measure_training(result.id, done=count(), total=total, elapsed=now - started)
                )
            time.sleep(0.1)
        if result.ready():
            display.show(
                measure_training(
                    result.id, done=count(), total=total, elapsed=time.monotonic() - started
                )
            )
    finally:
        display.close()
    left = max(0.0, started + timeout - time.monotonic())
    return wait_result(result, timeout=left, what=WHAT)


def wait_for_job(
    adapters: Adapters,
    job_id: str,
    *,
    timeout: float,
    display: ProgressDisplay | None = None,
) -> JobRecord:
    """Poll the job record until it is succeeded or failed; show a fanned-out job's
    progress on ``display`` meanwhile (and once more when it ends)."""
    started = time.monotonic()
    watch = ProgressWatch(adapters.store, job_id, display=display, started=started)
    try:
        while time.monotonic() < started + timeout:
            job = adapters.store.get_job(job_id)
            if job is not None and job.status in FINAL_STATUSES:
                watch.poll(time.monotonic(), final=True)
                return job
            watch.poll(time.monotonic())
            time.sleep(0.1)
    finally:
        watch.close()
    fail(
        f"job {job_id} did not finish within {timeout:.0f}s; is a worker running? "
        "('pynomaly-workers health' checks)"
    )


class ProgressSource(Protocol):
    """Where a job's progress is read (a :class:`~pynomaly_workers.domain.ports.JobStore`)."""

    def job_progress(self, job_id: str) -> JobProgress | None:
        """The job's chunks done of total, or None."""


class ProgressWatch:
    """Reads a job's progress at most every :data:`PROGRESS_EVERY` seconds and shows it;
    without a display it reads nothing."""

    def __init__(
        self, store: ProgressSource, job_id: str, *, display: ProgressDisplay | None, started: float
    ) -> None:
        self.store, self.job_id, self.display = store, job_id, display
        self.started = started
        self.last_read: float | None = None

    def poll(self, now: float, *, final: bool = False) -> None:
        """Show the progress if a display wants it and it is time (or ``final``)."""
        if self.display is None:
            return
        if not final and self.last_read is not None and now - self.last_read < PROGRESS_EVERY:
            return
        self.last_read = now
        progress = self.store.job_progress(self.job_id)
        if progress is not None:
            elapsed = now - self.started
            self.display.show(measure_progress(self.job_id, progress, elapsed=elapsed))

    def close(self) -> None:
        if self.display is not None:
            self.display.close()
