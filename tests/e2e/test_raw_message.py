"""The raw message the README documents for non-Python producers, pushed with plain Redis."""

from __future__ import annotations

import base64
import json
import pickle
import re
import urllib.request
import uuid
from typing import Any

import hypothesis as hyp
import pytest
import redis

from pynomaly_workers.contract import DETECTION_QUEUE
from pynomaly_workers.demo import WorkerProcess, wait_for
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.services.health import check_health
from tests.e2e.conftest import BROKER_DB, redis_db
from tests.e2e.test_worker import wait_job
from tests.factories import rows_with_outliers
from tests.strategies import raw_items

pytestmark = pytest.mark.e2e


def raw_detect_message(kwargs: dict[str, Any]) -> bytes:
    """Celery message protocol 2 as the Redis transport stores it (README, any language)."""
    task_id = str(uuid.uuid4())
    body = [[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    envelope = {
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": "pynomaly.detect",
            "id": task_id,
            "root_id": task_id,
            "parent_id": None,
            "group": None,
            "retries": 0,
            "eta": None,
            "expires": None,
        },
        "properties": {
            "correlation_id": task_id,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": "detection"},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope).encode()


@pytest.fixture
def trained_model(worker: WorkerProcess, e2e_adapters: Adapters) -> str:
    from tests.factories import train

    return train(e2e_adapters, model="raw").label


def test_a_message_pushed_with_lpush_is_consumed(
    trained_model: str, e2e_adapters: Adapters
) -> None:
    # Given a producer that only speaks Redis
    client = redis.Redis.from_url(redis_db(BROKER_DB))

    # When it LPUSHes the documented JSON envelope onto the 'detection' list
    client.lpush(
        "detection",
        raw_detect_message(
            {"job_id": "raw-1", "model": trained_model, "records": rows_with_outliers()}
        ),
    )
    client.close()

    # Then a worker runs the job like any other
    job = wait_job(e2e_adapters, "raw-1")
    assert job.status == "succeeded", job.error
    assert job.n_records == 200


MALFORMED = [
    b"{not json",
    b"[1, 2]",
    b"{}",
    b'{"body": "!!", "properties": {"body_encoding": "base64", "delivery_tag": "t",'
    b' "delivery_info": {"exchange": "", "routing_key": "detection"}}}',
    raw_detect_message({"model": "x"}).replace(b'"body": "', b'"body": "bm90IGpzb24=', 1),
]


def test_malformed_messages_are_dropped_without_killing_the_worker(
    trained_model: str, e2e_adapters: Adapters, worker: WorkerProcess
) -> None:
    # Given garbage of every kind ahead of a good message on the queue
    client = redis.Redis.from_url(redis_db(BROKER_DB))
    for garbage in MALFORMED:
        client.lpush("detection", garbage)
    client.lpush(
        "detection",
        raw_detect_message(
            {"job_id": "raw-2", "model": trained_model, "records": [[0.0, 0.0, 0.0, 0.0]]}
        ),
    )
    client.close()

    # When the worker reaches them, Then it drops them and goes on to the good one
    job = wait_job(e2e_adapters, "raw-2")

    assert job.status == "succeeded"
    # and it keeps consuming: a canary sent after the garbage round-trips
    report = check_health(e2e_adapters, queues=[DETECTION_QUEUE], timeout=30)
    assert report["ok"], report
    assert worker.alive()
    # and operators see the drops counted
    port = e2e_adapters.settings.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    dropped = re.search(r"^pynomaly_malformed_messages_dropped_total (\S+)$", body, re.MULTILINE)
    assert dropped is not None
    assert float(dropped.group(1)) >= 3


def _generated_garbage(count: int) -> list[bytes]:
    """``count`` distinct items from :data:`tests.strategies.raw_items`, the same every run
    (derandomized), so a failure here reproduces."""
    items: list[bytes] = []

    @hyp.settings(
        max_examples=count,
        derandomize=True,
        database=None,
        phases=[hyp.Phase.generate],
        suppress_health_check=list(hyp.HealthCheck),
    )
    @hyp.given(raw_items)
    def collect(item: bytes) -> None:
        items.append(item)

    collect()
    return items


def test_generated_bad_messages_leave_the_worker_consuming(
    trained_model: str, e2e_adapters: Adapters, worker: WorkerProcess
) -> None:
    # Given a hundred generated bad messages (bytes, JSON of any shape, envelopes with one
    # part damaged, detect messages with wrong kwargs) pushed raw onto the detection list
    garbage = _generated_garbage(100)
    client = redis.Redis.from_url(redis_db(BROKER_DB))
    for item in garbage:
        client.lpush(DETECTION_QUEUE, item)
    # and a good job behind them
    client.lpush(
        DETECTION_QUEUE,
        raw_detect_message(
            {"job_id": "raw-after-fuzz", "model": trained_model, "records": [[0.0] * 4]}
        ),
    )
    client.close()

    # When the worker works through them, Then the good job succeeds
    job = wait_job(e2e_adapters, "raw-after-fuzz", timeout=20)
    assert job.status == "succeeded", job.error
    # and a canary sent afterwards round-trips through the same process
    report = check_health(e2e_adapters, queues=[DETECTION_QUEUE], timeout=10)
    assert report["ok"], report
    assert worker.alive()
    # and no dropped message waits in the unacked hash to come back after the visibility
    # timeout
    client = redis.Redis.from_url(redis_db(BROKER_DB))
    assert wait_for(lambda: client.hlen("unacked") == 0, timeout=5), client.hkeys("unacked")
    client.close()


def test_a_pickled_message_is_refused_and_never_runs(
    trained_model: str, e2e_adapters: Adapters, worker: WorkerProcess
) -> None:
    # Given a detect message serialized with pickle (a harmless dict here; a crafted one
    # would run code on unpickling), pushed raw like any other
    envelope = json.loads(
        raw_detect_message({"job_id": "pickled", "model": trained_model, "records": [[0.0] * 4]})
    )
    body = [[], {"job_id": "pickled", "model": trained_model, "records": [[0.0] * 4]}, {}]
    envelope["body"] = base64.b64encode(pickle.dumps(body)).decode()
    envelope["content-type"] = "application/x-python-serialize"
    envelope["content-encoding"] = "binary"
    client = redis.Redis.from_url(redis_db(BROKER_DB))
    client.lpush(DETECTION_QUEUE, json.dumps(envelope))
    client.close()

    # When a canary sent after it round-trips (so the worker has dealt with it)
    report = check_health(e2e_adapters, queues=[DETECTION_QUEUE], timeout=30)

    # Then the pickled job was never run: only JSON is accepted
    assert report["ok"], report
    assert e2e_adapters.store.get_job("pickled") is None
    assert worker.alive()
