"""Each finished detection job's one log line (``PYNOMALY_JOB_LOG``), written where its
outcome is known: at the end of the batch that ran it, or by the chunk that finished a
fanned-out job (a fanned-out job's planning leaves no line: it has not finished)."""

from __future__ import annotations

from collections.abc import Sequence

from pynomaly_workers.contract import DETECT_TASK
from pynomaly_workers.domain.errors import InvalidInput
from pynomaly_workers.domain.joblog import (
    JobLine,
    failure_line,
    printable,
    seconds_to_ms,
    summary_line,
)
from pynomaly_workers.domain.jobs import check_job_id
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.services.detection.outcomes import (
    DetectMessage,
    Failed,
    FannedOut,
    Outcome,
    Succeeded,
)


def log_batch(
    adapters: Adapters,
    messages: Sequence[DetectMessage],
    outcomes: Sequence[Outcome],
    *,
    started: float,
) -> None:
    """One line per job of the batch that finished (or had finished: ``duplicate``);
    the duration is the batch's, start -> every outcome recorded."""
    job_log = adapters.job_log
    if not job_log.enabled:
        return
    duration_ms = (adapters.clock.monotonic() - started) * 1000.0
    for message, outcome in zip(messages, outcomes, strict=True):
        if not isinstance(outcome, FannedOut):
            job_log.finished(outcome_line(message, outcome, duration_ms=duration_ms))


def outcome_line(
    message: DetectMessage, outcome: Succeeded | Failed, *, duration_ms: float | None
) -> JobLine:
    """The line of one delivery's outcome."""
    wait_ms = seconds_to_ms(message.queue_wait_s)
    if isinstance(outcome, Succeeded):
        return summary_line(
            outcome.summary,
            task=DETECT_TASK,
            duration_ms=duration_ms,
            queue_wait_ms=wait_ms,
            duplicate=outcome.replayed,
            task_id=message.task_id,
        )
    return failure_line(
        job_id_of(message),
        task=DETECT_TASK,
        model=printable(message.kwargs.get("model")),
        error_type=outcome.error.code,
        duration_ms=duration_ms,
        queue_wait_ms=wait_ms,
        duplicate=outcome.replayed,
        task_id=message.task_id,
    )


def log_failure(adapters: Adapters, message: DetectMessage, *, error_type: str) -> None:
    """The line of a job failed by something other than its input (an internal error,
    or a transient one past its last retry)."""
    if adapters.job_log.enabled:
        line = failure_line(
            job_id_of(message),
            task=DETECT_TASK,
            model=printable(message.kwargs.get("model")),
            error_type=error_type,
            duration_ms=None,
            queue_wait_ms=None,
            task_id=message.task_id,
        )
        adapters.job_log.finished(line)


def job_id_of(message: DetectMessage) -> str:
    """The message's job id, or its task id when the job id is not a valid one (the
    line must not repeat whatever a producer sent)."""
    try:
        return check_job_id(message.kwargs.get("job_id") or message.task_id)
    except InvalidInput:
        return message.task_id
