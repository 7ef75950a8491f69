"""``pynomaly.detect`` (micro-batched) and ``pynomaly.detect.chunk`` (fan-out pieces).

``pynomaly.detect`` is a celery-batches task: the worker's consumer buffers deliveries
and hands them to a pool process in groups of up to ``PYNOMALY_BATCH_MAX_JOBS``. A group
goes as soon as a pool process is free to take it (everything read in one turn of the
event loop goes together); while every process is busy the buffer grows, and it is
handed over at least every ``PYNOMALY_BATCH_MAX_WAIT_MS``. So a lone job waits for no
timer, and batches grow with the load. Each delivery keeps its own task id, result,
acknowledgement (after the batch, or a requeue if the pool process dies) and retries.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from queue import Queue
from typing import Any

from celery import Celery, Task, states
from celery.signals import task_received
from celery.utils.time import maybe_iso8601
from celery_batches import Batches, SimpleRequest, consume_queue
from celery_batches.trace import apply_batches_task

from pynomaly_workers.adapters.broker import acknowledge_all
from pynomaly_workers.adapters.priority import run_niced
from pynomaly_workers.adapters.results import StoredResult, store_results
from pynomaly_workers.bootstrap import get_adapters
from pynomaly_workers.celery_config import SENT_AT_HEADER, layout_for
from pynomaly_workers.client import publish
from pynomaly_workers.contract import (
    BULK_QUEUE,
    DETECT_CHUNK_TASK,
    DETECT_TASK,
    DETECTION_QUEUE,
    FAILED,
    SUCCEEDED,
)
from pynomaly_workers.domain.lanes import bulk_level, is_small_job, message_priority
from pynomaly_workers.domain.retries import retry_delay
from pynomaly_workers.domain.summaries import kwargs_summary, result_summary
from pynomaly_workers.lanes import from_bulk_lane
from pynomaly_workers.metrics import get_metrics, model_label
from pynomaly_workers.observability import current_job_id, queue_wait
from pynomaly_workers.services.detection import (
    DetectMessage,
    Failed,
    FannedOut,
    Outcome,
    Succeeded,
    detect_batch,
    run_chunk,
)
from pynomaly_workers.services.detection.lines import log_failure
from pynomaly_workers.settings import Settings
from pynomaly_workers.tasks.base import is_transient, retry_options
from pynomaly_workers.tasks.incidents import request_fold

log = logging.getLogger(__name__)


class DetectionBatches(Batches):  # type: ignore[misc]
    """celery-batches, plus what a single task gets from Celery: the batch's messages are
    requeued if its pool process dies (``task_reject_on_worker_lost``), the batch runs
    under the task time limits, a consumer restart (e.g. after a broker restart) neither
    stops flushing nor strands a delivery (see :func:`release_stale`), and every job in
    it sends its own task events (received, started, succeeded/failed with runtime and a
    short result), so Flower and event monitors see each detection job, not one
    anonymous batch."""

    #: Hand a batch to an idle pool process at once (``PYNOMALY_BATCH_EAGER``).
    eager = True
    #: Larger jobs, and jobs that read a file, run in the bulk lane
    #: (``PYNOMALY_SMALL_JOB_MAX_RECORDS``).
    small_job_max_records = 1_000
    #: The broker is RabbitMQ (``Settings.is_amqp``): its priorities run the other way.
    amqp = False
    #: The longest a delivery is held for a process to free up before it is handed to
    #: the pool anyway: a safety net should the pool's count of busy processes be wrong.
    hold_limit_s = 0.25

    def __init__(self) -> None:
        super().__init__()
        # Batches handed to the pool and not finished yet: pool result -> its requests.
        self.in_pool: dict[int, tuple[Any, Collection[Any]]] = {}
        # When the buffer was first held back for want of an idle process (see _holding).
        self._held_since: float | None = None
        # Every delivery passes here on its way into the buffer (see LaneSorter).
        self._buffer = LaneSorter(self.route)

    def Strategy(self, task: Task, app: Celery, consumer: Any) -> Any:  # type: ignore[type-arg]  # noqa: N802
        """Celery builds the strategy again each time the consumer (re)starts, e.g. after
        the broker connection was lost; what celery-batches kept from the old connection
        is released first."""
        release_stale(self)
        buffer = super().Strategy(task, app, consumer)
        task_received.connect(
            _announce_received, sender=consumer, weak=False, dispatch_uid="pynomaly-received"
        )
        self._consumer = consumer
        self._dispatch_pending = False

        def handler(*args: Any, **kwargs: Any) -> None:
            buffer(*args, **kwargs)
            self.dispatch_soon()

        return handler

    def dispatch_soon(self) -> None:
        """Flush the buffer on the event loop's next turn if a pool process is idle.

        "Next turn", not now: a consumer wakeup delivers every message it read before the
        loop turns, so they go to the process as one batch. Only one flush is scheduled
        per turn. With no idle process the buffer waits, growing, for the timer or for a
        batch to return."""
        consumer = self._consumer
        if not self.eager or self._dispatch_pending or not getattr(consumer, "hub", None):
            return
        if idle_processes(self._pool, in_flight=len(self.in_pool)) <= 0:
            return
        self._dispatch_pending = True
        consumer.hub.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._dispatch_pending = False
        if self._buffer.qsize():
            self._do_flush()

    def _do_flush(self) -> None:
        """celery-batches' flush, which its timer calls every ``BATCH_MAX_WAIT_MS`` and a
        full buffer (``BATCH_MAX_JOBS``) calls at once; in eager mode a buffer short of a
        full batch is held while every pool process is busy (see :meth:`_holding`)."""
        if self.eager and self._holding():
            return
        self._held_since = None
        super()._do_flush()

    def _holding(self) -> bool:
        """Whether to keep the buffer for now: it is short of a full batch and no pool
        process is idle (a returning batch dispatches it, and the timer checks again).

        Handing it over anyway queued it behind the busy processes as a batch of one or
        two jobs (the timer fires every 2 ms: at 150 jobs/s that is one job a flush), so a
        busy worker stopped batching exactly when it needed to: each job then paid a
        whole batch's overheads (a transaction, a results script, a log line), the
        processes fell further behind, and one-record jobs at a rate a worker serves at
        5 ms waited a second in the pool's queue."""
        if self._buffer.qsize() + self._pending.qsize() >= self.flush_every:
            return False
        if idle_processes(self._pool, in_flight=len(self.in_pool)) > 0:
            return False
        now = time.monotonic()
        if self._held_since is None:
            self._held_since = now
        return now - self._held_since < self.hold_limit_s

    def route(self, request: Any) -> bool:
        """Take a delivery out of the small lane's buffer if it is bulk work: run it now
        if the bulk lane delivered it (the lane's prefetch already bounds how many run),
        else forward it to the bulk queue. False leaves it in the buffer."""
        if from_bulk_lane(request.message):
            self.run_bulk(request)
            return True
        if is_small_job(request.kwargs or {}, max_records=self.small_job_max_records):
            return False
        return self.forward(request)

    def forward(self, request: Any) -> bool:
        """Republish a bulk job, unchanged, on the bulk queue, then acknowledge it here.
        A crash between the two delivers it twice, which its job_id makes harmless. If
        the publish fails the job stays in the small lane (slower for the others, but
        never lost)."""
        try:
            forward_message(self.app, request.message, amqp=self.amqp)
        except Exception as exc:  # the broker refused or is away: run it here
            log.warning("could not forward job %s to %s (%s)", request.id, BULK_QUEUE, exc)
            return False
        request.acknowledge()
        return True

    def run_bulk(self, request: Any) -> None:
        """Hand a bulk-lane job to the pool as a batch of its own, when it is due."""
        delay = seconds_until(request.eta)
        if delay > 0:  # a retry with a countdown: wait in the consumer, as Celery does
            self._consumer.timer.call_after(delay, self.flush, ([request],))
            return
        self.flush([request])

    def flush(self, requests: Collection[Any]) -> Any:
        batch = ([SimpleRequest.from_request(r) for r in requests],)
        key = next(_batch_keys)
        accepted: list[float] = []

        def on_accepted(pid: int, time_accepted: float) -> None:
            accepted.append(time_accepted)
            for request in requests:
                request.send_event("task-started", pid=pid)

        def on_return(reports: Any) -> None:
            self.in_pool.pop(key, None)
            runtime = time.monotonic() - accepted[0] if accepted else 0.0
            announce_outcomes(requests, reports, runtime=runtime)
            acknowledge_all(requests)
            self.dispatch_soon()  # what gathered while the processes were busy

        def on_error(_exc_info: Any) -> None:
            self.in_pool.pop(key, None)
            log.error("a detection batch of %d jobs was lost; requeueing it", len(requests))
            for request in requests:
                request.reject(requeue=True)

        result = self._pool.apply_async(
            apply_batches_task,
            (self, batch, 0, None),
            accept_callback=on_accepted,
            callback=on_return,
            error_callback=on_error,
            soft_timeout=self.app.conf.task_soft_time_limit,
            timeout=self.app.conf.task_time_limit,
        )
        self.in_pool[key] = (result, requests)
        return result


