"""JSON only, end to end: messages and results are JSON (pickle is refused), and the
prediction cache holds plain 8-byte floats, never a pickle."""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np
import pytest
import redis

from pynomaly_workers.adapters.caches.redis import RedisPredictionCache, row_keys
from pynomaly_workers.celery_app import celery_config
from pynomaly_workers.settings import Settings

pytestmark = pytest.mark.integration


def test_messages_and_results_are_json_only(make_settings: Callable[..., Settings]) -> None:
    config = celery_config(make_settings(broker_url="redis://127.0.0.1:6390/0"))

    assert config["task_serializer"] == config["result_serializer"] == "json"
    assert config["accept_content"] == config["result_accept_content"] == ["json"]


def test_cache_values_are_eight_byte_floats(redis_url: str) -> None:
    # Given scores written through the cache
    cache = RedisPredictionCache.from_url(redis_url, ttl_seconds=60)
    matrix = np.array([[1.0, 2.0], [3.0, 4.0]])
    cache.set_many("hash-1", matrix, np.array([0.25, -1.5]))
    cache.close()

    # When Redis is read directly, Then each value is one packed double, nothing else
    client = redis.Redis.from_url(redis_url)
    raw = client.mget(row_keys("hash-1", matrix))
    client.close()
    assert all(isinstance(value, bytes) and len(value) == 8 for value in raw), raw
    assert [struct.unpack("<d", value) for value in raw if isinstance(value, bytes)] == [
        (0.25,),
        (-1.5,),
    ]
