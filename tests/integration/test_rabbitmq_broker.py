"""The RabbitMQ broker configuration against the real local RabbitMQ, a vhost per test:
what publishing declares, what a producer with Celery's defaults can enqueue, publisher
confirms, queue lengths, delayed retries, and the exchanges of an earlier release."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from amqp.exceptions import MessageNacked, PreconditionFailed
from celery import Celery
from kombu import Connection, Exchange, Queue
from kombu.transport.native_delayed_delivery import (
    bind_queue_to_native_delayed_delivery_exchange,
    declare_native_delayed_delivery_exchanges_and_queues,
)

from pynomaly_workers.adapters.amqp_topology import ROUTING_EXCHANGE
from pynomaly_workers.adapters.queues import AmqpQueueDepth
from pynomaly_workers.client import client_app, close_app, submit_detection
from pynomaly_workers.contract import (
    ALL_QUEUES,
    DETECT_TASK,
    DETECTION_QUEUE,
    QUEUES,
    TRAIN_TASK,
    TRAINING_QUEUE,
)
from pynomaly_workers.demo import wait_for
from pynomaly_workers.settings import Settings
from tests.rabbitmq import QUORUM_PRODUCER, PlainProducer, RabbitVhost

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
        for name in ALL_QUEUES:
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
    assert lengths == {DETECTION_QUEUE: 3, "training": 0, "maintenance": 0, "notifications": 0}


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


def declare_as_a_worker(app: Celery, broker_url: str) -> None:
    """What a worker's consumer declares when it starts: every contract queue."""
    with Connection(broker_url) as connection:
        for queue in app.amqp.queues.values():
            queue(connection.default_channel).declare()


def enqueued(broker_url: str, queue: str, count: int) -> bool:
    """Wait until ``queue`` holds ``count`` ready messages (a plain producer publishes
    without confirms, so its message may still be on the wire when send_task returns)."""
    depth = AmqpQueueDepth(broker_url)
    try:
        return wait_for(lambda: depth.lengths([queue])[queue] == count, timeout=10)
    finally:
        depth.close()


def test_a_celery_producer_with_the_one_documented_setting_reaches_every_contract_queue(
    vhost: RabbitVhost, amqp_app: Celery
) -> None:
    # Given the queues a worker declared
    declare_as_a_worker(amqp_app, vhost.broker_url)
    # and an upstream Celery app with Celery's defaults and the setting docs/brokers.md gives
    producer = PlainProducer(vhost.broker_url, **QUORUM_PRODUCER)
    try:
        # When it sends by task name and queue name (what kombu then declares: a direct
        # exchange named like the queue, the quorum queue, the binding)
        for queue in ALL_QUEUES:
            producer.send(DETECT_TASK, kwargs={"model": "m", "records": ROWS}, queue=queue)
    finally:
        producer.close()

    # Then the broker accepted every declaration, and each message waits in its queue
    for queue in ALL_QUEUES:
        assert enqueued(vhost.broker_url, queue, 1), queue
    exchanges = vhost.exchanges()
    assert {name: exchanges[name] for name in ALL_QUEUES} == dict.fromkeys(
        ALL_QUEUES, ("direct", "true")
    )
    assert exchanges[ROUTING_EXCHANGE] == ("topic", "true")


def test_workers_start_on_the_queues_a_celery_producer_declared_first(
    make_settings: Callable[..., Settings], redis_url: str
) -> None:
    # Given a new vhost in which a producer (with the documented setting) declared the
    # queues before any worker ran
    vhost = RabbitVhost()
    try:
        producer = PlainProducer(vhost.broker_url, **QUORUM_PRODUCER)
        try:
            for queue in ALL_QUEUES:
                producer.send(DETECT_TASK, kwargs={"model": "m"}, queue=queue)
        finally:
            producer.close()
        assert enqueued(vhost.broker_url, DETECTION_QUEUE, 1)

        # When a worker declares its queues, Then the broker finds them equivalent
        app = client_app(make_settings(broker_url=vhost.broker_url, result_backend=redis_url))
        try:
            declare_as_a_worker(app, vhost.broker_url)
        finally:
            close_app(app)
        assert {vhost.queues()[q]["type"] for q in ALL_QUEUES} == {"quorum"}
    finally:
        vhost.stop()


def test_without_the_setting_the_broker_refuses_the_classic_queue_a_producer_declares(
    vhost: RabbitVhost, amqp_app: Celery
) -> None:
    # Given the workers' quorum queues, in a vhost whose default queue type is classic
    declare_as_a_worker(amqp_app, vhost.broker_url)
    producer = PlainProducer(vhost.broker_url)
    try:
        # When a producer with nothing but Celery's defaults sends, Then RabbitMQ refuses
        # the queue it declares (classic): the reason docs/brokers.md gives the setting
        with pytest.raises(PreconditionFailed, match="x-queue-type"):
            producer.send(DETECT_TASK, kwargs={"model": "m"}, queue=DETECTION_QUEUE)
    finally:
        producer.close()


def test_in_a_vhost_whose_default_queue_type_is_quorum_a_producer_needs_no_setting(
    make_settings: Callable[..., Settings], redis_url: str
) -> None:
    # Given a vhost created with --default-queue-type quorum, and the workers' queues
    vhost = RabbitVhost(default_queue_type="quorum")
    app = client_app(make_settings(broker_url=vhost.broker_url, result_backend=redis_url))
    try:
        declare_as_a_worker(app, vhost.broker_url)
        # When a producer with Celery's defaults only sends to each public queue
        producer = PlainProducer(vhost.broker_url)
        try:
            for queue in QUEUES:
                producer.send(DETECT_TASK, kwargs={"model": "m"}, queue=queue)
        finally:
            producer.close()
        # Then each message waits in its (quorum) queue
        for queue in QUEUES:
            assert enqueued(vhost.broker_url, queue, 1), queue
        assert {vhost.queues()[q]["type"] for q in QUEUES} == {"quorum"}
    finally:
        close_app(app)
        vhost.stop()