_batch_keys = itertools.count()


class LaneSorter(Queue[Any]):
    """celery-batches' buffer, with a look at every delivery first: ``take`` returns
    True for one it handled elsewhere (bulk work), which then never enters the buffer."""

    def __init__(self, take: Callable[[Any], bool]) -> None:
        super().__init__()
        self._take = take

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if not self._take(item):
            super().put(item, block, timeout)


def forward_message(app: Celery, message: Any, *, amqp: bool) -> None:
    """Publish a delivered task message again, body and headers unchanged, on the bulk
    queue, ahead of every chunk but a job's first ones (it plans or scores a file).
    ``amqp`` is ``Settings.is_amqp`` (``amqps://`` included)."""
    properties = message.properties or {}
    with app.producer_or_acquire() as producer:
        producer.publish(
            message.body,
            exchange=BULK_QUEUE,
            routing_key=BULK_QUEUE,
            headers=dict(message.headers or {}),
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            correlation_id=properties.get("correlation_id"),
            reply_to=properties.get("reply_to"),
            priority=message_priority(0, amqp=amqp),
            delivery_mode=2,
            serializer=None,
            retry=False,
        )


def seconds_until(eta: Any) -> float:
    """Seconds until a request's ETA (0 for none or past)."""
    if not eta:
        return 0.0
    moment = maybe_iso8601(eta) if isinstance(eta, str) else eta
    if not isinstance(moment, datetime):
        return 0.0
    return max(moment.timestamp() - time.time(), 0.0)


