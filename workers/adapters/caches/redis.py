"""The prediction cache on Redis: plain 8-byte floats under content-addressed keys.

Key: ``pyn:s:<model content hash>:<blake2b of the row's float64 bytes>``. A new model
version has a new content hash, so it can never read an old version's scores. Values are
IEEE-754 doubles, never pickles. Run the cache instance with ``maxmemory`` and
``allkeys-lru``; never point it at the broker, which needs ``noeviction``.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import redis

from pynomaly_workers.domain.records import Matrix
from pynomaly_workers.domain.scoring import Scores

_DOUBLE = struct.Struct("<d")


def row_keys(model_hash: str, matrix: Matrix) -> list[bytes]:
    """One key per row, from the model hash and the row's canonical float64 bytes."""
    prefix = f"pyn:s:{model_hash[:32]}:".encode()
    rows = np.ascontiguousarray(matrix, dtype="<f8")
    return [prefix + hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows]


class RedisPredictionCache:
    """Pipelined MGET / SET EX against one Redis."""

    def __init__(self, client: redis.Redis, *, ttl_seconds: int) -> None:
        self.client = client
        self.ttl_seconds = ttl_seconds

    @classmethod
    def from_url(cls, url: str, *, ttl_seconds: int) -> RedisPredictionCache:
        """A cache on its own connection pool (create it after fork)."""
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        return cls(client, ttl_seconds=ttl_seconds)

    def get_many(self, model_hash: str, matrix: Matrix) -> Scores:
        keys = row_keys(model_hash, matrix)
        values = self.client.mget(keys) if keys else []
        scores = np.full(len(keys), np.nan)
        for i, value in enumerate(values):
            if isinstance(value, bytes) and len(value) == _DOUBLE.size:
                scores[i] = _DOUBLE.unpack(value)[0]
        return scores

    def set_many(self, model_hash: str, matrix: Matrix, scores: Scores) -> None:
        keys = row_keys(model_hash, matrix)
        with self.client.pipeline(transaction=False) as pipe:
            for key, score in zip(keys, scores.tolist(), strict=True):
                pipe.set(key, _DOUBLE.pack(score), ex=self.ttl_seconds)
            pipe.execute()

    def close(self) -> None:
        self.client.close()

    def stats(self) -> dict[str, float]:
        """The cache server's INFO figures operators watch: memory against its limit,
        evictions, and hits/misses (server-wide: run the cache on its own Redis)."""
        memory = self.client.info("memory")
        counters = self.client.info("stats")
        hits, misses = float(counters["keyspace_hits"]), float(counters["keyspace_misses"])
        return {
            "used_memory_bytes": float(memory["used_memory"]),
            "maxmemory_bytes": float(memory.get("maxmemory", 0)),
            "evicted_keys": float(counters["evicted_keys"]),
            "expired_keys": float(counters["expired_keys"]),
            "keyspace_hits": hits,
            "keyspace_misses": misses,
            "hit_ratio": hits / (hits + misses) if hits + misses else 0.0,
        }
