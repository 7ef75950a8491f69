"""Waiting for what a worker does: a task's result, a job's record."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pynomaly_workers.cli.output import fail
from pynomaly_workers.contract import FINAL_STATUSES

if TYPE_CHECKING:
    from celery.result import AsyncResult

    from pynomaly_workers.domain.ports import JobRecord
    from pynomaly_workers.services.context import Adapters


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


def wait_for_job(adapters: Adapters, job_id: str, *, timeout: float) -> JobRecord:
    """Poll the job record until it is succeeded or failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = adapters.store.get_job(job_id)
        if job is not None and job.status in FINAL_STATUSES:
            return job
        time.sleep(0.1)
    fail(
        f"job {job_id} did not finish within {timeout:.0f}s; is a worker running? "
        "('pynomaly-workers health' checks)"
    )