def idle_processes(pool: Any, *, in_flight: int) -> int:
    """How many pool processes could take a batch now. Prefork's pool knows (processes
    not running a job, less the jobs written to none yet, of any task); for another pool,
    its size less the detection batches in flight."""
    inner = getattr(pool, "_pool", None)
    queues = getattr(inner, "_all_inqueues", None)
    busy = getattr(inner, "_busy_workers", None)
    outbound = getattr(inner, "outbound_buffer", None)
    if queues is None or busy is None or outbound is None:
        return int(getattr(pool, "num_processes", 1) or 1) - in_flight
    return len(queues) - len(busy) - len(outbound)


def release_stale(batches: DetectionBatches) -> int:
    """After a consumer restart: re-arm the flush timer, and hand back to the broker every
    delivery that would otherwise wait for a human. Returns how many were handed back.

    * On a lost connection Celery's event loop clears its timer (``hub.timer.clear()``).
      That drops celery-batches' repeating flush, but celery-batches keeps the dead entry
      (``_tref``) and so never arms a new one: afterwards a buffer short of
      ``flush_every`` jobs is never flushed and its messages stay unacknowledged.
    * Deliveries still in the buffer came over the old connection.
    * Batches handed to the pool but not yet written to a process are discarded by the
      pool (``AsynPool.flush``, called from ``Consumer.on_close``) without a callback, as
      Celery assumes the broker redelivers them. AMQP does; Redis keeps them in its
      ``unacked`` hash until the visibility timeout (kombu's restore at channel close
      ran while the broker was down, and failed).

    Each such delivery is rejected with requeue: on Redis that restores it by delivery
    tag (a no-op if kombu restored it already), so the new consumer receives it again.
    On RabbitMQ the broker requeued it when its channel closed; a reject over that dead
    channel could only fail, so it is only marked settled. Batches a pool process
    accepted finish normally and are acknowledged then."""
    if batches._tref is not None:
        batches._tref.cancel()
        batches._tref = None
    stale = [*consume_queue(batches._buffer), *consume_queue(batches._pending)]
    batches._count = itertools.count(1)
    for key, (result, requests) in list(batches.in_pool.items()):
        if _discarded_by_pool(result):
            del batches.in_pool[key]
            stale.extend(requests)
    if stale:
        log.warning("consumer restarted: handing %d held jobs back to the broker", len(stale))
    for request in stale:
        if requeued_by_broker(request):
            request.acknowledged = True
        else:
            request.reject(requeue=True)
    return len(stale)


