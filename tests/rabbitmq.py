"""The local RabbitMQ for the tests: a vhost of its own per test, inspected and
restarted with ``rabbitmqctl`` (no management plugin needed)."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from typing import Any

import pytest
from celery import Celery

from pynomaly_workers.adapters.queues import AmqpQueueDepth

STATISTICS_INTERVAL = 5.5
"""Seconds between refreshes of ``rabbitmqctl list_queues``' counts (RabbitMQ's default
``collect_statistics_interval`` of 5 s, plus a margin)."""
RABBITMQ_URL = os.environ.get("PYNOMALY_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")


class RabbitVhost:
    """A vhost of its own on the local RabbitMQ, deleted by :meth:`stop`. Queue counts
    come from ``rabbitmqctl`` (no management plugin needed)."""

    kind = "rabbitmq"

    def __init__(self, *, default_queue_type: str | None = None) -> None:
        """``default_queue_type``: the type RabbitMQ gives a durable queue declared
        without ``x-queue-type`` (``add_vhost --default-queue-type``)."""
        self.vhost = f"pyn-fault-{uuid.uuid4().hex[:10]}"
        options = ["--default-queue-type", default_queue_type] if default_queue_type else []
        try:
            rabbitmqctl("add_vhost", self.vhost, *options)
        except (OSError, subprocess.CalledProcessError) as exc:
            pytest.fail(
                f"cannot create a RabbitMQ vhost ({exc}); start RabbitMQ with "
                "'make services' or 'rabbitmq-server -detached' (rabbitmqctl must be on PATH)"
            )
        user = RABBITMQ_URL.split("://", 1)[1].split(":", 1)[0]
        rabbitmqctl("set_permissions", "-p", self.vhost, user, ".*", ".*", ".*")

    @property
    def broker_url(self) -> str:
        """The local RabbitMQ, this vhost."""
        return f"{RABBITMQ_URL.rstrip('/')}/{self.vhost}"

    def queues(self) -> dict[str, dict[str, str]]:
        """Each queue of the vhost: its type, durability, ready and unacknowledged
        messages, as ``rabbitmqctl list_queues`` prints them."""
        columns = ("type", "durable", "messages_ready", "messages_unacknowledged")
        listing = rabbitmqctl(
            "list_queues", "-p", self.vhost, "name", *columns, "--no-table-headers", "-q"
        )
        rows = (line.split() for line in listing.splitlines() if line.strip())
        return {name: dict(zip(columns, values, strict=True)) for name, *values in rows}

    def exchanges(self) -> dict[str, tuple[str, str]]:
        """Each named exchange of the vhost: its type and durability."""
        columns = ("name", "type", "durable", "--no-table-headers", "-q")
        listing = rabbitmqctl("list_exchanges", "-p", self.vhost, *columns)
        rows = (line.split() for line in listing.splitlines() if line.strip())
        return {row[0]: (row[1], row[2]) for row in rows if len(row) == 3}

    def state(self) -> dict[str, int]:
        """Messages waiting in the detection queue (now, from a passive queue.declare),
        and delivered but unacknowledged (from ``rabbitmqctl``, whose counts are up to
        one statistics interval old: ``collect_statistics_interval``, 5 s by default)."""
        queue = self.queues().get("detection", {})
        unacked = int(queue.get("messages_unacknowledged", 0))
        queued = AmqpQueueDepth(self.broker_url).lengths(["detection"])["detection"]
        return {"queued": queued, "unacked": unacked}

    def drained(self) -> bool:
        """True when the detection queue holds no message, delivered or not, and still
        none once ``rabbitmqctl``'s counts were refreshed (so a stale count of 0 never
        passes)."""
        if self.state() != {"queued": 0, "unacked": 0}:
            return False
        time.sleep(STATISTICS_INTERVAL)  # not a guess: the server's refresh period
        return self.state() == {"queued": 0, "unacked": 0}

    def restart(self) -> None:
        """``rabbitmqctl stop_app`` / ``start_app``: every connection drops, and the
        durable quorum queues come back from disk."""
        rabbitmqctl("stop_app")
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")

    def unacked_job_ids(self) -> list[str]:
        """None: RabbitMQ requeues a lost connection's unacknowledged messages at once."""
        return []

    def stop(self) -> None:
        """Delete the vhost and everything in it."""
        rabbitmqctl("delete_vhost", self.vhost)


def rabbitmqctl(*arguments: str) -> str:
    """Run ``rabbitmqctl``; its output."""
    done = subprocess.run(
        ["rabbitmqctl", *arguments], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout


QUORUM_PRODUCER = {"task_create_missing_queue_type": "quorum"}
"""The one setting docs/brokers.md asks of a Celery producer on RabbitMQ (Celery 5.6+),
written here as a producer would copy it, not imported from the workers."""


class PlainProducer:
    """An upstream service's Celery app: Celery's defaults, the broker URL and only the
    ``settings`` given; no queue, exchange or route of ours.

    Each send opens a connection of its own, as a new producer process would: kombu's
    pools are per process and keyed by URL, so a second app on the same URL in this
    process would reuse the first one's connection, and skip what it already declared."""

    def __init__(self, broker_url: str, **settings: Any) -> None:
        self.app = Celery("upstream", broker=broker_url, set_as_current=False)
        self.app.conf.update(settings)

    def send(self, task: str, *, kwargs: dict[str, Any], queue: str) -> str:
        """``send_task`` by task name and queue name; the task id."""
        with self.app.connection_for_write() as connection:
            producer = self.app.amqp.Producer(connection)
            return str(self.app.send_task(task, kwargs=kwargs, queue=queue, producer=producer).id)

    def close(self) -> None:
        """Release the app's pools."""
        self.app.close()
