"""Broker transports, hardened: malformed messages never stop a worker, and the
embedded file-system broker never hands out a half-written message.

Kombu's Redis channel decodes each popped message inside the worker's event loop; a body
that is not JSON raises there and stops the whole worker ("Unrecoverable error",
celery/celery#4308). Anything can LPUSH onto a queue list, so one bad producer could take
every worker down in turn. This channel logs and drops such a message instead: it was
already removed from the list, cannot be decoded by any worker, and retrying it would
only repeat the crash.

An envelope that passes these checks can still hold a body Celery's consumer chokes on
(celery-batches reads ``message.payload`` and raises ``TypeError`` on a body of JSON
``null``, in the event loop). :meth:`Transport._deliver` therefore also drops a message
whose hand-over to the consumer raises a data error (``TypeError``, ``ValueError``,
``KeyError``, ...); connection errors still propagate, so Celery reconnects and the message
stays in the ``unacked`` hash for redelivery.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from kombu.transport import filesystem as kombu_filesystem
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual as kombu_virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

log = logging.getLogger(__name__)

TRANSPORT = "pynomaly_workers.adapters.broker:Transport"
FILESYSTEM_TRANSPORT = "pynomaly_workers.adapters.broker:FilesystemTransport"
# At most this many messages are drained after one BRPOP (the prefetch budget bounds it too).
_DRAIN_MAX = 64


_SETTLE_ERRORS: tuple[type[BaseException], ...] = (
    AttributeError,
    *kombu_redis.Transport.connection_errors,
)
DATA_ERRORS = (TypeError, ValueError, KeyError, IndexError, AttributeError, ArithmeticError)
"""What decoding a malformed item, or handing a malformed message to Celery, raises;
never a connection error (those are ``OSError`` or kombu/redis errors, and must reach
Celery so it reconnects)."""


_FORGET_SETTLED = kombu_virtual.QoS._flush  # type: ignore[attr-defined]
"""Kombu's virtual QoS keeps a settled delivery (and so its decoded body) in
``_delivered`` until the channel's next delivery; ``_flush`` drops the settled ones. A
private name: looked up here, at import, so a kombu without it fails at start-up."""


class QoS(kombu_redis.QoS):
    """Kombu's Redis QoS, plus acknowledging many deliveries in one round trip, and
    recording many deliveries as unacknowledged in one (:meth:`deferring`).

    A settled delivery is forgotten at once, not at the channel's next delivery: the
    last messages of a quiet channel (a ``pynomaly.train_many`` body decodes to tens of
    MB of Python lists) otherwise stayed in the worker's main process for good."""

    _deferred: list[tuple[Any, str]] | None = None

    def append(self, message: Any, delivery_tag: str) -> None:
        if self._deferred is None:
            super().append(message, delivery_tag)
            return
        self._deferred.append((message, delivery_tag))
        kombu_virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        with self._settling():
            self._write_deferred()
            super().ack(delivery_tag)
        _FORGET_SETTLED(self)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        with self._settling():
            self._write_deferred()  # a requeue restores the message from the unacked hash
            super().reject(delivery_tag, requeue=requeue)
        _FORGET_SETTLED(self)

    @contextmanager
    def _settling(self) -> Iterator[None]:
        """Settle a delivery; over a closed channel, at most try. A task that ends after
        its channel closed (a consumer restart after the broker went away) settles over
        that channel: kombu then rebuilds the closed channel's pool from a connection
        that is gone, and the ``AttributeError`` stopped the whole worker ("Unrecoverable
        error"). The message is left as it is instead: back on its queue if the close
        could restore it, else in the ``unacked`` hash until the visibility timeout; its
        job_id makes the second run harmless."""
        try:
            yield
        except _SETTLE_ERRORS as exc:
            channel: Any = getattr(self, "channel", None)
            if not getattr(channel, "closed", False):
                raise
            log.warning(
                "a task ended after its broker channel closed (%s); its message "
                "will be delivered again",
                type(exc).__name__,
            )

    def _write_deferred(self) -> None:
        if self._deferred:
            pending, self._deferred = self._deferred, []
            self._write_unacked(pending)

    @contextmanager
    def deferring(self) -> Iterator[None]:
        """Deliveries appended inside are written to the ``unacked`` hash and index in
        one pipeline on the way out, before the event loop runs again: before any of
        them can be acknowledged or the consumer hand one to a pool process."""
        self._deferred = []
        try:
            yield
        finally:
            pending, self._deferred = self._deferred, None
            if pending:
                self._write_unacked(pending)

    def _write_unacked(self, pending: Sequence[tuple[Any, str]]) -> None:
        qos: Any = self
        with qos.channel.conn_or_acquire() as client, client.pipeline() as pipe:
            self._record_unacked(pipe, pending)
            pipe.execute()

    def record_deferred(self, pipe: Any) -> None:
        """Queue the deferred ``unacked`` writes on ``pipe`` (the caller executes it)."""
        if self._deferred:
            pending, self._deferred = self._deferred, []
            self._record_unacked(pipe, pending)

    def _record_unacked(self, pipe: Any, pending: Sequence[tuple[Any, str]]) -> None:
        qos: Any = self
        now = time.time()
        for message, tag in pending:
            delivery = message.delivery_info
            entry = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
            pipe.zadd(qos.unacked_index_key, {tag: now})
            pipe.hset(qos.unacked_key, tag, entry)

    def ack_many(self, delivery_tags: Sequence[str]) -> None:
        """Acknowledge ``delivery_tags`` as :meth:`ack` would each, in one pipeline."""
        qos: Any = self
        with (
            self._settling(),
            qos.channel.conn_or_acquire() as client,
            client.pipeline() as pipe,
        ):
            for tag in delivery_tags:
                qos._remove_from_indices(tag, pipe)
            pipe.execute()
        for tag in delivery_tags:
            kombu_virtual.QoS.ack(self, tag)
        _FORGET_SETTLED(self)


