"""The Celery application: JSON only, routed queues, late acks, per-process resources.

Nothing happens at import. :func:`create_app` builds an app for given settings (tests
build their own); :func:`get_app` is this process's app, built on first use. The app
factory sits on top of the Celery wiring: it imports the tasks, the schedule and
observability, and the configuration below them all lives in ``celery_config`` (its
names are re-exported here, where callers have imported them from).
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

from celery import Celery
from celery.signals import (
    task_postrun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
)

from pynomaly_workers.celery_config import (
    SENT_AT_HEADER,
    amqp_config,
    broker_options,
    celery_config,
    cores,
    declared_queues,
    default_concurrency,
    default_exchange,
    layout_for,
    stamp_sent_at,
    tls_options,
    transport_name,
)
from pynomaly_workers.contract import (
    DETECT_CHUNK_TASK,
    DETECT_TASK,
    EVALUATE_CHUNK_TASK,
    TRAIN_MANY_TASK,
    TRAIN_TASK,
)
from pynomaly_workers.settings import Settings, get_settings

__all__ = [
    "FILE_INPUTS",
    "LARGE_TASKS",
    "SENT_AT_HEADER",
    "amqp_config",
    "broker_options",
    "celery_config",
    "cores",
    "create_app",
    "declared_queues",
    "default_concurrency",
    "default_exchange",
    "get_app",
    "layout_for",
    "stamp_sent_at",
    "tls_options",
    "transport_name",
    "was_large",
]


def create_app(settings: Settings) -> Celery:
    """A configured Celery app for ``settings``, with every task defined on it."""
    from pynomaly_workers.schedules import beat_config
    from pynomaly_workers.tasks import (
        alerting,
        detection,
        evaluation,
        health,
        incidents,
        maintenance,
        notifications,
        training,
    )

    application = Celery("pynomaly_workers", set_as_current=False)
    application.conf.update(celery_config(settings))
    application.conf.update(beat_config(settings))
    for module in (
        detection,
        training,
        maintenance,
        health,
        incidents,
        notifications,
        alerting,
        evaluation,
    ):
        module.register(application, settings)
    worker_init.connect(_preload, weak=False, dispatch_uid="pynomaly-preload")
    task_postrun.connect(_release_after_large_task, weak=False, dispatch_uid="pynomaly-heap")
    worker_process_init.connect(_reset_after_fork, weak=False, dispatch_uid="pynomaly-fork")
    worker_process_shutdown.connect(
        _forget_process_metrics, weak=False, dispatch_uid="pynomaly-metrics"
    )
    from pynomaly_workers import lanes, observability

    observability.install(application, settings)
    lanes.install(application)
    return application


@lru_cache(maxsize=1)
def get_app() -> Celery:
    """This process's app, built from :func:`~pynomaly_workers.settings.get_settings`."""
    return create_app(get_settings())


def _preload(**_: Any) -> None:
    from pynomaly_workers.internals import check_internals
    from pynomaly_workers.preload import preload_for_fork

    check_internals()  # before anything runs on internals that are gone: say which
    preload_for_fork()


LARGE_TASKS = frozenset({DETECT_CHUNK_TASK, EVALUATE_CHUNK_TASK, TRAIN_TASK, TRAIN_MANY_TASK})
"""Tasks after which a pool process gives its freed memory back (see adapters/heap.py);
also a detection batch with a job that read or planned a file (:func:`was_large`)."""
FILE_INPUTS = ("source", "dataset")


def was_large(task_name: str, args: Any) -> bool:
    """Whether a finished task's work was large enough to give its freed memory back:
    a chunk, a training, or a detection batch (``args`` = its requests) in which a job
    read or planned a file. A batch of small jobs never pays for the release."""
    if task_name in LARGE_TASKS:
        return True
    if task_name != DETECT_TASK or not args:
        return False
    requests = args[0] if isinstance(args[0], list | tuple) else ()
    return any(
        key in (getattr(request, "kwargs", None) or {})
        for request in requests
        for key in FILE_INPUTS
    )


def _release_after_large_task(task: Any = None, args: Any = None, **_: Any) -> None:
    if task is not None and was_large(task.name, args):
        from pynomaly_workers.adapters.heap import release_free_memory

        release_free_memory()


def _reset_after_fork(**_: Any) -> None:
    from pynomaly_workers.bootstrap import reset_adapters

    reset_adapters()


def _forget_process_metrics(pid: int | None = None, **_: Any) -> None:
    from pynomaly_workers.bootstrap import flush_adapters
    from pynomaly_workers.metrics import process_exited

    flush_adapters()
    process_exited(pid or os.getpid())
