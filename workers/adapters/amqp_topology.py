"""What the workers declare on RabbitMQ, so that any producer that names the task and the
queue can enqueue.

Each contract queue ``Q`` is declared as a producer using Celery's defaults declares it
when it sends with ``queue="Q"``: a durable **direct** exchange ``Q`` and the durable queue
``Q`` bound to it by the key ``Q``. The queue is a quorum queue (``x-queue-type:
quorum``), which a producer that declares the queue must repeat (Celery:
``task_create_missing_queue_type = "quorum"``) unless the vhost's default queue type is
quorum; a producer that declares nothing publishes to the default exchange (``""``) with
the routing key ``Q`` (docs/brokers.md, "What a producer declares").

The workers themselves route through one more exchange, the topic exchange
:data:`ROUTING_EXCHANGE`, bound to each queue by its name: Celery's native delayed
delivery (a retry's countdown waits in the broker, not in a worker holding a quorum
queue's prefetch) forwards a message whose routing key is prefixed with its delay, which
only a topic exchange can match. Producers never need to know it.

An earlier release declared ``Q`` itself as a topic exchange, whose redeclaration as
direct the broker refuses. The workers keep such an exchange as it is (and say so once at
start) rather than fail; :func:`migrate_exchanges` replaces it once nothing of that
release runs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from amqp.exceptions import NotFound, PreconditionFailed
from kombu import Connection, Exchange, Queue
from kombu.transport.native_delayed_delivery import (
    CELERY_DELAYED_DELIVERY_EXCHANGE,
    bind_queue_to_native_delayed_delivery_exchange,
)

log = logging.getLogger(__name__)

ROUTING_EXCHANGE = "pynomaly"
"""The workers' own topic exchange (native delayed delivery routes through it)."""
QUORUM = {"x-queue-type": "quorum"}
"""Queue arguments of every contract queue: a replicated, durable quorum queue."""
PRODUCER_EXCHANGE_TYPE = "direct"
"""The type of exchange ``Q``: what kombu declares for a queue a producer names."""

_reported: set[str] = set()


class ContractQueue(Queue):
    """A contract queue on RabbitMQ: routed through :data:`ROUTING_EXCHANGE` (topic), and
    also bound to the direct exchange named like it, as a producer with Celery's defaults
    declares it. Declaring the queue declares both (kombu's ``Queue.declare``, which the
    consumer calls when it starts and a producer before its first publish)."""

    def declare(self, nowait: bool = False, channel: Any = None) -> str | None:
        """Declare the queue and its routing binding, then the producers' exchange and
        binding (see :func:`declare_producer_exchange`)."""
        name = super().declare(nowait=nowait, channel=channel)
        if not self.no_declare:  # type: ignore[attr-defined]  # kombu's, absent from its stubs
            channel = channel or self.channel
            declare_producer_exchange(channel.connection, self.name)
            channel.queue_bind(queue=self.name, exchange=self.name, routing_key=self.name)
        return name


def contract_queue(name: str) -> ContractQueue:
    """The RabbitMQ declaration of contract queue ``name``."""
    return ContractQueue(
        name,
        Exchange(ROUTING_EXCHANGE, type="topic", durable=True),
        routing_key=name,
        durable=True,
        queue_arguments=QUORUM,
    )


def declare_producer_exchange(connection: Any, name: str, *, report: bool = True) -> bool:
    """Declare the direct, durable exchange ``name``, on a channel of its own: if an
    earlier release left a topic exchange of that name, the broker refuses by closing
    the channel, and the exchange is kept as it is (its binding by the queue's name
    routes the same; ``report`` logs once what to run). True when the exchange is the
    direct one."""
    channel = connection.channel()
    try:
        channel.exchange_declare(
            exchange=name, type=PRODUCER_EXCHANGE_TYPE, durable=True, auto_delete=False
        )
    except PreconditionFailed as exc:
        if report:
            _report_old_exchange(name, exc)
        return False
    channel.close()
    return True


def _report_old_exchange(name: str, exc: Exception) -> None:
    if name in _reported:
        return
    _reported.add(name)
    log.warning(
        "RabbitMQ exchange %r is not the direct exchange producers declare (%s): it was "
        "declared by an earlier release. Workers route through it unchanged, but a "
        "producer with Celery's defaults is refused until it is replaced: run "
        "'pynomaly-workers migrate --broker' once no worker or client of that release "
        "runs (docs/brokers.md)",
        name,
        exc,
    )


def migrate_exchanges(connection: Connection, queues: Iterable[Queue]) -> list[str]:
    """Replace each exchange named like one of ``queues`` that is not direct (an earlier
    release's topic exchange) with the direct one producers declare; the names replaced.

    The queues and their messages are untouched. The workers' own declarations are made
    first (and bound to native delayed delivery when a worker set it up), so a retry
    waiting in a delayed queue still finds its way back once the old exchange, which
    carried that route, is gone. Between the delete and the declare (one round trip) a
    publish to that exchange is refused (404) and, with publisher confirms, raises in
    its publisher. An earlier release's worker or client declares these exchanges as
    topic again and is refused: run this once none runs."""
    queues = list(queues)
    channel: Any = connection.default_channel
    for queue in queues:
        Queue.declare(queue(channel))  # the queue and its routing binding only
    if _delayed_delivery_exists(connection):
        for queue in queues:
            bind_queue_to_native_delayed_delivery_exchange(connection, queue)
    replaced = []
    for queue in queues:
        if declare_producer_exchange(connection.connection, queue.name, report=False):
            continue
        channel.exchange_delete(exchange=queue.name)
        channel.exchange_declare(
            exchange=queue.name, type=PRODUCER_EXCHANGE_TYPE, durable=True, auto_delete=False
        )
        channel.queue_bind(queue=queue.name, exchange=queue.name, routing_key=queue.name)
        replaced.append(queue.name)
    return replaced


def _delayed_delivery_exists(connection: Connection) -> bool:
    channel = connection.connection.channel()
    try:
        channel.exchange_declare(
            exchange=CELERY_DELAYED_DELIVERY_EXCHANGE, type="topic", passive=True
        )
    except NotFound:  # no worker has set native delayed delivery up
        return False
    channel.close()
    return True