# Pops up to ARGV[1] messages from the lists KEYS, in order (kombu's priority lists of
# one queue, highest priority first), without blocking.
_DRAIN = """
local out = {}
local budget = tonumber(ARGV[1])
for _, key in ipairs(KEYS) do
  if budget <= 0 then break end
  local got = redis.call('RPOP', key, budget)
  if got then
    for _, item in ipairs(got) do out[#out + 1] = item end
    budget = budget - #got
  end
end
return out
"""


class Channel(kombu_redis.Channel):
    """A Redis channel that survives undecodable messages, acknowledges a batch of
    deliveries in one round trip (:meth:`QoS.ack_many`), and reuses one client object
    for its one-off commands: kombu builds a new ``redis.Redis`` for each (every task
    event published, every acknowledgement), which cost about a tenth of a busy
    consumer's time. The client draws connections from the channel's pool, as kombu's
    would; it is rebuilt when the pool is."""

    QoS = QoS
    _reused: tuple[Any, Any] | None = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool
        if self._reused is None or self._reused[0] is not pool:
            channel: Any = self
            self._reused = (pool, channel._create_client())
        yield self._reused[1]

    def _brpop_read(self, **options: Any) -> bool:
        """Kombu's read of one BRPOP reply, then up to the prefetch budget more messages
        of the same queue without blocking (one script call, in the round trip that
        records the first as unacknowledged), the drained ones recorded as
        unacknowledged in one pipeline more. Kombu alone costs a BRPOP and an
        ``unacked`` write per message, each a round trip inside the consumer's event
        loop; a lone message now costs one round trip after its BRPOP."""
        channel: Any = self
        with channel.qos.deferring():
            try:
                delivered = bool(super()._brpop_read(**options))  # type: ignore[misc]
            except DATA_ERRORS as exc:  # see decode_envelope
                log.error("dropped a malformed broker message (not a JSON envelope): %s", exc)
                _count_dropped()
                delivered = True
            if delivered:
                self._drain()
        return True

    def _drain(self) -> None:
        channel: Any = self
        budget = channel.qos.can_consume_max_estimate()
        if not budget or channel.global_keyprefix or not channel._queue_cycle.items:
            return
        queue = channel._queue_cycle.items[-1]  # kombu rotates the queue it read to the end
        if queue not in channel._active_queues:
            return
        keys = [channel._q_for_pri(queue, pri) for pri in channel.priority_steps]
        # The unacked record of what BRPOP delivered travels in the same round trip,
        # ahead of the drain; what the drain brings is recorded on the way out.
        with self.conn_or_acquire() as client, client.pipeline() as pipe:
            channel.qos.record_deferred(pipe)
            pipe.eval(_DRAIN, len(keys), *keys, min(budget, _DRAIN_MAX))
            items = pipe.execute()[-1]
        for item in items or ():
            try:
                message = loads(bytes_to_str(item))
            except DATA_ERRORS as exc:
                log.error("dropped a malformed message from %s: %s", queue, exc)
                _count_dropped()
                continue
            channel.connection._deliver(message, queue)

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        while True:
            try:
                return super()._get(queue)  # kombu's Redis _get takes no timeout
            except DATA_ERRORS as exc:
                log.error("dropped a malformed message from %s: %s", queue, exc)
                _count_dropped()


