"""The bulk lane of a worker: long work on its own broker channel, at most
``pool size - 1`` pieces at a time, so a one-record job never queues behind it.

Celery's consumer reads every queue through one channel with one prefetch budget, and
its prefork pool serves whatever it was handed first: a one-record job published after a
file's chunks waited for all of them (6.9 s at p50 behind three 1M-row jobs). A worker
that consumes ``detection`` therefore consumes the bulk queue (``detection.bulk``: fan-out
chunks and forwarded file jobs), ``training`` and ``maintenance`` through this consumer
step instead: its own channel, whose prefetch is the number of bulk slots. A message
is acknowledged when its task ends (late acks), so no more bulk tasks than slots are
ever held or running, and the pool always has a process for the small lane
(``pool_layout``). Nothing is polled: the broker hands the lane a message as soon as a
slot frees (Redis ``BRPOP``, AMQP ``basic.consume``).

Public Celery/kombu surface only: a consumer bootstep (``bootsteps.ConsumerStep``), the
consumer's task handler (``Consumer.create_task_handler``, what Celery's own task
consumer calls), the queue selection (``app.amqp.queues``) and an inspect command.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from celery import Celery, bootsteps
from celery.utils.time import maybe_iso8601
from celery.worker.control import inspect_command
from kombu import Consumer

from pynomaly_workers.celery_config import cores
from pynomaly_workers.contract import (
    BULK_QUEUE,
    DETECTION_QUEUE,
    MAINTENANCE_QUEUE,
    NOTIFICATIONS_QUEUE,
    TRAINING_QUEUE,
)
from pynomaly_workers.domain.lanes import pool_layout

log = logging.getLogger(__name__)

LONG_QUEUES = (BULK_QUEUE, TRAINING_QUEUE, MAINTENANCE_QUEUE, NOTIFICATIONS_QUEUE)
"""Queues whose tasks hold a pool process for long (a webhook may take its whole timeout
to answer); the bulk lane takes them when the worker also runs the small lane."""
_MARK = "pynomaly_bulk_lane"


def bulk_lane_queues(selected: Sequence[str]) -> list[str]:
    """The queues the bulk lane of a worker consuming ``selected`` takes: with
    ``detection``, the bulk queue and whichever long queues were selected; without it
    there is no small lane to protect, and no bulk lane."""
    if DETECTION_QUEUE not in selected:
        return []
    return [q for q in LONG_QUEUES if q == BULK_QUEUE or q in selected]


def from_bulk_lane(message: Any) -> bool:
    """True for a delivery the bulk lane received (by its channel, not by anything a
    producer can write into the message)."""
    return bool(getattr(getattr(message, "channel", None), _MARK, False))


class BulkLane(bootsteps.ConsumerStep):
    """Consumes the bulk lane's queues on a channel of its own (see the module)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)
    name = "pynomaly-bulk-lane"

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        queues = c.app.amqp.queues
        self.queues = bulk_lane_queues(list(queues.consume_from))
        for name in self.queues:
            if name in queues.consume_from:
                queues.deselect(name)  # the task consumer must not take them too
        concurrency = int(getattr(c.controller, "concurrency", 0) or 0) if c.controller else 0
        self.slots = pool_layout(
            cores=cores(), concurrency=concurrency, small_lane=bool(self.queues)
        ).bulk_slots
        if self.queues:
            log.info(
                "bulk lane: %s, at most %d at a time (pool of %d)",
                ", ".join(self.queues),
                self.slots,
                concurrency,
            )

    def start(self, c: Any) -> None:
        if not self.queues:
            return
        channel = c.connection.channel()
        setattr(channel, _MARK, True)
        # Per consumer (quorum queues refuse a global QoS); on Redis the channel's own.
        channel.basic_qos(0, self.slots, False)
        self.consumers = self.get_consumers(channel, c=c)
        if c.hub is not None:
            # On the event loop's first turn, as Celery's own task consumer: on RabbitMQ
            # basic.consume hands over a waiting message at once, and before the loop
            # runs the pool cannot take it yet (a training job waiting when a worker
            # started stopped that worker).
            c.hub.call_soon(self._consume)
        else:
            self._consume()

    def _consume(self) -> None:
        for consumer in self.consumers or ():
            consumer.consume()

    def get_consumers(self, channel: Any, c: Any = None) -> list[Consumer]:
        """One consumer of the lane's queues, handing messages to Celery's task
        handler (the strategies, the pool, acknowledgements) like the task consumer."""
        if c is None or not self.queues:
            return []
        queues = [c.app.amqp.queues[name] for name in self.queues]
        handler = c.create_task_handler()
        delays = HeldForEta(channel, slots=self.slots, hub=c.hub)

        def on_message(message: Any) -> None:
            delays.note(message)
            handler(message)

        return [
            Consumer(
                channel,
                queues=queues,
                accept=c.app.conf.accept_content,
                on_message=on_message,
                on_decode_error=c.on_decode_error,
            )
        ]

    def consuming(self) -> list[Any]:
        """The queues the lane consumes now (for ``inspect active_queues``)."""
        return [q for consumer in self.consumers or () for q in consumer.queues]


class HeldForEta:
    """Widens the lane's prefetch by one for each message with a future ETA (a retry's
    countdown, a webhook's backoff), until that ETA.

    Celery keeps such a message in the worker, unacknowledged, until its ETA, and makes
    room for it by raising the *task consumer's* prefetch (``qos.increment_eventually``).
    The lane's channel has a prefetch of its own (the bulk slots), which Celery does not
    know: without this, a webhook retrying with a backoff of minutes held a slot for
    minutes, and with one or two slots a file job or a training waited behind it. At the
    ETA the task runs like any other and counts against the slots again. RabbitMQ's
    quorum queues delay such messages in the broker (native delayed delivery), so they
    arrive due and nothing is held."""

    def __init__(self, channel: Any, *, slots: int, hub: Any) -> None:
        self.channel, self.slots, self.hub = channel, slots, hub
        self.held = 0

    def note(self, message: Any) -> None:
        delay = eta_delay(message)
        if delay is None or self.hub is None:
            return
        self.held += 1
        self._apply()
        self.hub.call_later(delay, self._release)

    def _release(self) -> None:
        self.held = max(0, self.held - 1)
        self._apply()

    def _apply(self) -> None:
        try:
            self.channel.basic_qos(0, self.slots + self.held, False)
        except Exception as exc:  # a closed channel: the new one starts at the slots
            log.debug("bulk lane prefetch not changed: %s", exc)


def eta_delay(message: Any) -> float | None:
    """Seconds until a protocol-2 message's ``eta`` header, if it lies in the future."""
    eta = (getattr(message, "headers", None) or {}).get("eta")
    if not eta:
        return None
    try:
        moment = maybe_iso8601(eta) if isinstance(eta, str) else eta
        delay = float(moment.timestamp()) - time.time()  # type: ignore[union-attr]
    except (TypeError, ValueError, AttributeError):
        return None
    return delay if delay > 0 else None


def install(app: Celery) -> None:
    """Add the bulk lane to ``app``'s workers."""
    app.steps["consumer"].add(BulkLane)


@inspect_command()
def active_queues(state: Any) -> list[dict[str, Any]]:
    """The queues a worker consumes: its task consumer's and its bulk lane's (Flower's
    Broker page lists the queues workers report here)."""
    consumer = state.consumer
    queues = list(consumer.task_consumer.queues) if consumer.task_consumer else []
    for step in getattr(consumer.blueprint, "steps", {}).values():
        if isinstance(step, BulkLane):
            queues += step.consuming()
    return [dict(queue.as_dict(recurse=True)) for queue in queues]
