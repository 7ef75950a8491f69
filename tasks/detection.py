"""``pynomaly.detect`` (micro-batched) and ``pynomaly.detect.chunk`` (fan-out pieces).

``pynomaly.detect`` is a celery-batches task: the worker's consumer buffers deliveries
and hands them to a pool process in groups of up to ``PYNOMALY_BATCH_MAX_JOBS``, at least
every ``PYNOMALY_BATCH_MAX_WAIT_MS``. Each delivery keeps its own task id, result,
acknowledgement (after the batch, or a requeue if the pool process dies) and retries.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from typing import Any

from celery import Celery, Task
from celery.utils.time import get_exponential_backoff_interval
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task

from pynomaly_workers.bootstrap import get_adapters
from pynomaly_workers.contract import (
    DETECT_CHUNK_TASK,
    DETECT_TASK,
    DETECTION_QUEUE,
    FAILED,
    SUCCEEDED,
)
from pynomaly_workers.metrics import get_metrics
from pynomaly_workers.services.detection import (
    DetectMessage,
    Failed,
    FannedOut,
    Outcome,
    Succeeded,
    detect_batch,
    run_chunk,
)
from pynomaly_workers.settings import Settings
from pynomaly_workers.tasks.base import TRANSIENT_ERRORS, retry_options

log = logging.getLogger(__name__)


class DetectionBatches(Batches):  # type: ignore[misc]
    """celery-batches, plus what a single task gets from Celery: the batch's messages are
    requeued if its pool process dies (``task_reject_on_worker_lost``), and the batch
    runs under the task time limits."""

    def flush(self, requests: Collection[Any]) -> Any:
        batch = ([SimpleRequest.from_request(r) for r in requests],)

        def on_return(_result: Any) -> None:
            for request in requests:
                request.acknowledge()

        def on_error(_exc_info: Any) -> None:
            log.error("a detection batch of %d jobs was lost; requeueing it", len(requests))
            for request in requests:
                request.reject(requeue=True)

        return self._pool.apply_async(
            apply_batches_task,
            (self, batch, 0, None),
            callback=on_return,
            error_callback=on_error,
            soft_timeout=self.app.conf.task_soft_time_limit,
            timeout=self.app.conf.task_time_limit,
        )


def register(app: Celery, settings: Settings) -> None:
    """Define the detection tasks on ``app``."""

    @app.task(
        name=DETECT_TASK,
        base=DetectionBatches,
        bind=True,
        acks_late=True,
        flush_every=settings.batch_max_jobs,
        flush_interval=settings.batch_max_wait_ms / 1000.0,
    )
    def detect(self: Task, requests: Sequence[SimpleRequest]) -> int:  # type: ignore[type-arg]
        """Public contract (``contract.DETECT_KWARGS_SCHEMA``): keyword arguments only;
        the job_id defaults to the task id. Each request's result is stored under its
        own task id."""
        return run_batch(self.app, requests, settings=settings)

    @app.task(name=DETECT_CHUNK_TASK, **retry_options(settings))
    def detect_chunk(self: Task, **kwargs: Any) -> dict[str, Any]:  # type: ignore[type-arg]
        """One chunk of a fanned-out job (internal; published by ``pynomaly.detect``)."""
        with get_metrics().chunk_seconds.time():
            done = run_chunk(get_adapters(), kwargs)
        if done.final is not None and done.task_id is not None:
            publish_outcome(self.app, done.task_id, done.final, request=None)
        return {"job_id": done.job.job_id, "status": done.job.status}


def run_batch(celery_app: Celery, requests: Sequence[SimpleRequest], *, settings: Settings) -> int:
    """Run one micro-batch and store each job's outcome as its task's result."""
    messages = [DetectMessage(str(r.id), r.kwargs or {}, tuple(r.args or ())) for r in requests]
    metrics = get_metrics()
    metrics.batch_jobs.observe(len(messages))
    try:
        with metrics.batch_seconds.time():
            outcomes = detect_batch(get_adapters(), messages)
    except TRANSIENT_ERRORS as exc:
        _retry_later(celery_app, requests, exc, settings=settings)
        return 0
    except Exception as exc:  # a bug must not lose the batch silently
        log.exception("detection batch failed")
        for request in requests:
            _fail_internal(celery_app, request, exc)
        return 0
    for request, outcome in zip(requests, outcomes, strict=True):
        publish_outcome(celery_app, str(request.id), outcome, request=request)
    return len(requests)


def publish_outcome(
    celery_app: Celery, task_id: str, outcome: Outcome, *, request: SimpleRequest | None
) -> None:
    """Store a job's outcome as its task's result; publish a fanned-out job's chunks."""
    backend = celery_app.backend
    _count(outcome)
    if isinstance(outcome, Succeeded):
        backend.mark_as_done(task_id, outcome.summary.to_dict(), request=request)
    elif isinstance(outcome, Failed):
        # celery-batches' SimpleRequest has no errbacks; pynomaly.detect takes none.
        backend.mark_as_failure(task_id, outcome.error, request=request, call_errbacks=False)
    elif isinstance(outcome, FannedOut):
        for chunk in outcome.chunks:
            celery_app.send_task(DETECT_CHUNK_TASK, kwargs=chunk, queue=DETECTION_QUEUE)


def _count(outcome: Outcome) -> None:
    """Count finished jobs; a fanned-out job is counted once, when its last chunk ends."""
    metrics = get_metrics()
    if isinstance(outcome, Succeeded):
        summary = outcome.summary
        metrics.jobs.labels(outcome=SUCCEEDED).inc()
        metrics.records.inc(summary.n_records)
        metrics.anomalies.inc(summary.n_anomalies)
        metrics.cache_hits.inc(summary.cache_hits)
    elif isinstance(outcome, Failed):
        metrics.jobs.labels(outcome=FAILED).inc()


def _retry_later(
    celery_app: Celery,
    requests: Sequence[SimpleRequest],
    exc: BaseException,
    *,
    settings: Settings,
) -> None:
    """Re-publish each job with exponential backoff and full jitter (Celery's retry
    semantics, per request), or give up after ``PYNOMALY_RETRY_MAX`` attempts."""
    for request in requests:
        retries = int((request.request_dict or {}).get("retries") or 0)
        if retries >= settings.retry_max:
            _fail_internal(celery_app, request, exc)
            continue
        countdown = get_exponential_backoff_interval(
            factor=1, retries=retries, maximum=settings.retry_backoff_max, full_jitter=True
        )
        log.warning("job %s: %s; retry %d in %ss", request.id, exc, retries + 1, countdown)
        get_metrics().retries.inc()
        celery_app.send_task(
            DETECT_TASK,
            kwargs=request.kwargs,
            task_id=str(request.id),
            countdown=countdown,
            retries=retries + 1,
            queue=DETECTION_QUEUE,
        )


def _fail_internal(celery_app: Celery, request: SimpleRequest, exc: BaseException) -> None:
    """Record a job that died of something other than bad input, so it never stays
    ``running``; best effort, as the store may be what is down."""
    error = exc if isinstance(exc, Exception) else RuntimeError(str(exc))
    job_id = str((request.kwargs or {}).get("job_id") or request.id)
    try:
        adapters = get_adapters()
        adapters.store.fail_job(
            job_id,
            error=f"{type(exc).__name__}: {exc}",
            error_type="internal_error",
            now=adapters.clock.now(),
        )
    except Exception:
        log.exception("could not record failure of job %s", job_id)
    get_metrics().jobs.labels(outcome=FAILED).inc()
    celery_app.backend.mark_as_failure(str(request.id), error, request=request, call_errbacks=False)
