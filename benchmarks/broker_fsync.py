"""What ``appendfsync always`` costs the broker Redis, against ``everysec``, in the same run.

A redis-server of its own (AOF on, in a temporary folder) serves each setting in turn,
alternated (everysec, always, always, everysec, ...). Each round carries ``messages``
one-record-job-sized messages through the whole broker life of a job, with the workers'
own transport: one publish per message (as a client sends a job), the atomic fetch (up
to 64 at a time), one pipelined acknowledgement per fetched group and a result written
per message (``SET`` + ``PUBLISH``, as the result backend does). ``messages_per_s`` is
that lifecycle's rate; ``ratio_always_everysec`` below 1 is the cost of fsyncing every
write. The workers' own CPU (scoring, PostgreSQL) is left out, so this is the broker's
ceiling, not a worker's throughput.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from kombu import Connection, Consumer, Exchange, Message, Producer, Queue

from benchmarks.progress import say
from pynomaly_workers.adapters.broker import TRANSPORT as TRANSPORT_PATH

SETTINGS = ("everysec", "always")
BODY = {"model": "bench@1", "records": [[0.1] * 8], "job_id": "x" * 36}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    folder = Path(tempfile.mkdtemp(prefix="bench-fsync-"))
    port = _free_port()
    process = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--port", str(port), "--dir", str(folder), "--appendonly", "yes",
            "--save", "", "--appendfsync", "everysec",
        ],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        for _ in range(100):
            with contextlib.suppress(redis.ConnectionError):
                client.ping()
                break
            time.sleep(0.05)
        client.close()
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def lifecycle(url: str, messages: int) -> float:
    """Messages per second through publish, fetch, acknowledge and result write."""
    queue = Queue("fsync-bench", Exchange("fsync-bench"), routing_key="fsync-bench")
    results = redis.Redis.from_url(url)
    with Connection(url, transport=TRANSPORT_PATH) as conn:
        producer = Producer(conn.channel())
        received: list[Message] = []
        channel: Any = conn.channel()
        consumer = Consumer(channel, [queue], callbacks=[lambda _b, m: received.append(m)])
        consumer.qos(prefetch_count=64)
        consumer.consume()
        started = time.perf_counter()
        for i in range(messages):
            producer.publish({**BODY, "n": i}, routing_key=queue.routing_key, declare=[queue])
        done = 0
        while done < messages:
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=1)
            if not received:
                continue
            group, received[:] = list(received), []
            channel.qos.ack_many([m.delivery_tag for m in group])
            with results.pipeline(transaction=False) as pipe:
                for message in group:
                    key = f"celery-task-meta-{message.delivery_tag}"
                    pipe.set(key, '{"status": "SUCCESS"}', ex=3600)
                    pipe.publish(key, '{"status": "SUCCESS"}')
                pipe.execute()
            done += len(group)
        seconds = time.perf_counter() - started
        channel.close()
    results.close()
    return messages / seconds


def run_broker_fsync(*, messages: int, rounds: int) -> dict[str, Any]:
    """Each setting ``rounds`` times, alternated; the medians and every round."""
    rates: dict[str, list[float]] = {name: [] for name in SETTINGS}
    with redis_server() as url:
        admin = redis.Redis.from_url(url)
        lifecycle(url, min(messages, 500))  # warm up: scripts loaded, pages touched
        for round_no in range(rounds):
            order = SETTINGS if round_no % 2 == 0 else SETTINGS[::-1]
            for name in order:
                admin.config_set("appendfsync", name)
                admin.flushdb()
                rates[name].append(lifecycle(url, messages))
                say(f"broker fsync {name}: {rates[name][-1]:.0f} messages/s")
        admin.close()
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "messages": messages,
        "rounds": rounds,
        "messages_per_s": {name: round(value, 1) for name, value in medians.items()},
        "ratio_always_everysec": round(medians["always"] / medians["everysec"], 3),
        "runs": {name: [round(v, 1) for v in values] for name, values in rates.items()},
    }
