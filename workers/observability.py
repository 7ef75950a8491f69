"""What operators see of a running worker, installed on the Celery app by ``create_app``:

- every publish is stamped with ``sent_at`` (Unix seconds) so the worker can measure the
  queue wait, enqueue -> start;
- job, training and maintenance metrics from Celery's task signals (``pynomaly.detect``
  is micro-batched and counts its jobs itself, in ``tasks/detection.py``);
- the liveness heartbeat and the queue-length sampler, as worker bootsteps in the
  worker's main process;
- JSON log lines (``PYNOMALY_LOG_FORMAT=json``) and masked URL passwords in every log.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import threading
import time
from datetime import UTC, datetime
from typing import Any

from celery import Celery, bootsteps
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    before_task_publish,
    task_postrun,
    task_prerun,
)

from pynomaly_workers.celery_config import SENT_AT_HEADER, stamp_sent_at
from pynomaly_workers.contract import (
    ALL_QUEUES,
    DETECT_CHUNK_TASK,
    DETECT_TASK,
    FAILED,
    MAINTENANCE_PREFIX,
    PING_TASK,
    SUCCEEDED,
    TRAIN_TASK,
    queue_of,
)
from pynomaly_workers.domain.joblog import JobLine
from pynomaly_workers.domain.summaries import mask_secrets
from pynomaly_workers.metrics import get_metrics
from pynomaly_workers.probes import Heartbeat, heartbeat_path
from pynomaly_workers.settings import Settings

log = logging.getLogger(__name__)

current_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "pynomaly_job_id", default=None
)
"""The detection job a log line is about (a micro-batch runs many jobs in one task)."""

current_task_ref: contextvars.ContextVar[tuple[str, str, Any] | None] = contextvars.ContextVar(
    "pynomaly_task", default=None
)
"""(name, id, kwargs) of the task running, for log lines written on a thread Celery's own
(thread-local) ``current_task`` does not see: bulk work runs on a thread of its own
(``adapters/priority.py``), which copies the context."""

current_queue_wait: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "pynomaly_queue_wait", default=None
)
"""Seconds the running task waited, publish -> start: measured once, in ``task_prerun``,
for the metric and for the line of the job the task finishes."""

_started: dict[str, float] = {}


def install(app: Celery, settings: Settings) -> None:
    """Connect the signals and add the worker bootsteps for ``settings``."""
    before_task_publish.connect(stamp_sent_at, weak=False, dispatch_uid="pynomaly-sent-at")
    task_prerun.connect(_on_prerun, weak=False, dispatch_uid="pynomaly-prerun")
    task_postrun.connect(_on_postrun, weak=False, dispatch_uid="pynomaly-postrun")
    configure = _log_configurer(settings)
    after_setup_logger.connect(configure, weak=False, dispatch_uid="pynomaly-log")
    after_setup_task_logger.connect(configure, weak=False, dispatch_uid="pynomaly-task-log")
    app.steps["consumer"].add(_heartbeat_step(settings))
    if (settings.is_redis or settings.is_amqp) and settings.metrics_port:
        app.steps["worker"].add(_queue_sampler_step(settings))


# -- queue wait ------------------------------------------------------------------------
def queue_wait(sent_at: Any, *, now: float) -> float | None:
    """Seconds a job waited, from its ``sent_at`` header; None if absent or garbled."""
    try:
        wait = now - float(sent_at)
    except (TypeError, ValueError):
        return None
    return max(wait, 0.0)


# -- task metrics ------------------------------------------------------------------------
def _on_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task is not None and task_id is not None:
        current_task_ref.set((task.name, task_id, getattr(task.request, "kwargs", None)))
    if task is None or task.name in (DETECT_TASK, PING_TASK) or task_id is None:
        return
    now = time.time()
    _started[task_id] = time.monotonic()
    wait = queue_wait(getattr(task.request, SENT_AT_HEADER, None), now=now)
    current_queue_wait.set(wait)
    if wait is not None and task.name != DETECT_CHUNK_TASK:
        get_metrics().queue_wait.labels(queue=queue_of(task.name)).observe(wait)


def _on_postrun(
    *,
    task_id: str | None = None,
    task: Any = None,
    retval: Any = None,
    state: str | None = None,
    kwargs: Any = None,
    **_: Any,
) -> None:
    current_task_ref.set(None)
    current_queue_wait.set(None)
    if task is None:
        return
    if task.name == PING_TASK:
        if (kwargs or {}).get("source") == "beat":
            get_metrics().beat_last_tick.set(time.time())
        return
    started = _started.pop(task_id or "", None)
    if task.name in (DETECT_TASK, DETECT_CHUNK_TASK) or started is None:
        return
    elapsed = time.monotonic() - started
    outcome = _outcome(state, retval)
    record_task(task.name, outcome=outcome, seconds=elapsed)


def _outcome(state: str | None, retval: Any) -> str:
    if state == "SUCCESS":
        status = retval.get("status") if isinstance(retval, dict) else None
        return status if status in ("skipped",) else SUCCEEDED
    return "retried" if state == "RETRY" else FAILED


def record_task(name: str, *, outcome: str, seconds: float) -> None:
    """Count a finished training or maintenance task."""
    metrics = get_metrics()
    queue = queue_of(name)
    if outcome != "retried":
        metrics.jobs.labels(queue=queue, outcome=outcome).inc()
        metrics.job_seconds.labels(queue=queue).observe(seconds)
    if name == TRAIN_TASK:
        metrics.training_runs.labels(outcome=outcome).inc()
        if outcome == SUCCEEDED:
            metrics.training_seconds.observe(seconds)
    elif name.startswith(MAINTENANCE_PREFIX):
        short = name.removeprefix(MAINTENANCE_PREFIX)
        metrics.maintenance_runs.labels(task=short, outcome=outcome).inc()
        if outcome == SUCCEEDED:
            metrics.maintenance_last_success.labels(task=short).set(time.time())


# -- worker bootsteps ----------------------------------------------------------------------
def _heartbeat_step(settings: Settings) -> type[bootsteps.StartStopStep]:
    class LivenessHeartbeat(bootsteps.StartStopStep):
        """Proves the consumer's event loop turns: a timer in the loop records each tick
        and a thread writes them to the heartbeat file. While the broker is down the
        consumer stops (and reconnects); the file then says so, and liveness passes."""

        requires = ("celery.worker.consumer.tasks:Tasks",)

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self.heartbeat = Heartbeat(
                heartbeat_path(settings), interval=settings.liveness_interval_seconds
            )
            self.tref: Any = None

        def start(self, parent: Any) -> None:
            self.heartbeat.consuming(True)
            self.tref = parent.timer.call_repeatedly(
                settings.liveness_interval_seconds, self.heartbeat.tick
            )
            if settings.metrics_port:
                get_metrics().worker_up.set(1)

        def stop(self, parent: Any) -> None:
            self.heartbeat.consuming(False)
            if self.tref is not None:
                self.tref.cancel()
                self.tref = None
            if settings.metrics_port:
                get_metrics().worker_up.set(0)

        def shutdown(self, parent: Any) -> None:
            self.stop(parent)
            self.heartbeat.close()

    return LivenessHeartbeat


# prometheus-client's multiprocess values share one lock per process, taken on every
# write. A pool process forked while the sampler thread held it inherits it locked and
# hangs on its first metric write (seen: a training task stuck in values.py "with
# lock"). The sampler writes only while holding this guard, and the guard is held across
# every fork of the process, so a fork never happens in the middle of a write.
_FORK_GUARD = threading.Lock()
_fork_guard_registered = False


def _guard_forks() -> None:
    global _fork_guard_registered  # noqa: PLW0603 - once per process
    if not _fork_guard_registered:
        os.register_at_fork(
            before=_FORK_GUARD.acquire,
            after_in_parent=_FORK_GUARD.release,
            after_in_child=_FORK_GUARD.release,
        )
        _fork_guard_registered = True


def _queue_sampler_step(settings: Settings) -> type[bootsteps.StartStopStep]:
    class QueueSampler(bootsteps.StartStopStep):
        """Samples each queue's length into ``pynomaly_queue_length`` every
        ``PYNOMALY_QUEUE_SAMPLE_SECONDS``, from the main process only."""

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self.stopped = threading.Event()
            self.thread: threading.Thread | None = None

        def start(self, parent: Any) -> None:
            # Metrics are created here, on the main thread, which is the one that forks
            # the pool: created from this thread, a fork mid-creation left a pool process
            # a half-filled registry, and every later get_metrics() there raised
            # DuplicateTimeseries (every detection batch on it failed).
            gauge = get_metrics().queue_length
            _guard_forks()
            self.thread = threading.Thread(
                target=self.run, args=(gauge,), name="queue-sampler", daemon=True
            )
            self.thread.start()

        def stop(self, parent: Any) -> None:
            self.stopped.set()

        def run(self, gauge: Any) -> None:
            from pynomaly_workers.adapters.queues import queue_depth

            depth = queue_depth(settings)
            while not self.stopped.is_set():
                try:
                    lengths = depth.lengths(ALL_QUEUES)
                    with _FORK_GUARD:
                        for queue, length in lengths.items():
                            gauge.labels(queue=queue).set(length)
                except Exception as exc:  # the broker is down: keep the last sample
                    log.debug("queue sample failed: %s", exc)
                self.stopped.wait(settings.queue_sample_seconds)
            depth.close()

    return QueueSampler


# -- logs --------------------------------------------------------------------------------
class MaskSecrets(logging.Filter):
    """Masks the password of every URL in a log record's message and arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, JobLine):  # validated ids and names only: no URL
            return True
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and the task name, task id
    and job_id when the line was logged by a task; a finished job's line also carries its
    fields (``domain.joblog.JobLine``)."""

    def format(self, record: logging.LogRecord) -> str:
        if isinstance(record.msg, JobLine):
            return self.format_job_line(record, record.msg)
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": mask_secrets(record.getMessage()),
            "pid": record.process,
        }
        data.update(_task_fields())
        if record.exc_info:
            data["exception"] = mask_secrets(self.formatException(record.exc_info))
        return json.dumps(data, default=str)

    @staticmethod
    def format_job_line(record: logging.LogRecord, line: JobLine) -> str:
        """A finished job's line, written once per job: its own fields stand in for the
        running task's (which a micro-batch shares among its jobs), a short message, no
        URL to mask (ids and names are validated, a producer's are masked when built)."""
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": line.headline(),
            "pid": record.process,
        }
        data.update(line.fields())
        return json.dumps(data)