def requeued_by_broker(request: Any) -> bool:
    """True for an AMQP delivery whose channel is closed: RabbitMQ requeued it then.
    (Redis channels have no ``is_open``: their deliveries wait in the ``unacked`` hash.)"""
    channel = getattr(request.message, "channel", None)
    return getattr(channel, "is_open", True) is False


def _discarded_by_pool(result: Any) -> bool:
    """True for a pool job that will never run: not finished, and gone from the pool's
    job cache (billiard's ``ApplyResult.discard``)."""
    cache = getattr(result, "_cache", None)
    return cache is not None and not result.ready() and result._job not in cache


def _announce_received(request: Any = None, **_: Any) -> None:
    """``task-received`` for a buffered detection message (Celery's default strategy
    sends it for other tasks; celery-batches does not)."""
    if request is None or request.name != DETECT_TASK:
        return
    kwargsrepr = request.kwargsrepr or kwargs_summary(request.kwargs or {})
    request.send_event(
        "task-received",
        name=request.name,
        args=request.argsrepr or "()",
        kwargs=kwargsrepr,
        root_id=request.root_id,
        parent_id=request.parent_id,
        retries=(request.request_dict or {}).get("retries", 0),
        eta=None,
        expires=None,
    )


def announce_outcomes(requests: Collection[Any], reports: Any, *, runtime: float) -> None:
    """Send each job's ``task-succeeded`` / ``task-failed`` / ``task-retried`` event."""
    by_id = {r["task_id"]: r for r in reports} if isinstance(reports, list) else {}
    for request in requests:
        report = by_id.get(str(request.id))
        if report is None:
            request.send_event("task-failed", exception="the batch ended without an outcome")
        elif report["state"] == SUCCEEDED:
            request.send_event("task-succeeded", result=report["result"], runtime=runtime)
        elif report["state"] == "retried":
            request.send_event("task-retried", exception=report["result"])
        else:
            request.send_event("task-failed", exception=report["result"], runtime=runtime)


def register(app: Celery, settings: Settings) -> None:
    """Define the detection tasks on ``app``."""

    @app.task(
        name=DETECT_TASK,
        base=DetectionBatches,
        bind=True,
        acks_late=True,
        flush_every=settings.batch_max_jobs,
        flush_interval=settings.batch_max_wait_ms / 1000.0,
        eager=settings.batch_eager,
        small_job_max_records=settings.small_job_max_records,
        amqp=settings.is_amqp,
    )
    def detect(
        self: Task,  # type: ignore[type-arg]
        requests: Sequence[SimpleRequest],
    ) -> list[dict[str, str]]:
        """Public contract (``contract.DETECT_KWARGS_SCHEMA``): keyword arguments only;
        the job_id defaults to the task id. Each request's result is stored under its
        own task id; the batch returns one short report per job for the task events."""
        return run_batch(self.app, requests, settings=settings)

    @app.task(name=DETECT_CHUNK_TASK, **retry_options(settings))
    def detect_chunk(self: Task, **kwargs: Any) -> dict[str, Any]:  # type: ignore[type-arg]
        """One chunk of a fanned-out job (internal; published by ``pynomaly.detect``)."""
        with get_metrics().chunk_seconds.time():
            done = run_niced(lambda: run_chunk(get_adapters(), kwargs), nice=settings.bulk_nice)
        if done.final is not None and done.task_id is not None:
            publish_outcome(self.app, done.task_id, done.final, request=None)
        if isinstance(done.final, Succeeded) and done.final.summary.n_anomalies:
            request_fold(self.app, settings)
        return {"job_id": done.job.job_id, "status": done.job.status}


