"""The one log line a finished job leaves (``PYNOMALY_JOB_LOG``): what it holds, as JSON
fields and as readable text. Pure: the caller measures the durations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from pynomaly_workers.contract import FAILED, SUCCEEDED
from pynomaly_workers.domain.jobs import JobSummary
from pynomaly_workers.domain.summaries import mask_secrets

DUPLICATE: Final = "duplicate"
"""A redelivered job that had already finished: the line repeats its stored counts."""

JOB_LOGGER: Final = "pynomaly_workers.jobs"
"""The logger the lines are written to (filter or route on it)."""


@dataclass(frozen=True, slots=True)
class JobLine:
    """One finished job: a detection job, or one model trained."""

    job_id: str
    task: str
    status: str
    model: str | None = None
    model_version: int | None = None
    records: int | None = None
    anomalies: int | None = None
    duration_ms: float | None = None
    queue_wait_ms: float | None = None
    error_type: str | None = None
    task_id: str | None = None
    """The job's own Celery task id (a micro-batch runs many jobs in one task of its own)."""

    def fields(self) -> dict[str, Any]:
        """The JSON fields of the line (keys are part of the operators' contract);
        ``task_id`` only when known (it then replaces the running task's)."""
        fields: dict[str, Any] = {
            "event": "job_finished",
            "job_id": self.job_id,
            "task": self.task,
            "status": self.status,
            "model": self.model,
            "model_version": self.model_version,
            "records": self.records,
            "anomalies": self.anomalies,
            "duration_ms": _ms(self.duration_ms),
            "queue_wait_ms": _ms(self.queue_wait_ms),
            "error_type": self.error_type,
        }
        if self.task_id is not None:
            fields["task_id"] = self.task_id
        return fields

    def headline(self) -> str:
        """``job ID STATUS``: the JSON line's message (its fields say the rest)."""
        return f"job {self.job_id} {self.status}"

    def __str__(self) -> str:
        """The text form: ``job ID STATUS: task=... model=NAME@VERSION records=...``."""
        model = self.model if self.model_version is None else f"{self.model}@{self.model_version}"
        text = f"job {self.job_id} {self.status}: task={self.task} model={model}"
        if self.records is not None:
            text += f" records={self.records}"
        if self.anomalies is not None:
            text += f" anomalies={self.anomalies}"
        text += f" duration_ms={_ms(self.duration_ms)} queue_wait_ms={_ms(self.queue_wait_ms)}"
        return text if self.error_type is None else f"{text} error_type={self.error_type}"


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def printable(value: object) -> str | None:
    """A name a producer sent, for a failure line (it may be why the job failed):
    bounded, on one line, URL passwords masked."""
    if value is None:
        return None
    return mask_secrets(str(value)[:140]).replace("\n", " ").replace("\r", " ")


def seconds_to_ms(seconds: float | None) -> float | None:
    """A duration in seconds as milliseconds (None stays None)."""
    return None if seconds is None else seconds * 1000.0


def summary_line(
    summary: JobSummary,
    *,
    task: str,
    duration_ms: float | None,
    queue_wait_ms: float | None,
    duplicate: bool = False,
    task_id: str | None = None,
) -> JobLine:
    """The line of a detection job that succeeded (or, ``duplicate``, had succeeded)."""
    return JobLine(
        job_id=summary.job_id,
        task=task,
        status=DUPLICATE if duplicate else SUCCEEDED,
        model=summary.model,
        model_version=summary.model_version,
        records=summary.n_records,
        anomalies=summary.n_anomalies,
        duration_ms=duration_ms,
        queue_wait_ms=queue_wait_ms,
        task_id=task_id,
    )


def failure_line(
    job_id: str,
    *,
    task: str,
    model: str | None,
    error_type: str,
    duration_ms: float | None,
    queue_wait_ms: float | None,
    duplicate: bool = False,
    task_id: str | None = None,
) -> JobLine:
    """The line of a job that failed (or, ``duplicate``, had failed)."""
    return JobLine(
        job_id=job_id,
        task=task,
        status=DUPLICATE if duplicate else FAILED,
        model=model,
        duration_ms=duration_ms,
        queue_wait_ms=queue_wait_ms,
        error_type=error_type,
        task_id=task_id,
    )
