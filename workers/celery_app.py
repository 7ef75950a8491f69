"""The Celery application: JSON only, routed queues, late acks, per-process resources.

Nothing happens at import. :func:`create_app` builds an app for given settings (tests
build their own); :func:`get_app` is this process's app, built on first use.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from celery import Celery
from celery.signals import (
    task_postrun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
)
from kombu import Exchange, Queue

from pynomaly_workers.adapters.amqp_topology import ROUTING_EXCHANGE, contract_queue
from pynomaly_workers.contract import (
    ALL_QUEUES,
    DETECT_CHUNK_TASK,
    DETECT_TASK,
    DETECTION_QUEUE,
    QUEUES,
    ROUTES,
    TRAIN_MANY_TASK,
    TRAIN_TASK,
)
from pynomaly_workers.domain.lanes import PoolLayout, pool_layout
from pynomaly_workers.settings import REDIS_SCHEMES, Settings, get_settings

SENT_AT_HEADER = "sent_at"
"""Message header: Unix seconds when the job was published. Optional for publishers in
other languages; without it that job's queue wait is not observed."""


def stamp_sent_at(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """``before_task_publish``: record when a message was published, unless the
    publisher already did."""
    if headers is not None:
        headers.setdefault(SENT_AT_HEADER, time.time())


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings derived from ours (publishing clients use the same)."""
    return {
        "broker_url": settings.broker_url,
        "broker_transport": transport_name(settings.broker_url),
        "result_backend": settings.resolved_result_backend,
        "broker_transport_options": broker_options(settings),
        "broker_use_ssl": tls_options(settings.broker_url),
        "redis_backend_use_ssl": tls_options(settings.resolved_result_backend),
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_queues": declared_queues(settings),
        "task_default_queue": DETECTION_QUEUE,
        "task_default_exchange": default_exchange(settings).name,
        "task_default_exchange_type": default_exchange(settings).type,
        "task_default_routing_key": DETECTION_QUEUE,
        "task_routes": ROUTES,
        # A task is acknowledged after it finishes, and requeued if its process dies,
        # so a crash mid-job redelivers it; job_id makes the second run harmless.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Micro-batching holds deliveries unacknowledged while a batch fills, so a worker
        # process needs room for a few batches in flight.
        "worker_prefetch_multiplier": settings.prefetch_multiplier,
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        "task_track_started": True,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        # Results hold the job summary only (never the kwargs: records can be 100k rows)
        # and expire after PYNOMALY_RESULT_TTL_SECONDS; the job record is the durable copy.
        "result_expires": settings.result_ttl_seconds,
        "result_extended": False,
        # Each worker also consumes its own queue, so a canary can prove *that* worker.
        "worker_direct": True,
        "enable_utc": True,
        "timezone": "UTC",
        # One process per core, plus one for the small lane (workers/lanes.py).
        "worker_concurrency": default_concurrency(settings, QUEUES),
        "worker_max_memory_per_child": settings.worker_max_memory_mb * 1024 or None,
        "worker_hijack_root_logger": False,
        **amqp_config(settings),
    }


def default_exchange(settings: Settings) -> Exchange:
    """The exchange the workers and clients publish through: on RabbitMQ the topic
    exchange every contract queue is bound to by its name (native delayed delivery, for
    retries with a countdown on quorum queues, cannot route through a direct one); on
    Redis and the embedded broker the detection queue's direct exchange."""
    if settings.is_amqp:
        return Exchange(ROUTING_EXCHANGE, type="topic")
    return Exchange(DETECTION_QUEUE, type="direct")


def cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def layout_for(queues: Sequence[str], *, concurrency: int) -> PoolLayout:
    """The pool of a worker consuming ``queues`` (``concurrency`` 0 = choose)."""
    return pool_layout(cores=cores(), concurrency=concurrency, small_lane=DETECTION_QUEUE in queues)


def default_concurrency(settings: Settings, queues: Sequence[str]) -> int:
    """Pool processes of a worker consuming ``queues``: ``PYNOMALY_WORKER_CONCURRENCY``,
    or one per core plus one kept for small detection jobs (``domain.lanes``)."""
    return layout_for(queues, concurrency=settings.worker_concurrency).processes


def declared_queues(settings: Settings) -> tuple[Queue, ...]:
    """The contract's queues (public and internal). On RabbitMQ durable quorum queues,
    each bound to the direct exchange of its name, as a producer with Celery's defaults
    declares it, and to the workers' topic exchange (``adapters.amqp_topology``);
    elsewhere one direct exchange each."""
    if settings.is_amqp:
        return tuple(contract_queue(name) for name in ALL_QUEUES)
    return tuple(Queue(n, Exchange(n, type="direct"), routing_key=n) for n in ALL_QUEUES)


def amqp_config(settings: Settings) -> dict[str, Any]:
    """RabbitMQ only: per-consumer prefetch, since quorum queues refuse a channel-wide
    (global) QoS, and delayed retries through quorum queues instead of prefetch."""
    if not settings.is_amqp:
        return {}
    return {
        "worker_detect_quorum_queues": True,
        "broker_native_delayed_delivery_queue_type": "quorum",
    }


def transport_name(broker_url: str) -> str | None:
    """Our hardened transports for ``redis://``, ``rediss://`` and ``filesystem://``;
    kombu's otherwise.

    The Redis one is installed under kombu's own alias (``redis`` / ``rediss``): the
    connection then still calls itself ``redis://`` (Flower picks its Broker page's client
    from that scheme, and a module path there reads "broker is not supported").
    """
    from kombu import transport as kombu_transport

    from pynomaly_workers.adapters.broker import FILESYSTEM_TRANSPORT, TRANSPORT

    if broker_url.startswith(REDIS_SCHEMES):
        alias = broker_url.split("://", 1)[0]
        if kombu_transport.TRANSPORT_ALIASES.get(alias) != TRANSPORT:
            kombu_transport.TRANSPORT_ALIASES[alias] = TRANSPORT
            kombu_transport._transport_cache.pop(alias, None)  # type: ignore[attr-defined]
        return alias
    return FILESYSTEM_TRANSPORT if broker_url.startswith("filesystem://") else None


def tls_options(url: str) -> dict[str, Any] | None:
    """TLS for a ``rediss://`` URL: verify the server's certificate unless the URL says
    otherwise (its ``ssl_cert_reqs``, ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``
    parameters win). Naming our transport class instead of the ``rediss`` scheme would
    otherwise turn TLS off, and kombu's own default for a bare ``rediss://`` is not to
    verify the certificate."""
    if not url.startswith("rediss://"):
        return None
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def broker_options(settings: Settings) -> dict[str, Any]:
    """Transport options: the embedded broker's folders, RabbitMQ's publisher confirms, or
    Redis's visibility timeout."""
    if settings.is_amqp:
        # Each publish (clients, and workers fanning out chunks or retrying) waits for
        # the broker's confirm: a job is accepted once RabbitMQ has it on a quorum of
        # nodes, and a publish the broker refuses raises instead of vanishing.
        return {"confirm_publish": True}
    if settings.is_embedded:
        folder = settings.broker_folder
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "data_folder_processed": str(folder / "processed"),
            # Exchange tables; kombu's default is ./control in whatever directory the
            # process runs in, where a stale table from another setup would misroute.
            "control_folder": str(folder / "control"),
            "store_processed": False,
            "polling_interval": 0.05,
        }
    return {
        # Longer than the hard time limit, or Redis would hand a long job to a second worker.
        "visibility_timeout": settings.visibility_timeout,
        # Messages a dead worker held come back once they are older than the visibility
        # timeout, at the next scan of the unacked hash. kombu scans on every 10th 10 s
        # tick and lets a crashed scanner's lock block the others for 5 minutes; scan
        # every tick (one ZRANGE) and hold the lock at most 30 s.
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": 30,
        # A consumer silent this long is dead: what it held is requeued (redis_transport).
        "consumer_dead_after": settings.consumer_dead_after_seconds,
    }


def create_app(settings: Settings) -> Celery:
    """A configured Celery app for ``settings``, with every task defined on it."""
    from pynomaly_workers.schedules import beat_config
    from pynomaly_workers.tasks import detection, health, maintenance, training

    application = Celery("pynomaly_workers", set_as_current=False)
    application.conf.update(celery_config(settings))
    application.conf.update(beat_config(settings))
    for module in (detection, training, maintenance, health):
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


LARGE_TASKS = frozenset({DETECT_CHUNK_TASK, TRAIN_TASK, TRAIN_MANY_TASK})
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
