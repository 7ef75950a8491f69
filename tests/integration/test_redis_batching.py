"""The Redis transport's batched consumption and the batched result writes, against a
real Redis: what is delivered, what is recorded as unacknowledged, what a caller reads."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import uuid
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import redis
from celery import Celery, states
from celery.result import AsyncResult
from kombu import Connection, Consumer, Exchange, Message, Producer, Queue

from pynomaly_workers.adapters.broker import TRANSPORT, acknowledge_all
from pynomaly_workers.adapters.results import StoredResult, store_results
from pynomaly_workers.client import close_app


@pytest.fixture
def queue_name() -> str:
    return f"q-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def queue(queue_name: str) -> Queue:
    return Queue(queue_name, Exchange(queue_name), routing_key=queue_name)


@pytest.fixture
def connection(redis_url: str) -> Iterator[Connection]:
    with Connection(redis_url, transport=TRANSPORT) as conn:
        yield conn


def publish(connection: Connection, queue: Queue, count: int) -> None:
    with connection.channel() as channel:
        producer = Producer(channel)
        for i in range(count):
            producer.publish({"n": i}, routing_key=queue.routing_key, declare=[queue])


def start_consumer(
    connection: Connection, queue: Queue, *, prefetch: int
) -> tuple[list[Message], Any]:
    """A consumer allowed ``prefetch`` unacknowledged messages; what it received and its
    channel (left open)."""
    received: list[Message] = []
    channel: Any = connection.channel()
    consumer = Consumer(channel, [queue], callbacks=[lambda _body, m: received.append(m)])
    consumer.qos(prefetch_count=prefetch)
    consumer.consume()
    return received, channel


def consume(
    connection: Connection, queue: Queue, *, prefetch: int, until: int
) -> tuple[list[Message], Any]:
    """Drain events until ``until`` messages arrived; the channel stays open."""
    received, channel = start_consumer(connection, queue, prefetch=prefetch)
    for _ in range(until * 2):
        if len(received) >= until:
            break
        connection.drain_events(timeout=2)
    return received, channel


def unacked(redis_url: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.hlen("unacked"))
    finally:
        client.close()


def test_one_wakeup_delivers_up_to_the_prefetch_budget_each_recorded_unacked(
    connection: Connection, redis_url: str, queue: Queue, queue_name: str
) -> None:
    # Given 10 messages waiting and a consumer allowed 4 unacknowledged
    publish(connection, queue, 10)

    # When it reads once
    received, channel = start_consumer(connection, queue, prefetch=4)
    connection.drain_events(timeout=2)

    # Then the one read delivered 4 messages, in order, each recorded as unacknowledged
    assert [m.payload["n"] for m in received] == [0, 1, 2, 3]
    assert unacked(redis_url) == 4
    client = redis.Redis.from_url(redis_url)
    assert client.llen(queue_name) == 6
    client.close()
    channel.close()


def test_acknowledging_a_batch_clears_every_unacked_record(
    connection: Connection, redis_url: str, queue: Queue, queue_name: str
) -> None:
    publish(connection, queue, 6)
    received, channel = consume(connection, queue, prefetch=6, until=6)
    assert unacked(redis_url) == 6

    acknowledge_all([_Request(m) for m in received])

    assert unacked(redis_url) == 0
    assert all(m.acknowledged for m in received)
    channel.close()


@pytest.mark.parametrize("settle", ["one_by_one", "batch", "reject"])
def test_a_settled_delivery_is_not_kept_by_its_channel(
    connection: Connection, queue: Queue, settle: str
) -> None:
    # Given the last deliveries of a channel that then stays quiet (a large training
    # body decodes to tens of MB in the worker's main process)
    publish(connection, queue, 3)
    received, channel = consume(connection, queue, prefetch=3, until=3)
    assert len(received) == 3
    alive = [weakref.ref(m) for m in received]

    # When they are settled and the consumer lets go of them
    if settle == "batch":
        acknowledge_all([_Request(m) for m in received])
    else:
        for message in received:
            message.ack() if settle == "one_by_one" else message.reject()
        del message
    received.clear()
    collect_quietly()

    # Then nothing holds them any more: the channel forgot them at once
    assert [ref() for ref in alive] == [None, None, None]
    channel.close()


def test_messages_held_when_a_channel_closes_are_restored_to_the_queue(
    connection: Connection, redis_url: str, queue: Queue, queue_name: str
) -> None:
    # Given drained deliveries never acknowledged
    publish(connection, queue, 5)
    received, channel = consume(connection, queue, prefetch=5, until=5)
    assert len(received) == 5

    # When the channel closes (a consumer shutting down)
    channel.close()

    # Then all five are back on the queue, none left unacknowledged
    client = redis.Redis.from_url(redis_url)
    assert client.llen(queue_name) == 5
    assert client.hlen("unacked") == 0
    client.close()


def test_a_malformed_message_among_drained_ones_is_dropped_and_the_rest_delivered(
    connection: Connection, redis_url: str, queue: Queue, queue_name: str
) -> None:
    publish(connection, queue, 2)
    client = redis.Redis.from_url(redis_url)
    client.lpush(queue_name, b"\xff not json")
    client.close()
    publish(connection, queue, 2)

    received, channel = consume(connection, queue, prefetch=10, until=4)

    assert sorted(m.payload["n"] for m in received) == [0, 0, 1, 1]
    assert unacked(redis_url) == 4
    channel.close()


class _Request:
    """The part of a Celery request ``acknowledge_all`` uses."""

    def __init__(self, message: Message) -> None:
        self.message = message
        self.acknowledged = False

    def acknowledge(self) -> None:
        self.message.ack()
        self.acknowledged = True


def collect_quietly() -> None:
    """Run the collector, ignoring ResourceWarnings of what earlier tests dropped: a
    kombu Redis channel closed in a test here (``channel.close()``) leaves a pooled
    connection that only the collector closes. (An AsyncResult collected after
    ``close_app`` did too, until close_app forgot the result consumer's PubSub.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture(scope="module", autouse=True)
def _earlier_garbage_collected() -> None:
    """Collect what earlier modules left before this one runs, so that a leftover's
    warning cannot fail whichever test of this module is running when it is finalised."""
    collect_quietly()


def _redis_of(app: Celery) -> Any:
    backend: Any = app.backend
    return backend.client


@pytest.fixture
def backend_app(redis_url: str) -> Iterator[Celery]:
    app = Celery("results-test", broker="memory://", backend=redis_url)
    app.conf.result_expires = 300
    yield app
    close_app(app)  # its Redis connections too, not left to the garbage collector


def open_sockets_to(port: int) -> int:
    """This process's established TCP connections to ``port`` (from /proc)."""
    mine = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                mine.add(target[len("socket:[") : -1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            established = fields[3] == "01"
            count += remote_port == port and established and fields[9] in mine
    return count


def test_a_result_collected_after_close_app_leaves_no_connection_open(redis_url: str) -> None:
    # Given a client app that waited on a result (so it subscribed to its channel)
    port = urlparse(redis_url).port or 6379
    collect_quietly()  # what earlier tests dropped is closed as it is collected
    before = open_sockets_to(port)
    app = Celery("results-close", broker="memory://", backend=redis_url)
    task_id = str(uuid.uuid4())
    app.backend.mark_as_done(task_id, {"ok": 1})
    result: AsyncResult[Any] = AsyncResult(task_id, app=app)
    assert result.get(timeout=2) == {"ok": 1}

    # When the app is closed, and only then the result is collected (its __del__
    # unsubscribes from the channel)
    close_app(app)
    del result
    gc.collect()

    # Then the app holds no connection: none was opened again after the close
    assert open_sockets_to(port) == before
    app.close()


def test_a_batch_of_results_reads_back_as_celery_writes_them(backend_app: Celery) -> None:
    # Given one job stored Celery's way and the others in one batch
    ids = [str(uuid.uuid4()) for _ in range(4)]
    backend_app.backend.mark_as_done(ids[0], {"job_id": "a", "n": 1})
    store_results(
        backend_app.backend,
        [
            StoredResult(ids[1], {"job_id": "b", "n": 2}, states.SUCCESS),
            StoredResult(ids[2], ValueError("model 'x' is not registered"), states.FAILURE),
            StoredResult(ids[3], {"job_id": "d", "n": 4}, states.SUCCESS),
        ],
    )

    # Then a caller reads each as it would a Celery result, with the same fields
    assert AsyncResult(ids[1], app=backend_app).get(timeout=2) == {"job_id": "b", "n": 2}
    failed: AsyncResult[Any] = AsyncResult(ids[2], app=backend_app)
    assert failed.state == states.FAILURE
    assert isinstance(failed.result, ValueError)
    assert "not registered" in str(failed.result)
    client = _redis_of(backend_app)
    celery_written = json.loads(client.get(f"celery-task-meta-{ids[0]}"))
    batch_written = json.loads(client.get(f"celery-task-meta-{ids[3]}"))
    assert set(batch_written) == set(celery_written)
    assert 0 < client.ttl(f"celery-task-meta-{ids[3]}") <= 300


@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_a_stored_success_is_never_replaced_by_a_later_batch(
    backend_app: Celery, serializer: str
) -> None:
    # JSON results are checked and written by one server-side script; another
    # serializer, which the script cannot read, by an MGET and a pipeline
    backend_app.conf.result_serializer = serializer
    backend_app.conf.accept_content = [serializer]
    backend_app.conf.result_accept_content = [serializer]
    backend: Any = backend_app.backend
    assert backend.serializer == serializer
    done, pending = str(uuid.uuid4()), str(uuid.uuid4())
    store_results(backend, [StoredResult(done, {"first": True}, states.SUCCESS)])
    backend.mark_as_failure(pending, RuntimeError("first attempt"))

    store_results(
        backend,
        [
            StoredResult(done, RuntimeError("late"), states.FAILURE),
            StoredResult(pending, {"second": True}, states.SUCCESS),
        ],
    )

    assert AsyncResult(done, app=backend_app).get(timeout=2) == {"first": True}
    assert AsyncResult(pending, app=backend_app).get(timeout=2) == {"second": True}


def test_a_result_is_published_to_callers_waiting_on_it(backend_app: Celery) -> None:
    task_id = str(uuid.uuid4())
    pubsub = _redis_of(backend_app).pubsub()
    pubsub.subscribe(f"celery-task-meta-{task_id}")
    assert pubsub.get_message(timeout=2) is not None  # the subscription

    store_results(backend_app.backend, [StoredResult(task_id, {"ok": 1}, states.SUCCESS)])

    message = pubsub.get_message(timeout=2)
    assert message is not None
    assert json.loads(message["data"])["result"] == {"ok": 1}
    pubsub.close()