def run_batch(
    celery_app: Celery, requests: Sequence[SimpleRequest], *, settings: Settings
) -> list[dict[str, str]]:
    """Run one micro-batch and store each job's outcome as its task's result."""
    waits = _observe_waits(requests)
    messages = [
        DetectMessage(str(r.id), r.kwargs or {}, tuple(r.args or ()), queue_wait_s=wait)
        for r, wait in zip(requests, waits, strict=True)
    ]
    metrics = get_metrics()
    metrics.batch_size.observe(len(messages))
    started = time.monotonic()
    # a batch the bulk lane ran (a file or large job) yields the CPU to small jobs
    nice = settings.bulk_nice if any(lane_of(r) == BULK_QUEUE for r in requests) else 0
    try:
        with metrics.batch_seconds.time():
            outcomes = run_niced(lambda: detect_batch(get_adapters(), messages), nice=nice)
    except Exception as exc:
        if is_transient(exc):
            _retry_later(celery_app, requests, exc, settings=settings)
            return [_report(r, "retried", f"{type(exc).__name__}: {exc}") for r in requests]
        # a bug must not lose the batch silently
        log.exception("detection batch failed")
        for request in requests:
            _fail_internal(celery_app, request, exc)
        return [_report(r, FAILED, f"internal error: {type(exc).__name__}") for r in requests]
    elapsed = time.monotonic() - started
    reports = []
    stored: list[StoredResult] = []
    for request, outcome in zip(requests, outcomes, strict=True):
        _count(outcome)
        if isinstance(outcome, FannedOut):
            token = current_job_id.set(str((request.kwargs or {}).get("job_id") or request.id))
            try:
                _publish_chunks(celery_app, outcome)
            finally:
                current_job_id.reset(token)
        else:
            stored.append(_stored_result(str(request.id), outcome, request))
            metrics.job_seconds.labels(queue=DETECTION_QUEUE).observe(elapsed)
        reports.append(_outcome_report(request, outcome))
    # One script call for the batch's results, not two round trips per job.
    store_results(celery_app.backend, stored)
    if any(isinstance(o, Succeeded) and not o.replayed and o.summary.n_anomalies for o in outcomes):
        request_fold(celery_app, settings)
    return reports  # a batch that read a file releases memory after it (celery_app.was_large)


def _observe_waits(requests: Sequence[SimpleRequest]) -> list[float | None]:
    """Each job's wait, send -> start, under the lane that ran it: ``detection`` for the
    small lane, ``detection.bulk`` for a job the bulk lane ran. Returned for the jobs'
    log lines (measured once, here)."""
    now = time.time()
    histogram = get_metrics().queue_wait
    waits = []
    for request in requests:
        wait = queue_wait((request.request_dict or {}).get(SENT_AT_HEADER), now=now)
        if wait is not None:
            histogram.labels(queue=lane_of(request)).observe(wait)
        waits.append(wait)
    return waits


def lane_of(request: SimpleRequest) -> str:
    """The queue a batched request was delivered from, as a metric label: only ever one
    of the two detection queues, whatever a producer wrote into the message."""
    routing_key = (getattr(request, "delivery_info", None) or {}).get("routing_key")
    return BULK_QUEUE if routing_key == BULK_QUEUE else DETECTION_QUEUE


def _report(request: SimpleRequest, state: str, result: str) -> dict[str, str]:
    return {"task_id": str(request.id), "state": state, "result": result}


def _outcome_report(request: SimpleRequest, outcome: Outcome) -> dict[str, str]:
    if isinstance(outcome, Succeeded):
        return _report(request, SUCCEEDED, result_summary(outcome.summary.to_dict()))
    if isinstance(outcome, Failed):
        error = outcome.error
        return _report(request, FAILED, f"{type(error).__name__}: {str(error)[:200]}")
    return _report(request, SUCCEEDED, f"fanned out into {len(outcome.chunks)} chunks")


def publish_outcome(
    celery_app: Celery, task_id: str, outcome: Outcome, *, request: SimpleRequest | None
) -> None:
    """Store a job's outcome as its task's result; publish a fanned-out job's chunks."""
    _count(outcome)
    if isinstance(outcome, FannedOut):
        _publish_chunks(celery_app, outcome)
    else:
        store_results(celery_app.backend, [_stored_result(task_id, outcome, request)])


