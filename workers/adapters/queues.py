"""How many messages wait in each broker queue (Redis lists, as kombu stores them)."""

from __future__ import annotations

from collections.abc import Sequence

import redis


class RedisQueueDepth:
    """``LLEN`` of each queue's list on the broker Redis."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    def lengths(self, queues: Sequence[str]) -> dict[str, int]:
        """Waiting messages per queue (one round trip)."""
        pipe = self._client.pipeline(transaction=False)
        for queue in queues:
            pipe.llen(queue)
        return {queue: int(n) for queue, n in zip(queues, pipe.execute(), strict=True)}

    def close(self) -> None:
        """Release the connection."""
        self._client.close()
