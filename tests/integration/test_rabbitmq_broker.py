"""The RabbitMQ broker configuration against the real local RabbitMQ, a vhost per test:
what publishing declares, publisher confirms, queue lengths, and delayed retries."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from amqp.exceptions import MessageNacked
from celery import Celery
from kombu import Connection, Exchange, Queue
from kombu.transport.native_delayed_delivery import (
    bind_queue_to_native_delayed_delivery_exchange,
    declare_native_delayed_delivery_exchanges_and_queues,
)

from pynomaly_workers.adapters.queues import AmqpQueueDepth
from pynomaly_workers.client import client_app, close_app, submit_detection
from pynomaly_workers.contract import DETECT_TASK, DETECTION_QUEUE, QUEUES
from pynomaly_workers.demo import wait_for
from pynomaly_workers.settings import Settings
from tests.rabbitmq import RabbitVhost

pytestmark = pytest.mark.integration

ROWS = [[0.0, 1.0], [1.0, 0.0]]


@pytest.fixture(scope="module")
def module_vhost() -> Iterator[RabbitVhost]:
    """A RabbitMQ vhost of this module's own, deleted afterwards (rabbitmqctl takes a
    second or two per call, so not one per test)."""
    created = RabbitVhost()
    yield created
    created.stop()


@pytest.fixture
def vhost(module_vhost: RabbitVhost) -> Iterator[RabbitVhost]:
    """The module's vhost, with the contract's queues emptied after each test."""
    yield module_vhost
    with Connection(module_vhost.broker_url) as connection:
        channel: Any = connection.channel()  # py-amqp's Channel (kombu types it loosely)
        for name in QUEUES:
            if AmqpQueueDepth(module_vhost.broker_url).lengths([name])[name]:
                channel.queue_purge(name)
        channel.close()


@pytest.fixture
def amqp_app(
    vhost: RabbitVhost, make_settings: Callable[..., Settings], redis_url: str
) -> Iterator[Celery]:
    """A publishing client on the vhost, results in the test Redis."""
    app = client_app(make_settings(broker_url=vhost.broker_url, result_backend=redis_url))
    yield app
    close_app(app)


def test_a_published_job_waits_in_a_durable_quorum_queue(
    vhost: RabbitVhost, amqp_app: Celery
) -> None:
    # When a client publishes three detection jobs
    for n in range(3):
        submit_detection(model="m", records=ROWS, job_id=f"q-{n}", app=amqp_app)

    # Then the detection queue is a durable quorum queue holding them, as the
    # queue-length sampler reads over AMQP
    detection = vhost.queues()[DETECTION_QUEUE]
    assert (detection["type"], detection["durable"]) == ("quorum", "true")
    lengths = AmqpQueueDepth(vhost.broker_url).lengths(QUEUES)
    assert lengths == {DETECTION_QUEUE: 3, "training": 0, "maintenance": 0}


def test_the_client_publishes_on_a_channel_in_confirm_mode(amqp_app: Celery) -> None:
    with amqp_app.producer_or_acquire() as producer:
        amqp_app.send_task(DETECT_TASK, kwargs={"model": "m", "records": ROWS}, producer=producer)
        channel = producer.channel
        # py-amqp switched the channel to confirm mode (confirm.select) at its first
        # publish, and each basic.publish waits for the broker's ack (raises on a nack)
        assert channel.connection.confirm_publish is True
        assert channel._confirm_selected is True


def test_a_publish_the_broker_refuses_raises_instead_of_vanishing(
    vhost: RabbitVhost, amqp_app: Celery
) -> None:
    # Given a quorum queue that refuses a second message (max length 1, reject-publish)
    full = Queue(
        "refusing",
        Exchange("refusing", type="topic"),
        routing_key="refusing",
        queue_arguments={
            "x-queue-type": "quorum",
            "x-max-length": 1,
            "x-overflow": "reject-publish",
        },
    )
    with amqp_app.producer_or_acquire() as producer:
        full(producer.channel).declare()
        producer.publish({"n": 0}, exchange="refusing", routing_key="refusing")

        # When the client's producer (publisher confirms on) keeps sending (a quorum
        # queue enforces its length one message late: it refuses the third)
        # Then the broker's basic.nack reaches the caller as an exception
        with pytest.raises(MessageNacked):  # noqa: PT012 (the loop is the action)
            for n in range(1, 5):
                producer.publish({"n": n}, exchange="refusing", routing_key="refusing")
    with Connection(vhost.broker_url) as connection:
        channel: Any = connection.channel()
        channel.queue_delete("refusing")
        channel.close()


def test_a_countdown_reaches_the_quorum_queue_through_native_delayed_delivery(
    vhost: RabbitVhost, amqp_app: Celery
) -> None:
    # Given the queues and delayed-delivery exchanges a worker declares (its
    # DelayedDelivery bootstep)
    with Connection(vhost.broker_url) as connection:
        for queue in amqp_app.amqp.queues.values():
            queue(connection.default_channel).declare()
        declare_native_delayed_delivery_exchanges_and_queues(connection, "quorum")
        for queue in amqp_app.amqp.queues.values():
            bind_queue_to_native_delayed_delivery_exchange(connection, queue)
    depth = AmqpQueueDepth(vhost.broker_url)

    # When a job is published with a 2 s countdown (what a retry with backoff does)
    amqp_app.send_task(DETECT_TASK, kwargs={"model": "m", "records": ROWS}, countdown=2)

    # Then it waits outside the detection queue, and arrives there after the countdown
    assert depth.lengths([DETECTION_QUEUE]) == {DETECTION_QUEUE: 0}
    assert wait_for(lambda: depth.lengths([DETECTION_QUEUE])[DETECTION_QUEUE] == 1, timeout=15)
