"""The Celery configuration derived from the settings: transports, TLS, queues, routes,
pool layout, and the header that stamps when a message was sent.

The bottom of the Celery wiring: it imports the settings and the contract, never the app,
the tasks or the schedule, so every layer above (the publishing client, the probes, the
schedule, observability, the tasks and, on top, the app factory in ``celery_app``) can
import it without a cycle. Nothing happens at import.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Sequence
from typing import Any

from kombu import Exchange, Queue

from pynomaly_workers.adapters.amqp_topology import ROUTING_EXCHANGE, contract_queue
from pynomaly_workers.contract import ALL_QUEUES, DETECTION_QUEUE, QUEUES, ROUTES
from pynomaly_workers.domain.lanes import PoolLayout, pool_layout
from pynomaly_workers.settings import REDIS_SCHEMES, Settings

SENT_AT_HEADER = "sent_at"
"""Message header: Unix seconds when the job was published. Optional for publishers in
other languages; without it that job's queue wait is not observed."""


def stamp_sent_at(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """``before_task_publish``: record when a message was published, unless the
    publisher already did."""
    if headers is not None:
        headers.setdefault(SENT_AT_HEADER, time.time())


PREFORK_POOL = "pynomaly_workers.pool:TaskPool"
"""The pool a worker runs unless told otherwise (``--pool prefork`` means it too)."""


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
        # Celery's prefork pool, without its 30 s stall at a warm shutdown (workers/pool.py).
        "worker_pool": PREFORK_POOL,
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
