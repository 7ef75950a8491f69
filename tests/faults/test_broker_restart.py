"""Scenario 3: the broker restarts while detection jobs are in flight: Redis (AOF on)
shut down and started again, or RabbitMQ's ``stop_app`` / ``start_app``.

Consumption must resume on its own: a canary job sent after the restart completes, and
every job sent before, during and after it ends ``succeeded`` with one row and one set
of anomalies.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Message, Producer, Queue

from pynomaly_workers.adapters.broker import TRANSPORT, acknowledge_all
from pynomaly_workers.client import submit_detection
from pynomaly_workers.demo import wait_for
from tests.factories import rows_with_outliers, train
from tests.faults.conftest import (
    FaultBroker,
    FaultStack,
    RedisServer,
    count_jobs,
    report_outcome,
    wait_settled,
)

pytestmark = pytest.mark.e2e

ROWS = rows_with_outliers(n=20, outliers=(3,))


def send(stack: FaultStack, model: str, job_ids: list[str]) -> None:
    for job_id in job_ids:
        submit_detection(model=model, records=ROWS, job_id=job_id, app=stack.app)


def held_by_worker(server: FaultBroker, n: int) -> bool:
    """True when the worker has taken ``n`` messages and acknowledged none of them."""
    return server.state() == {"queued": 0, "unacked": n}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
@pytest.mark.parametrize(
    ("half", "hold"),
    [
        # A batch window of 3 s: the restart hits while all ten jobs sit in the batch
        # buffer and the flush timer is armed. Stalls if the timer is not re-armed or the
        # buffered deliveries are not handed back.
        pytest.param(10, True, id="20-jobs-buffered"),
        # 300 jobs streaming: batches are queued for the pool at the restart. Stalls if
        # the pool's discarded batches are not handed back.
        pytest.param(150, False, id="300-jobs-streaming", marks=pytest.mark.slow),
    ],
)
def test_consumption_resumes_after_a_broker_restart_and_nothing_is_lost(
    fault_stack: FaultStack, broker: FaultBroker, half: int, hold: bool
) -> None:
    # Given a worker busy with small detection jobs on a dedicated broker
    if hold:
        # rabbitmqctl answers in about a second (redis-cli in a millisecond): a longer
        # window, so the restart still hits while the jobs sit in the buffer
        window = "3000" if broker.kind == "redis" else "10000"
        fault_stack.env["PYNOMALY_BATCH_MAX_WAIT_MS"] = window
        # and the batch waits for that window even while a pool process is idle
        fault_stack.env["PYNOMALY_BATCH_EAGER"] = "false"
    model = train(fault_stack.adapters, model="restart").label
    fault_stack.start_worker()
    before = [f"restart-{half}-a-{i}" for i in range(half)]
    send(fault_stack, model, before)
    if hold:
        assert wait_for(lambda: held_by_worker(broker, half), timeout=30, interval=0.02)
    else:
        assert wait_for(
            lambda: len(count_jobs(fault_stack.adapters, before).succeeded()) >= 10, timeout=60
        ), fault_stack.log_text()
        # Restart once the worker holds every message (batches in flight and queued for
        # the pool), not while a BRPOP answer is on the wire: that one message kombu's
        # Redis transport cannot save (README).
        assert wait_for(lambda: broker.state()["queued"] == 0, timeout=60)

    # When the broker shuts down and comes back with its AOF, and jobs keep coming
    broker.restart()
    back_at = time.monotonic()
    canary = f"restart-{half}-canary"
    send(fault_stack, model, [canary])
    after = [f"restart-{half}-b-{i}" for i in range(half)]
    send(fault_stack, model, after)

    # Then a job sent after the restart completes: the worker consumes again ...
    canary_done = wait_settled(fault_stack.adapters, [canary], timeout=60)
    recovery = time.monotonic() - back_at
    assert canary_done.succeeded() == {canary}, fault_stack.log_text()
    # ... and every job ends succeeded, settled once, with the anomaly rows it counted
    everything = [*before, canary, *after]
    counts = wait_settled(fault_stack.adapters, everything, timeout=120)
    wait_for(broker.drained, timeout=30)
    ack_lost = broker.unacked_job_ids()
    report_outcome(
        f"broker_restart_{2 * half}_jobs_{broker.kind}",
        everything,
        counts,
        recovery_seconds=recovery,
        extra={"acks_lost_in_outage": len(ack_lost)},
    )
    assert counts.succeeded() == set(everything), (
        f"{len(everything) - len(counts.succeeded())} of {len(everything)} jobs did not "
        f"succeed (e.g. {sorted(set(everything) - counts.succeeded())[:10]}); broker holds "
        f"{broker.state()}\n{fault_stack.log_text()}"
    )
    assert counts.duplicated() == set()
    # Nothing is left to redeliver, except a message whose job finished while the broker
    # was down: its acknowledgement was lost with the connection, so Redis hands it out
    # again after the visibility timeout and the worker answers with the stored outcome.
    assert broker.state()["queued"] == 0
    assert set(ack_lost) <= counts.succeeded(), ack_lost
    if hold:
        assert not ack_lost  # nothing finished during the outage
    assert set(counts.attempts.values()) == {1}  # each settled once: a redelivery changed nothing
    assert all(counts.anomaly_rows[j] >= 1 for j in everything)  # the outlier at row 3
    assert all(w.alive() for w in fault_stack.workers)
    # Held deliveries are handed back without errors (on RabbitMQ the broker requeued
    # them as their channel closed; a reject over that channel would only fail)
    assert "Couldn't reject" not in fault_stack.log_text()


def test_a_task_settled_after_its_channel_closed_on_a_dead_broker_does_not_kill_the_consumer(
    broker_redis: RedisServer,
) -> None:
    # Given three deliveries, and the broker gone before their channel closes (a
    # consumer restart: kombu's restore of the unacked messages fails, its pool dropped)
    queue = Queue("settle-after-close", Exchange("settle-after-close"), routing_key="s")
    connection = Connection(broker_redis.url, transport=TRANSPORT)
    with connection.channel() as publishing:
        producer = Producer(publishing)
        for n in range(3):
            producer.publish({"n": n}, exchange=queue.exchange, routing_key="s", declare=[queue])
    channel: Any = connection.channel()
    received: list[Message] = []
    consumer = Consumer(channel, [queue], callbacks=[lambda _b, m: received.append(m)])
    consumer.qos(prefetch_count=3)
    consumer.consume()
    while len(received) < 3:
        connection.drain_events(timeout=2)
    broker_redis.shutdown()
    with contextlib.suppress(Exception):
        channel.close()
    connection.release()
    channel._pool = None  # as kombu leaves it once it disconnected the closed channel
    broker_redis.start()

    # When the tasks end and their messages are acknowledged or rejected over it
    received[0].ack()
    received[1].reject(requeue=False)
    acknowledge_all([_Request(received[2])])

    # Then nothing raised (kombu's AttributeError used to stop the worker: "Unrecoverable
    # error"), and the messages wait in the unacked hash for their redelivery
    client = redis.Redis.from_url(broker_redis.url)
    try:
        assert client.hlen("unacked") == 3
    finally:
        client.close()


class _Request:
    """What acknowledge_all reads of a Celery request."""

    def __init__(self, message: Message) -> None:
        self.message = message
        self.acknowledged = False