class Transport(kombu_redis.Transport):
    """``redis://`` with :class:`Channel`, delivering only well-formed envelopes."""

    Channel = Channel

    def _deliver(self, message: Any, queue: str | None) -> None:
        problem = envelope_problem(message)
        if problem is not None:
            log.error("dropped a malformed message from %s: %s", queue, problem)
            _count_dropped()
            return
        try:
            super()._deliver(message, queue)
        except DATA_ERRORS as exc:
            log.error(
                "dropped a message from %s that the worker cannot read (%s: %s)",
                queue,
                type(exc).__name__,
                exc,
            )
            _count_dropped()
            self._forget(message["properties"]["delivery_tag"])

    def _forget(self, delivery_tag: str) -> None:
        """Acknowledge a dropped delivery, so the visibility timeout does not bring the
        same poison back."""
        for channel in self.channels or ():
            qos: Any = channel.qos
            if delivery_tag in qos._delivered:
                qos.reject(delivery_tag, requeue=False)


def acknowledge_all(requests: Collection[Any]) -> None:
    """Acknowledge Celery requests (``request.acknowledge()`` each), in one round trip
    per channel where the channel is this module's Redis channel."""
    by_channel: dict[int, list[Any]] = {}
    for request in requests:
        if not request.acknowledged:
            by_channel.setdefault(id(request.message.channel), []).append(request)
    for group in by_channel.values():
        channel = group[0].message.channel
        qos = getattr(channel, "qos", None)
        if not isinstance(qos, QoS) or channel.no_ack_consumers:
            for request in group:
                request.acknowledge()
            continue
        qos.ack_many([request.message.delivery_tag for request in group])
        for request in group:
            request.message._state = "ACK"
            request.acknowledged = True


def _count_dropped() -> None:
    from pynomaly_workers.metrics import get_metrics

    get_metrics().malformed_dropped.inc()


class MalformedMessage(ValueError):
    """An item on a queue list that is not a kombu message envelope; the text says why."""


def decode_envelope(raw: bytes | str) -> dict[str, Any]:
    """What the worker's channel does with an item popped off a queue list: JSON text in,
    a kombu envelope out, or :class:`MalformedMessage` saying what is wrong."""
    try:
        # kombu's loads, as the channel uses: it also turns {"__type__": "datetime",
        # "__value__": ...} objects into values, and raises TypeError or AttributeError
        # when such a value is of the wrong type, besides ValueError for bad JSON/UTF-8.
        message = loads(raw)
    except DATA_ERRORS as exc:
        raise MalformedMessage(f"not a JSON envelope: {type(exc).__name__}: {exc}") from None
    problem = envelope_problem(message)
    if problem is not None:
        raise MalformedMessage(problem)
    assert isinstance(message, dict)
    return message


def envelope_problem(message: Any) -> str | None:
    """Why ``message`` is not a kombu message envelope, or None if it is one."""
    if not isinstance(message, dict):
        return f"the envelope is a JSON {type(message).__name__}, not an object"
    properties = message.get("properties")
    if not isinstance(properties, dict):
        properties = {}
    headers = message.get("headers", {})
    checks = (
        (isinstance(properties.get("delivery_info"), dict), "no 'properties.delivery_info'"),
        (isinstance(properties.get("delivery_tag"), str), "no string 'properties.delivery_tag'"),
        (isinstance(headers, dict), "'headers' is not an object"),
        (isinstance(message.get("body"), str), "'body' is not a string"),
        (_optional_str(message, "content-type"), "'content-type' is not a string"),
        (_optional_str(message, "content-encoding"), "'content-encoding' is not a string"),
        (_optional_str(properties, "body_encoding"), "'properties.body_encoding' is not a string"),
        (
            _optional_str(headers if isinstance(headers, dict) else {}, "task"),
            "'headers.task' is not a string",
        ),
        (
            _optional_str(headers if isinstance(headers, dict) else {}, "id"),
            "'headers.id' is not a string",
        ),
    )
    for ok, problem in checks:
        if not ok:
            return problem
    if properties.get("body_encoding") == "base64" and not _is_base64(message["body"]):
        return "'body' is not valid base64"
    return None


def _optional_str(mapping: dict[str, Any], key: str) -> bool:
    return isinstance(mapping.get(key, ""), str)


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


class FilesystemChannel(kombu_filesystem.Channel):
    """Kombu's file-system channel writes a message in place while consumers may already
    move it away, so a consumer can read an empty file and crash. Messages are written to
    a staging file and renamed into the queue folder, which is atomic on POSIX."""

    def _put(self, queue: str, payload: dict[str, Any], **kwargs: Any) -> None:  # type: ignore[override]
        folder = self.data_folder_out
        name = f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        descriptor, staging = tempfile.mkstemp(dir=os.path.dirname(folder), suffix=".part")
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(dumps(payload).encode())
        os.replace(staging, os.path.join(folder, name))

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        while True:
            try:
                return super()._get(queue)
            except DATA_ERRORS as exc:
                log.error("dropped a malformed message from %s: %s", queue, exc)


class FilesystemTransport(kombu_filesystem.Transport):
    """``filesystem://`` with :class:`FilesystemChannel`."""

    Channel = FilesystemChannel