def migrate_broker(broker_url: str, result_backend: str) -> str:
    """``pynomaly-workers migrate --broker`` against ``broker_url``; what it printed."""
    env = {
        **os.environ,
        "PYNOMALY_BROKER_URL": broker_url,
        "PYNOMALY_RESULT_BACKEND": result_backend,
        "PYNOMALY_ENVIRONMENT": "test",
    }
    command = [sys.executable, "-m", "pynomaly_workers.cli", "migrate", "--broker"]
    done = subprocess.run(
        command, check=False, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_an_earlier_releases_topic_exchanges_are_kept_until_migrated(
    caplog: pytest.LogCaptureFixture, make_settings: Callable[..., Settings], redis_url: str
) -> None:
    # Given a vhost an earlier release set up: each queue bound to a topic exchange of
    # its own name, and a job waiting
    vhost = RabbitVhost()
    app = client_app(make_settings(broker_url=vhost.broker_url, result_backend=redis_url))
    try:
        with Connection(vhost.broker_url) as connection:
            for name in ALL_QUEUES:
                old = Queue(
                    name,
                    Exchange(name, type="topic"),
                    routing_key=name,
                    queue_arguments={"x-queue-type": "quorum"},
                )
                old(connection.default_channel).declare()
        submit_detection(model="m", records=ROWS, job_id="before", app=app)

        # When a worker of this release declares its queues, Then it does not fail, says
        # what to run, and its own publishes still arrive
        declare_as_a_worker(app, vhost.broker_url)
        assert "pynomaly-workers migrate --broker" in caplog.text
        submit_detection(model="m", records=ROWS, job_id="after", app=app)
        assert enqueued(vhost.broker_url, DETECTION_QUEUE, 2)
        # while a producer with Celery's defaults is refused
        producer = PlainProducer(vhost.broker_url, **QUORUM_PRODUCER)
        with pytest.raises(PreconditionFailed, match="'type'"):
            producer.send(DETECT_TASK, kwargs={"model": "m"}, queue=DETECTION_QUEUE)
        producer.close()

        # When the operator runs the migration
        done = migrate_broker(vhost.broker_url, redis_url)

        # Then each exchange is the direct one, the waiting jobs are still there, and the
        # producer's job arrives
        assert f"replaced with direct exchanges: {', '.join(ALL_QUEUES)}" in done
        assert {vhost.exchanges()[name][0] for name in ALL_QUEUES} == {"direct"}
        producer = PlainProducer(vhost.broker_url, **QUORUM_PRODUCER)
        producer.send(DETECT_TASK, kwargs={"model": "m"}, queue=DETECTION_QUEUE)
        producer.close()
        assert enqueued(vhost.broker_url, DETECTION_QUEUE, 3)
        assert "nothing to do" in migrate_broker(vhost.broker_url, redis_url)
    finally:
        close_app(app)
        vhost.stop()


@pytest.mark.parametrize("exchange", ["", "named like the queue"])
def test_an_amqp_client_that_declares_nothing_reaches_every_contract_queue(
    vhost: RabbitVhost, amqp_app: Celery, exchange: str
) -> None:
    # Given the queues a worker declared
    declare_as_a_worker(amqp_app, vhost.broker_url)
    with Connection(vhost.broker_url, transport_options={"confirm_publish": True}) as client:
        channel: Any = client.channel()
        # When a plain AMQP client publishes to the default exchange, or to the exchange
        # named like the queue, with the queue's name as routing key, declaring nothing
        for queue in ALL_QUEUES:
            message = channel.prepare_message(b"[[], {}, {}]", content_type="application/json")
            channel.basic_publish(
                message, exchange=queue if exchange else "", routing_key=queue, mandatory=True
            )
        channel.close()

    # Then each message waits in its queue (confirmed, so counted at once)
    lengths = AmqpQueueDepth(vhost.broker_url).lengths(ALL_QUEUES)
    assert lengths == dict.fromkeys(ALL_QUEUES, 1)


def test_a_retry_of_a_job_a_producer_sent_through_the_direct_exchange_waits_in_the_broker(
    vhost: RabbitVhost, amqp_app: Celery
) -> None:
    # Given the workers' queues and delayed-delivery route
    with Connection(vhost.broker_url) as connection:
        for queue in amqp_app.amqp.queues.values():
            queue(connection.default_channel).declare()
        declare_native_delayed_delivery_exchanges_and_queues(connection, "quorum")
        for queue in amqp_app.amqp.queues.values():
            bind_queue_to_native_delayed_delivery_exchange(connection, queue)
    depth = AmqpQueueDepth(vhost.broker_url)

    # When a worker retries a training job that arrived through the direct exchange
    # 'training' (Task.retry carries the delivery's exchange and routing key over)
    amqp_app.send_task(
        TRAIN_TASK,
        kwargs={"model": "m", "records": ROWS},
        countdown=2,
        exchange=TRAINING_QUEUE,
        routing_key=TRAINING_QUEUE,
    )

    # Then it waits in the broker, not in a worker, and arrives after the countdown
    assert depth.lengths([TRAINING_QUEUE]) == {TRAINING_QUEUE: 0}
    assert wait_for(lambda: depth.lengths([TRAINING_QUEUE])[TRAINING_QUEUE] == 1, timeout=15)
