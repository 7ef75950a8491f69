"""The detection entry point: sort a batch of deliveries into the three paths.

* **small** inline jobs (up to ``chunk_rows`` records) are micro-batched (``small``);
* **in-process** jobs (large inline payloads, single-chunk sources) are scored in the
  worker that received them (``in_process``);
* **fan-out** jobs (sources and datasets of several chunks) are planned here and scored
  by ``pynomaly.detect.chunk`` tasks on every worker (``fan_out``).

At-least-once delivery, exactly-once effect: jobs are keyed by ``job_id``, anomalies are
unique on (job_id, record_index), chunks count once, and a job that already finished
answers with its stored outcome instead of running again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from pynomaly_workers.contract import DETECT_TASK, RUNNING
from pynomaly_workers.domain.errors import InvalidInput, InvalidMessage
from pynomaly_workers.domain.jobs import (
    DetectionRequest,
    InlineRecords,
    JobSummary,
    check_job_id,
    parse_detection_request,
)
from pynomaly_workers.domain.records import RecordLimits
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.services.detection.fan_out import plan_fan_out, run_chunk, start_fan_out
from pynomaly_workers.services.detection.in_process import run_in_process
from pynomaly_workers.services.detection.lines import log_batch
from pynomaly_workers.services.detection.outcomes import (
    DetectMessage,
    Failed,
    FannedOut,
    Outcome,
    Succeeded,
    stored_outcome,
)
from pynomaly_workers.services.detection.small import Rejected, SmallJob, run_small


def record_limits(adapters: Adapters) -> RecordLimits:
    """The inline-payload limits from the settings."""
    return RecordLimits(
        max_records=adapters.settings.max_records_per_job,
        max_features=adapters.settings.max_features,
    )


def detect_batch(adapters: Adapters, messages: Sequence[DetectMessage]) -> list[Outcome]:
    """Run a batch of ``pynomaly.detect`` deliveries; one outcome per message, in order.
    Each job that finished leaves its line in ``adapters.job_log``."""
    started = adapters.clock.monotonic()
    outcomes: dict[int, Outcome] = {}
    small: list[SmallJob] = []
    rejected: list[Rejected] = []
    first_of: dict[str, int] = {}  # the same job twice in one batch runs once
    duplicates: dict[int, int] = {}
    for index, message in enumerate(messages):
        try:
            job_id = check_job_id(message.kwargs.get("job_id") or message.task_id)
        except InvalidInput as exc:
            outcomes[index] = Failed(exc)  # no usable job id: nothing to record
            continue
        if job_id in first_of:
            duplicates[index] = first_of[job_id]
            continue
        first_of[job_id] = index
        try:
            request = _parse(adapters, message, job_id)
        except InvalidInput as exc:
            rejected.append(Rejected(index, job_id, str(message.kwargs.get("model", "")), exc))
            continue
        if _is_small(adapters, request):
            small.append(SmallJob(index, message, request))
        else:
            outcomes[index] = run_large(adapters, message, request)
    outcomes.update(run_small(adapters, small, rejected))
    outcomes.update({index: _again(outcomes[first]) for index, first in duplicates.items()})
    ordered = [outcomes[i] for i in range(len(messages))]
    log_batch(adapters, messages, ordered, started=started)
    return ordered


def _again(outcome: Outcome) -> Outcome:
    """A job's second delivery in one batch: the first one's outcome, as a replay."""
    return outcome if isinstance(outcome, FannedOut) else replace(outcome, replayed=True)


def _parse(adapters: Adapters, message: DetectMessage, job_id: str) -> DetectionRequest:
    if message.args:
        raise InvalidMessage(f"{DETECT_TASK} takes keyword arguments only, no args")
    return parse_detection_request(
        message.kwargs, default_job_id=job_id, limits=record_limits(adapters)
    )


def _is_small(adapters: Adapters, request: DetectionRequest) -> bool:
    data = request.input
    return isinstance(data, InlineRecords) and len(data.matrix) <= adapters.settings.chunk_rows


def run_large(adapters: Adapters, message: DetectMessage, request: DetectionRequest) -> Outcome:
    """Claim the job, then score it here or plan its fan-out."""
    job = adapters.store.claim_job(
        request.job_id, model=str(request.model), now=adapters.clock.now()
    )
    if job.status != RUNNING:
        return stored_outcome(job, replayed=True)
    try:
        version = adapters.store.get_model(request.model)
        planned = plan_fan_out(adapters, request, version)
        if planned is not None:
            return start_fan_out(
                adapters,
                task_id=message.task_id,
                queue_wait_s=message.queue_wait_s,
                request=request,
                version=version,
                planned=planned,
            )
        return Succeeded(run_in_process(adapters, request, version))
    except InvalidInput as exc:
        adapters.store.fail_job(
            request.job_id, error=str(exc), error_type=exc.code, now=adapters.clock.now()
        )
        return Failed(exc)


def run_detection(
    adapters: Adapters, kwargs: Mapping[str, Any], *, default_job_id: str
) -> JobSummary:
    """Run one message to completion in this process (fan-out chunks included) and return
    its summary, or raise the job's :class:`InvalidInput`. For tests and tools."""
    (outcome,) = detect_batch(adapters, [DetectMessage(default_job_id, kwargs)])
    if isinstance(outcome, FannedOut):
        final: Succeeded | Failed | None = None
        for chunk in outcome.chunks:
            final = run_chunk(adapters, chunk).final or final
        if final is None:
            raise LookupError(f"job {outcome.job_id}: no chunk completed it")
        outcome = final
    if isinstance(outcome, Failed):
        raise outcome.error
    return outcome.summary
