"""How many messages wait in each broker queue: Redis lists (as kombu stores them), or
RabbitMQ queues (their ready-message count)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import redis

from pynomaly_workers.settings import Settings


class QueueDepth(Protocol):
    """Messages waiting (not yet delivered to a consumer) per broker queue."""

    def lengths(self, queues: Sequence[str]) -> dict[str, int]:
        """Waiting messages per queue."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
"""kombu's Redis transport keeps a queue's messages of priority step ``p > 0`` in the list
``<queue>\\x06\\x16<p>`` (its default ``priority_steps``); bulk chunks use them."""


def priority_lists(queue: str) -> list[str]:
    """The Redis lists that hold ``queue``'s messages, highest priority first."""
    return [queue if p == 0 else f"{queue}{PRIORITY_SEPARATOR}{p}" for p in PRIORITY_STEPS]


class RedisQueueDepth:
    """``LLEN`` of each queue's lists (one per priority step) on the broker Redis."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    def lengths(self, queues: Sequence[str]) -> dict[str, int]:
        """Waiting messages per queue (one round trip)."""
        pipe = self._client.pipeline(transaction=False)
        for queue in queues:
            for key in priority_lists(queue):
                pipe.llen(key)
        counts = iter(pipe.execute())
        return {queue: sum(int(next(counts)) for _ in PRIORITY_STEPS) for queue in queues}

    def close(self) -> None:
        """Release the connection."""
        self._client.close()


class AmqpQueueDepth:
    """Ready messages of each RabbitMQ queue, from a passive ``queue.declare`` (no
    management plugin needed). Delivered but unacknowledged messages are not counted,
    as on Redis. A queue no worker has declared yet counts 0."""

    def __init__(self, url: str, *, timeout: float = 2.0) -> None:
        self._url = url
        self._timeout = timeout

    def lengths(self, queues: Sequence[str]) -> dict[str, int]:
        """Waiting messages per queue, over a connection opened for this sample (so a
        broker restart between samples needs no reconnect logic)."""
        from kombu import Connection

        with Connection(self._url, connect_timeout=self._timeout) as connection:
            connection.ensure_connection(max_retries=1, timeout=round(self._timeout))
            return {queue: _ready_messages(connection, queue) for queue in queues}

    def close(self) -> None:
        """Nothing stays open between samples."""


def _ready_messages(connection: object, queue: str) -> int:
    from amqp.exceptions import NotFound

    channel = connection.channel()  # type: ignore[attr-defined]
    try:
        return int(channel.queue_declare(queue=queue, passive=True).message_count)
    except NotFound:  # the 404 closed the channel; no worker declared the queue yet
        return 0
    finally:
        if channel.is_open:
            channel.close()


def queue_depth(settings: Settings) -> QueueDepth:
    """The depth reader for ``settings``' broker (Redis or RabbitMQ)."""
    if settings.is_amqp:
        return AmqpQueueDepth(settings.broker_url)
    if settings.is_redis:
        return RedisQueueDepth(settings.broker_url)
    scheme = settings.broker_url.split(":", 1)[0]
    raise ValueError(f"queue lengths are read from Redis or RabbitMQ only, not {scheme}")
