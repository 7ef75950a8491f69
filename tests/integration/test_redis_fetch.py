"""The Redis consumer against a real Redis: a message is in flight the moment it leaves its
queue, a waiting consumer wakes on any producer's LPUSH without polling, and what a dead
consumer held comes back once."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Message, Producer, Queue

from pynomaly_workers.adapters import redis_transport
from pynomaly_workers.adapters.redis_transport import (
    CONSUMERS_KEY,
    Channel,
    Transport,
    inflight_key,
    watch_prefixes,
)

TRANSPORT = "pynomaly_workers.adapters.redis_transport:Transport"


class Resp2Channel(Channel):
    """The same channel over RESP2 (redis-py before 8, or a server without HELLO 3):
    tracking pushes then arrive as pub/sub messages."""

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        params = super()._connparams(asynchronous=asynchronous)  # type: ignore[misc]
        return {**params, "protocol": 2}


class Resp2Transport(Transport):
    Channel = Resp2Channel


@pytest.fixture(params=["resp3", "resp2"])
def transport(request: pytest.FixtureRequest) -> Any:
    return TRANSPORT if request.param == "resp3" else Resp2Transport


@pytest.fixture
def queue() -> Queue:
    name = f"q-{uuid.uuid4().hex[:8]}"
    return Queue(name, Exchange(name), routing_key=name)


@pytest.fixture
def client(redis_url: str) -> Iterator[Any]:
    r = redis.Redis.from_url(redis_url)
    yield r
    r.close()


def publish(redis_url: str, queue: Queue, count: int, start: int = 0) -> None:
    with Connection(redis_url, transport=TRANSPORT) as conn, conn.channel() as channel:
        producer = Producer(channel)
        for i in range(start, start + count):
            producer.publish({"n": i}, routing_key=queue.routing_key, declare=[queue])


def consumer(conn: Connection, queue: Queue, prefetch: int) -> tuple[list[Message], Any]:
    received: list[Message] = []
    channel: Any = conn.channel()
    consuming = Consumer(channel, [queue], callbacks=[lambda _b, m: received.append(m)])
    consuming.qos(prefetch_count=prefetch)
    consuming.consume()
    return received, channel


def drain_until(conn: Connection, received: list[Message], count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(received) < count and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=0.5)


def test_watch_prefixes_cover_every_queue_with_no_overlap() -> None:
    assert watch_prefixes(["detection.bulk", "detection", "training", "training"]) == [
        "detection",
        "training",
    ]
    assert watch_prefixes(["b", "a"]) == ["a", "b"]


def test_a_fetched_message_is_recorded_in_flight_in_the_same_step(
    redis_url: str, client: Any, queue: Queue, transport: Any
) -> None:
    # Given three messages and a consumer allowed two
    publish(redis_url, queue, 3)
    with Connection(redis_url, transport=transport) as conn:
        received, channel = consumer(conn, queue, prefetch=2)
        drain_until(conn, received, 2, timeout=5)

        # Then the two it took are in the unacked hash and index and in its own
        # in-flight hash, naming the list each came from; the third is still queued
        tags = {m.delivery_tag for m in received}
        assert len(tags) == 2
        assert {t.decode() for t in client.hkeys("unacked")} == tags
        assert {t.decode() for t in client.zrange("unacked_index", 0, -1)} == tags
        mine = client.hgetall(inflight_key(channel.consumer_id))
        assert {t.decode() for t in mine} == tags
        assert set(mine.values()) == {queue.name.encode()}
        assert client.llen(queue.name) == 1
        assert client.zscore(CONSUMERS_KEY, channel.consumer_id) is not None
        # and each unacked entry is what kombu's restore reads: [payload, exchange, key]
        entry = json.loads(client.hget("unacked", received[0].delivery_tag) or b"")
        assert entry[0]["properties"]["delivery_tag"] == received[0].delivery_tag
        info = received[0].delivery_info
        assert entry[1:] == [info["exchange"], info["routing_key"]] == ["", queue.name]

        # When it acknowledges them, every record goes
        for message in received:
            message.ack()
        assert client.hlen("unacked") == 0
        assert client.hlen(inflight_key(channel.consumer_id)) == 0
        channel.close()
    # and a consumer that closed leaves no heartbeat behind
    assert client.zscore(CONSUMERS_KEY, channel.consumer_id) is None


def test_a_waiting_consumer_wakes_on_a_raw_lpush_without_polling(
    redis_url: str, client: Any, queue: Queue, transport: Any
) -> None:
    with Connection(redis_url, transport=transport) as conn:
        received, channel = consumer(conn, queue, prefetch=4)
        drain_until(conn, received, 1, timeout=1)  # starts watching; nothing there
        assert received == []
        fetches = _count_fetches(channel)

        # When it waits two seconds on an empty queue
        waited_from = time.monotonic()
        drain_until(conn, received, 1, timeout=2)
        # Then it ran no fetch at all: it was blocked on the watching connection
        assert time.monotonic() - waited_from >= 1.9
        assert fetches == []

        # When another client LPUSHes a message (as any producer, in any language)
        envelope = _envelope(queue.name, {"n": 1})
        pushed = threading.Timer(0.3, lambda: client.lpush(queue.name, json.dumps(envelope)))
        pushed.start()
        sent_at = time.monotonic() + 0.3
        drain_until(conn, received, 1, timeout=5)
        pushed.join()

        # Then it arrives at once, with one fetch (and at most one more, woken by its
        # own pop)
        assert [m.payload for m in received] == [{"n": 1}]
        assert time.monotonic() - sent_at < 1.0
        assert 1 <= len(fetches) <= 2
        received[0].ack()
        channel.close()


def test_a_consumer_whose_watching_connection_is_killed_watches_again(
    redis_url: str, client: Any, queue: Queue, transport: Any
) -> None:
    with Connection(redis_url, transport=transport) as conn:
        received, channel = consumer(conn, queue, prefetch=4)
        drain_until(conn, received, 1, timeout=1)  # watching
        watching = channel.client.connection

        # When the server drops the watching connection (a restart, a proxy, CLIENT KILL)
        db = str(client.connection_pool.connection_kwargs.get("db", 0))
        killed = [
            c
            for c in client.client_list()
            if c.get("cmd") in ("subscribe", "ping") and str(c.get("db")) == db
        ]
        assert killed, client.client_list()
        for entry in killed:
            client.client_kill_filter(_id=entry["id"])
        with contextlib.suppress(Exception):  # the consumer sees the close
            conn.drain_events(timeout=1)

        # Then a message pushed afterwards still arrives, over a new watching connection
        client.lpush(queue.name, json.dumps(_envelope(queue.name, {"n": 7})))
        drain_until(conn, received, 1, timeout=5)
        assert [m.payload for m in received] == [{"n": 7}]
        assert channel.client.connection._sock is not None
        assert channel._watched[1] is not None
        assert watching._sock is None or watching is channel.client.connection
        received[0].ack()
        channel.close()


def test_a_dead_consumers_messages_come_back_once(
    redis_url: str, client: Any, queue: Queue
) -> None:
    # Given a consumer that took three messages and died holding them (never closed,
    # its heartbeat a minute old)
    publish(redis_url, queue, 3)
    dead_conn = Connection(redis_url, transport=TRANSPORT)
    received, dead = consumer(dead_conn, queue, prefetch=3)
    drain_until(dead_conn, received, 3, timeout=5)
    assert len(received) == 3
    assert client.llen(queue.name) == 0
    client.zadd(CONSUMERS_KEY, {dead.consumer_id: time.time() - 60})

    # and a live consumer whose heartbeat is fresh, holding one more
    publish(redis_url, queue, 1, start=3)
    with Connection(redis_url, transport=TRANSPORT) as conn:
        held, live = consumer(conn, queue, prefetch=1)
        drain_until(conn, held, 1, timeout=5)
        assert [m.payload["n"] for m in held] == [3]

        # When two workers look for dead consumers at the same time
        counts: list[int] = []
        with Connection(redis_url, transport=TRANSPORT) as other:
            rival: Any = other.channel()
            threads = [
                threading.Thread(target=lambda c=c: counts.append(c.recover_dead()))
                for c in (live, rival)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=10)
            assert not any(thread.is_alive() for thread in threads)
            rival.close()

        # Then the dead one's three are back on the queue, once, and it is forgotten;
        # the live one's message stays with it
        assert sum(counts) == 3, counts
        queued = [
            json.loads(m)["properties"]["delivery_tag"] for m in client.lrange(queue.name, 0, -1)
        ]
        assert sorted(queued) == sorted(str(m.delivery_tag) for m in received)
        assert client.hlen(inflight_key(dead.consumer_id)) == 0
        assert client.zscore(CONSUMERS_KEY, dead.consumer_id) is None
        assert client.hkeys(inflight_key(live.consumer_id)) == [str(held[0].delivery_tag).encode()]
        assert client.hlen("unacked") == 1

        # and a consumer that takes them gets the same three messages
        again, channel = consumer(conn, queue, prefetch=3)
        drain_until(conn, again, 3, timeout=5)
        assert sorted(m.payload["n"] for m in again) == [0, 1, 2]
        held[0].ack()
        for message in again:
            message.ack()
        channel.close()
        live.close()
    dead_conn.release()


def test_a_message_kombu_cannot_decode_is_dropped_and_its_records_cleared(
    redis_url: str, client: Any, queue: Queue
) -> None:
    # Given a JSON envelope with a malformed kombu-typed value, then a good message
    bad = _envelope(queue.name, {"n": 0})
    bad["headers"]["eta"] = {"__type__": "datetime", "__value__": 12}
    client.lpush(queue.name, json.dumps(bad))
    publish(redis_url, queue, 1, start=1)
    with Connection(redis_url, transport=TRANSPORT) as conn:
        received, channel = consumer(conn, queue, prefetch=4)
        drain_until(conn, received, 1, timeout=5)
        # Then the good one is delivered, and the bad one leaves no record that a
        # restore would bring back
        assert [m.payload["n"] for m in received] == [1]
        tag = str(received[0].delivery_tag).encode()
        assert client.hkeys("unacked") == [tag]
        assert client.hkeys(inflight_key(channel.consumer_id)) == [tag]
        received[0].ack()
        channel.close()


def test_a_no_ack_consumer_leaves_nothing_in_flight(
    redis_url: str, client: Any, queue: Queue
) -> None:
    # Given a consumer that acknowledges nothing (as a client reading its reply queue)
    publish(redis_url, queue, 2)
    with Connection(redis_url, transport=TRANSPORT) as conn:
        received: list[Message] = []
        channel: Any = conn.channel()
        Consumer(
            channel, [queue], callbacks=[lambda _b, m: received.append(m)], no_ack=True
        ).consume()
        drain_until(conn, received, 2, timeout=5)

        # Then it got both and nothing waits to be restored or recovered later
        assert sorted(m.payload["n"] for m in received) == [0, 1]
        assert client.hlen("unacked") == 0
        assert client.hlen(inflight_key(channel.consumer_id)) == 0
        channel.close()


def test_the_relied_on_kombu_internals_are_all_present() -> None:
    assert redis_transport.missing_internals() == []


def _count_fetches(channel: Any) -> list[int]:
    """Record the size of every fetch ``channel`` runs from now on."""
    fetches: list[int] = []
    fetch = channel.fetch

    def counted(budget: int) -> int:
        fetches.append(budget)
        return int(fetch(budget))

    channel.fetch = counted
    return fetches


def _envelope(queue: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A kombu message envelope as a non-Python producer would LPUSH it."""
    return {
        "body": json.dumps(payload),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {},
        "properties": {
            "delivery_mode": 2,
            "delivery_info": {"exchange": queue, "routing_key": queue},
            "priority": 0,
            "body_encoding": "utf-8",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
