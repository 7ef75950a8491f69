"""Scenario 6: poison messages, on Redis and on RabbitMQ. Each bad message ends as a
``failed`` job with a reason (or, when it is not even a message, is logged and dropped),
is never retried, and the worker keeps consuming: a canary sent after each one completes.

Raw messages are published as a producer in another language would: LPUSH onto the
Redis list, or ``basic.publish`` to the queue's exchange on RabbitMQ."""

from __future__ import annotations

import json
import math
import time
import uuid
from typing import Any

import pytest
import redis
from kombu import Connection

from pynomaly_workers.client import submit_detection
from pynomaly_workers.demo import wait_for
from tests.e2e.test_raw_message import raw_detect_message
from tests.factories import rows_with_outliers, train
from tests.faults.conftest import (
    BROKERS,
    FaultBroker,
    FaultStack,
    RedisServer,
    count_jobs,
    report_outcome,
    scrape,
    wait_settled,
)

pytestmark = pytest.mark.e2e

MAX_RECORDS = 500
ROWS = rows_with_outliers(n=20, outliers=(3,))

# job_id suffix -> (kwargs besides job_id, error type, words the reason must contain)
POISON: dict[str, tuple[dict[str, Any], str, tuple[str, ...]]] = {
    "wrong-kwargs": ({"model": "{model}", "rows": ROWS}, "invalid_message", ("rows",)),
    "no-model": ({"records": ROWS}, "invalid_message", ("model",)),
    "huge": (
        {"model": "{model}", "records": [[0.0] * 4] * (MAX_RECORDS + 1)},
        "payload_too_large",
        (str(MAX_RECORDS), "'source'"),
    ),
    "unknown-model": ({"model": "no-such-model", "records": ROWS}, "unknown_model", ("train",)),
    "wrong-width": ({"model": "{model}", "records": [[1.0, 2.0]]}, "invalid_records", ("2", "4")),
    "nan": ({"model": "{model}", "records": [[math.nan, 0, 0, 0]]}, "invalid_records", ("NaN",)),
}


# What each broker's worker logs when it drops a message that is not a task message.
DROPPED = {
    "redis": ("dropped a malformed", "dropped a malformed"),
    "rabbitmq": ("Can't decode message body", "Received and deleted unknown message"),
}
GARBAGE = (b"{not json", b'["a list, not an envelope"]')


def dropped_logged(log: str, kind: str) -> int:
    """Messages the worker logged as dropped: one line per message."""
    return sum(log.count(line) for line in set(DROPPED[kind]))


def lpush(server: RedisServer, payload: bytes) -> None:
    client = redis.Redis(port=server.port)
    try:
        client.lpush("detection", payload)
    finally:
        client.close()


def amqp_publish(broker: FaultBroker, body: bytes, headers: dict[str, Any] | None) -> None:
    """``basic.publish`` to the detection exchange, with publisher confirms."""
    with Connection(broker.broker_url, transport_options={"confirm_publish": True}) as conn:
        conn.Producer().publish(
            body,
            exchange="detection",
            routing_key="detection",
            content_type="application/json",
            content_encoding="utf-8",
            headers=headers or {},
            delivery_mode=2,
        )


def send_garbage(broker: FaultBroker, payload: bytes) -> None:
    """A message that is not a task message at all."""
    if isinstance(broker, RedisServer):
        lpush(broker, payload)
    else:
        amqp_publish(broker, payload, None)


def send_raw_job(broker: FaultBroker, kwargs: dict[str, Any]) -> None:
    """A ``pynomaly.detect`` message built by hand (Celery protocol 2)."""
    if isinstance(broker, RedisServer):
        lpush(broker, raw_detect_message(kwargs))
        return
    task_id = str(uuid.uuid4())
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    headers = {"lang": "py", "task": "pynomaly.detect", "id": task_id, "root_id": task_id}
    amqp_publish(broker, json.dumps([[], kwargs, embed]).encode(), headers)


def with_model(kwargs: dict[str, Any], model: str) -> dict[str, Any]:
    return {k: (model if v == "{model}" else v) for k, v in kwargs.items()}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("broker", BROKERS, indirect=True)
def test_poison_messages_fail_once_with_a_reason_and_the_worker_keeps_consuming(
    fault_stack: FaultStack, broker: FaultBroker
) -> None:
    # Given a worker with a payload limit of 500 records
    fault_stack.env["PYNOMALY_MAX_RECORDS_PER_JOB"] = str(MAX_RECORDS)
    metrics_port = fault_stack.serve_metrics()
    model = train(fault_stack.adapters, model="poison").label
    fault_stack.start_worker()
    canaries: list[str] = []
    started = time.monotonic()

    def canary_completes(after: str) -> None:
        job_id = f"poison-canary-after-{after}"
        canaries.append(job_id)
        submit_detection(model=model, records=ROWS, job_id=job_id, app=fault_stack.app)
        done = wait_settled(fault_stack.adapters, [job_id], timeout=30)
        assert done.succeeded() == {job_id}, f"after {after}:\n{fault_stack.log_text()}"

    # When a message that is not JSON, and one that is JSON but no envelope, arrive
    for garbage, after in zip(GARBAGE, ("not-json", "not-an-envelope"), strict=True):
        send_garbage(broker, garbage)
        canary_completes(after)

    # ... and each kind of bad job, each followed by a canary
    sent = []
    for name, (kwargs, _, _) in POISON.items():
        sent.append(f"poison-{name}")
        send_raw_job(broker, {"job_id": sent[-1], **with_model(kwargs, model)})
        canary_completes(name)

    # Then each bad job failed once, with its reason, and nothing is left to redeliver;
    # the drops are what the worker counted (Redis: its metric; RabbitMQ, where Celery
    # drops them before any code of ours sees them: its log lines)
    counts = count_jobs(fault_stack.adapters, sent)
    log = fault_stack.log_text(tail=None)
    metric = scrape(metrics_port, "pynomaly_malformed_messages_dropped_total")
    logged = dropped_logged(log, broker.kind)
    dropped = (None if metric is None else int(metric)) if broker.kind == "redis" else logged
    report_outcome(
        f"poison_{broker.kind}",
        [*sent, *canaries],
        count_jobs(fault_stack.adapters, [*sent, *canaries]),
        recovery_seconds=None,
        extra={"malformed_dropped": dropped, "seconds": round(time.monotonic() - started, 1)},
    )
    assert dropped == logged == len(GARBAGE), f"metric {metric}, logged {logged}\n{log}"
    assert counts.failed() == set(sent), counts.status
    for name, (_, error_type, words) in POISON.items():
        job = fault_stack.adapters.store.get_job(f"poison-{name}")
        assert job is not None
        assert job.error_type == error_type, (name, job.error)
        assert all(word in (job.error or "") for word in words), (name, job.error)
        assert job.attempts <= 1, (name, job.attempts)
    # (the last canary's acknowledgement may still be on its way)
    assert wait_for(broker.drained, timeout=30), broker.state()
    for line in set(DROPPED[broker.kind]):
        assert log.count(line) == DROPPED[broker.kind].count(line), log
    assert all(w.alive() for w in fault_stack.workers)