def _task_fields() -> dict[str, Any]:
    from celery import current_task

    fields: dict[str, Any] = {}
    task = current_task
    request = getattr(task, "request", None) if task else None
    running = current_task_ref.get()
    if request is not None and getattr(request, "id", None):
        running = (task.name, request.id, getattr(request, "kwargs", None))
    if running is not None:
        fields["task_name"], fields["task_id"] = running[0], running[1]
        kwargs = running[2] or {}
        if isinstance(kwargs, dict) and kwargs.get("job_id"):
            fields["job_id"] = kwargs["job_id"]
    job_id = current_job_id.get()
    if job_id:
        fields["job_id"] = job_id
    return fields


def _log_configurer(settings: Settings) -> Any:
    def configure(logger: logging.Logger | None = None, **_: Any) -> None:
        targets = [logger] if logger is not None else []
        targets.append(logging.getLogger())
        for target in targets:
            for handler in target.handlers:
                if settings.log_format == "json":
                    handler.setFormatter(JsonFormatter())
                if not any(isinstance(f, MaskSecrets) for f in handler.filters):
                    handler.addFilter(MaskSecrets())

    return configure


def configure_process_logging(settings: Settings) -> None:
    """Logging for commands other than the worker (beat, Flower, the CLI)."""
    handler = logging.StreamHandler()
    handler.addFilter(MaskSecrets())
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(handler)
        root.setLevel(logging.INFO)