def _stored_result(task_id: str, outcome: Succeeded | Failed, request: Any) -> StoredResult:
    """The task result of a finished job (``pynomaly.detect`` takes no errbacks)."""
    if isinstance(outcome, Succeeded):
        return StoredResult(task_id, outcome.summary.to_dict(), states.SUCCESS, request)
    return StoredResult(task_id, outcome.error, states.FAILURE, request)


def _publish_chunks(celery_app: Celery, outcome: FannedOut) -> None:
    """Publish a job's chunks on the bulk queue, later chunks at lower priority (least
    attained service first, ``domain.lanes.bulk_level``)."""
    settings = get_adapters().settings
    width = layout_for([DETECTION_QUEUE], concurrency=settings.worker_concurrency).bulk_slots
    for chunk in outcome.chunks:
        level = bulk_level(int(chunk["chunk"][0]), width=width)
        publish(
            celery_app,
            DETECT_CHUNK_TASK,
            kwargs=chunk,
            queue=BULK_QUEUE,
            priority=message_priority(level, amqp=settings.is_amqp),
        )


def _count(outcome: Outcome) -> None:
    """Count finished jobs; a fanned-out job is counted once, when its last chunk ends."""
    metrics = get_metrics()
    if isinstance(outcome, Succeeded):
        summary = outcome.summary
        model = model_label(summary.model)
        metrics.jobs.labels(queue=DETECTION_QUEUE, outcome=SUCCEEDED).inc()
        metrics.records.labels(model=model).inc(summary.n_records)
        metrics.anomalies.labels(model=model).inc(summary.n_anomalies)
        if summary.n_suppressed:
            metrics.anomalies_suppressed.labels(model=model).inc(summary.n_suppressed)
    elif isinstance(outcome, Failed):
        metrics.jobs.labels(queue=DETECTION_QUEUE, outcome=FAILED).inc()


def _retry_later(
    celery_app: Celery,
    requests: Sequence[SimpleRequest],
    exc: BaseException,
    *,
    settings: Settings,
) -> None:
    """Re-publish each job with exponential backoff and equal jitter (see
    :mod:`~pynomaly_workers.domain.retries`), or fail it after ``PYNOMALY_RETRY_MAX``
    retries. A job whose failure cannot be recorded either (the store is what is down)
    is retried again at the longest delay: acknowledging it would leave it unfinished."""
    for request in requests:
        retries = int((request.request_dict or {}).get("retries") or 0)
        if retries >= settings.retry_max and _record_failure(request, exc):
            _mark_failed(celery_app, request, exc)
            continue
        delay = retry_delay(
            min(retries, settings.retry_max),
            maximum=settings.retry_backoff_max,
            draw=random.random(),  # jitter, not a secret
        )
        log.warning("job %s: %s; retry %d in %.1fs", request.id, exc, retries + 1, delay)
        get_metrics().retries.inc()
        publish(
            celery_app,
            DETECT_TASK,
            kwargs=dict(request.kwargs or {}),
            task_id=str(request.id),
            countdown=delay,
            retries=retries + 1,
            queue=DETECTION_QUEUE,
        )


def _fail_internal(celery_app: Celery, request: SimpleRequest, exc: BaseException) -> None:
    """Record a job that died of something other than bad input, so it never stays
    ``running`` (best effort: the store may be what is down), and mark its task failed."""
    _record_failure(request, exc)
    _mark_failed(celery_app, request, exc)


def _mark_failed(celery_app: Celery, request: SimpleRequest, exc: BaseException) -> None:
    """Count the job failed and store the failure as its task's result."""
    error = exc if isinstance(exc, Exception) else RuntimeError(str(exc))
    get_metrics().jobs.labels(queue=DETECTION_QUEUE, outcome=FAILED).inc()
    log_failure(
        get_adapters(),
        DetectMessage(str(request.id), request.kwargs or {}),
        error_type="transient_error" if is_transient(exc) else "internal_error",
    )
    celery_app.backend.mark_as_failure(str(request.id), error, request=request, call_errbacks=False)


def _record_failure(request: SimpleRequest, exc: BaseException) -> bool:
    """Fail the job's record; False if the store could not be written."""
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
        return False
    return True
