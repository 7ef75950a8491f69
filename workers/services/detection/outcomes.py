"""What a detection delivery is, and what can come of it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pynomaly_workers.contract import SUCCEEDED
from pynomaly_workers.domain.errors import InvalidInput
from pynomaly_workers.domain.jobs import JobSummary
from pynomaly_workers.domain.ports import JobRecord


class JobAlreadyFailed(InvalidInput):
    """A redelivered job that had already failed on bad input: fail it the same way."""

    code = "job_failed"


@dataclass(frozen=True, slots=True)
class DetectMessage:
    """One ``pynomaly.detect`` delivery: Celery's task id and the keyword arguments."""

    task_id: str
    kwargs: Mapping[str, Any]
    args: tuple[Any, ...] = ()
    queue_wait_s: float | None = None
    """How long the message waited, publish -> start (the ``sent_at`` header), if known."""


@dataclass(frozen=True, slots=True)
class Succeeded:
    """The job's summary (fresh, or stored: ``replayed``)."""

    summary: JobSummary
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class Failed:
    """The job failed on bad input; never retried (``replayed``: it had failed before)."""

    error: InvalidInput
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class FannedOut:
    """The job was split; publish ``chunks`` as ``pynomaly.detect.chunk`` tasks. The last
    chunk stores the job's summary as the result of ``task_id``."""

    job_id: str
    task_id: str
    chunks: list[dict[str, Any]]


Outcome = Succeeded | Failed | FannedOut


def stored_outcome(job: JobRecord, *, replayed: bool = False) -> Succeeded | Failed:
    """The outcome of a job that already finished, from its record (``replayed``: this
    delivery found it finished, rather than finishing it)."""
    if job.status == SUCCEEDED and job.summary is not None:
        return Succeeded(JobSummary.from_dict(job.summary), replayed=replayed)
    return Failed(
        JobAlreadyFailed(
            f"job {job.job_id} already failed ({job.error_type}): {job.error}; "
            "submit a new job_id to try again"
        ),
        replayed=replayed,
    )
