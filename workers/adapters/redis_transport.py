"""The Redis consumer: a message is taken off its queue and recorded as in flight in one
atomic step, and the messages of a consumer that died are requeued within a minute.

Kombu's Redis transport (and Celery's with it, kombu#305) pops a message with ``BRPOP`` and
records it in the ``unacked`` hash in a second command: a worker or server that dies
between the two loses the message. Here nothing pops a message except :data:`_FETCH`, a
Lua script that, in one step on the server,

- pops up to the channel's prefetch budget off its queues' lists (kombu's priority lists,
  highest priority first, queues in kombu's round-robin order),
- records each in the ``unacked`` hash and index exactly as kombu's ``QoS.append`` would
  (so kombu's visibility-timeout restore and acknowledgement work unchanged), and in the
  consumer's own in-flight hash (``pynomaly.consumer.<id>``: delivery tag -> list key),
- refreshes the consumer's heartbeat in ``pynomaly.consumers`` (server time).

**Waiting without polling.** A script cannot block, so the channel waits on a second
connection instead: ``CLIENT TRACKING ON REDIRECT <self> BCAST PREFIX <queue> ...`` and
``SUBSCRIBE __redis__:invalidate`` make Redis (>= 6) push a message on that connection
whenever any key starting with a consumed queue's name is written — an ``LPUSH`` by any
producer, in any language, needs nothing from it. The push wakes the event loop, which runs
the script. Tracking is enabled before the first fetch, so a message pushed after a fetch
came back empty always sends a push: no wake-up is lost. A ``PING`` on that connection
(the reply also wakes the loop) asks for a fetch when the budget ran out with messages
left, and every few seconds as a health check of the connection.

**Dead consumers.** Every consuming channel heartbeats (every fetch, and a timer). Any live
worker, every ``dead_after / 3`` seconds, looks for consumers whose heartbeat is older than
``consumer_dead_after`` (``PYNOMALY_CONSUMER_DEAD_AFTER_SECONDS``) and requeues what they
held with kombu's own ``restore_by_tag`` (a ``WATCH``ed transaction on the ``unacked``
hash, so a message comes back once even if two workers recover it at the same time).
A worker recovers others only after it has itself been connected for ``dead_after``
seconds: after a Redis restart every heartbeat is old, and the others need that long to
reconnect and beat again. The visibility timeout stays the bound for a live, stuck worker.

**Surface.** Only these kombu internals are relied on, and :func:`check_internals` fails
the worker's start, loudly, if one is gone: the Redis ``Channel``'s ``_brpop_start`` /
``_brpop_read`` hooks, ``_in_poll`` / ``_brpop_sent_at``, ``_queue_cycle``,
``_q_for_pri``, ``client``, ``priority_steps``; the Redis ``QoS``'s
``_remove_from_indices``, ``restore_by_tag``, ``can_consume_max_estimate`` and the
virtual ``QoS._delivered``; the Transport's ``cycle`` and ``register_with_event_loop``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual as kombu_virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from redis.exceptions import NoScriptError

from pynomaly_workers.adapters.envelope import DATA_ERRORS, count_dropped, envelope_problem

log = logging.getLogger(__name__)

CONSUMERS_KEY = "pynomaly.consumers"
"""Sorted set: consumer id -> server time of its last heartbeat."""
INFLIGHT_PREFIX = "pynomaly.consumer."
"""Hash per consumer: delivery tag -> the list its message was taken from."""
DEFAULT_DEAD_AFTER = 30.0
FETCH_MAX = 64
"""At most this many messages per fetch (the prefetch budget bounds it too)."""
_INVALIDATE = "__redis__:invalidate"

# KEYS: the lists to pop from, in order, then the unacked hash, its index, the consumer's
# in-flight hash and the consumers' heartbeat set. ARGV: budget, consumer id, then per list
# '1' to record what it gives (acknowledged consumption) or '0' (a no-ack consumer, such
# as a client's reply queue: kombu records nothing for those either).
# Returns [list key, item, list key, item, ...]. An item whose delivery tag cannot be read
# is returned unrecorded: it is not a kombu envelope, and the worker drops it.
_FETCH = """
local n = #KEYS - 4
local unacked, index, mine, consumers = KEYS[n + 1], KEYS[n + 2], KEYS[n + 3], KEYS[n + 4]
local budget = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', consumers, now, ARGV[2])
local out = {}
for i = 1, n do
  if budget <= 0 then break end
  local got = redis.call('RPOP', KEYS[i], budget)
  if got then
    budget = budget - #got
    for _, item in ipairs(got) do
      local ok, message = pcall(cjson.decode, item)
      local tag, info = nil, nil
      if ok and type(message) == 'table' and type(message.properties) == 'table' then
        tag = message.properties.delivery_tag
        info = message.properties.delivery_info
      end
      if type(tag) == 'string' and ARGV[2 + i] == '1' then
        if type(info) ~= 'table' then info = {} end
        local exchange, key = info.exchange, info.routing_key
        if type(exchange) ~= 'string' then exchange = '' end
        if type(key) ~= 'string' then key = '' end
        redis.call('HSET', unacked, tag,
          '[' .. item .. ',' .. cjson.encode(exchange) .. ',' .. cjson.encode(key) .. ']')
        redis.call('ZADD', index, now, tag)
        redis.call('HSET', mine, tag, KEYS[i])
      end
      out[#out + 1] = KEYS[i]
      out[#out + 1] = item
    end
  end
end
return out
"""

# KEYS: consumers' heartbeat set. ARGV: consumer id. Server time, so clocks never matter.
_BEAT = """
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]) + tonumber(t[2]) / 1000000, ARGV[1])
return t[1]
"""

# KEYS: consumers' heartbeat set. ARGV: seconds. The ids last seen longer ago, with how
# long ago (at most 20 a call).
_DEAD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]),
                        'WITHSCORES', 'LIMIT', 0, 20)
local out = {}
for i = 1, #dead, 2 do
  out[#out + 1] = dead[i]
  out[#out + 1] = tostring(now - tonumber(dead[i + 1]))
end
return out
"""

# KEYS: consumers' heartbeat set, the dead consumer's in-flight hash. ARGV: its id, the
# seconds it must have been silent. Forget the consumer if it holds nothing and is still
# silent (a consumer that came back meanwhile is left alone).
_FORGET = """
if redis.call('HLEN', KEYS[2]) > 0 then return 0 end
local seen = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not seen then return 0 end
local t = redis.call('TIME')
if tonumber(t[1]) + tonumber(t[2]) / 1000000 - tonumber(seen) < tonumber(ARGV[2]) then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""


def inflight_key(consumer_id: str) -> str:
    return f"{INFLIGHT_PREFIX}{consumer_id}"


def watch_prefixes(queues: Collection[str]) -> list[str]:
    """The fewest key prefixes that cover every list of ``queues`` (kombu names a queue's
    priority lists ``<queue>\\x06\\x16<n>``). Redis refuses overlapping prefixes, so a name
    that starts with another kept name is left out: the shorter one covers it."""
    kept: list[str] = []
    for name in sorted(set(queues)):
        if not any(name.startswith(prefix) for prefix in kept):
            kept.append(name)
    return kept


_SETTLE_ERRORS: tuple[type[BaseException], ...] = (
    AttributeError,
    *kombu_redis.Transport.connection_errors,
)


class QoS(kombu_redis.QoS):
    """Kombu's Redis QoS, for messages the fetch script already recorded: appending one
    writes nothing more to Redis; acknowledging one also clears the consumer's in-flight
    record; many are acknowledged in one round trip (:meth:`ack_many`).

    A settled delivery is forgotten at once (kombu's ``_flush``), not at the channel's
    next delivery: the last messages of a quiet channel (a ``pynomaly.train_many`` body
    decodes to tens of MB of Python lists) otherwise stayed in the worker's main process
    for good."""

    def append(self, message: Any, delivery_tag: str) -> None:
        # The fetch script recorded it in the unacked hash and index, atomically with
        # taking it off the queue. Kombu's own append would write it a second time.
        kombu_virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        with self._settling():
            super().ack(delivery_tag)
        self._forget_settled()

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        with self._settling():
            super().reject(delivery_tag, requeue=requeue)
        self._forget_settled()

    def _forget_settled(self) -> None:
        qos: Any = self
        qos._flush()

    def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any:
        channel: Any = self.channel
        pipe = super()._remove_from_indices(delivery_tag, pipe)  # type: ignore[misc]
        return pipe.hdel(inflight_key(channel.consumer_id), delivery_tag)

    @contextmanager
    def _settling(self) -> Iterator[None]:
        """Settle a delivery; over a closed channel, at most try. A task that ends after
        its channel closed (a consumer restart after the broker went away) settles over
        that channel: kombu then rebuilds the closed channel's pool from a connection
        that is gone, and the ``AttributeError`` stopped the whole worker ("Unrecoverable
        error"). The message is left as it is instead: back on its queue if the close
        could restore it, else in flight until its consumer is found dead or the
        visibility timeout passes; its job_id makes the second run harmless."""
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

    def ack_many(self, delivery_tags: Sequence[str]) -> None:
        """Acknowledge ``delivery_tags`` as :meth:`ack` would each, in one pipeline."""
        channel: Any = self.channel
        with self._settling(), channel.conn_or_acquire() as client, client.pipeline() as pipe:
            for tag in delivery_tags:
                self._remove_from_indices(tag, pipe)
            pipe.execute()
        for tag in delivery_tags:
            kombu_virtual.QoS.ack(self, tag)
        self._forget_settled()

    def forget(self, delivery_tag: str) -> None:
        """Clear the records of a delivery the worker dropped (never handed to Celery)."""
        channel: Any = self.channel
        with channel.conn_or_acquire() as client, client.pipeline() as pipe:
            self._remove_from_indices(delivery_tag, pipe)
            pipe.execute()


class Channel(kombu_redis.Channel):
    """A Redis channel that takes messages with :data:`_FETCH` and waits on key-space
    tracking instead of ``BRPOP`` (see the module's text). It also survives undecodable
    messages and reuses one client object for its one-off commands: kombu builds a new
    ``redis.Redis`` for each (every task event published, every acknowledgement), which
    cost about a tenth of a busy consumer's time."""

    QoS = QoS
    from_transport_options = (*kombu_redis.Channel.from_transport_options, "consumer_dead_after")
    consumer_dead_after = DEFAULT_DEAD_AFTER
    _reused: tuple[Any, Any] | None = None
    _watched: tuple[Any, Any, tuple[str, ...]] | None = None  # (connection, socket, queues)
    _pings = 0  # PINGs sent on the watching connection and not yet answered
    _silent_checks = 0  # health checks in a row, with credit, that found no reply since
    _fetch_wanted = True
    _no_ack_tags: dict[str, str] = {}  # replaced, never mutated: safe as a class default

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.consumer_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        super().__init__(*args, **kwargs)
        channel: Any = self
        if channel.global_keyprefix:
            raise ValueError(
                "the pynomaly Redis transport does not support kombu's global_keyprefix: "
                "use a Redis database of its own (redis://host:6379/N) instead"
            )

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

    # -- waiting: kombu's poller calls these for its 'BRPOP' registration -----------------
    def _brpop_start(self, timeout: float | None = None) -> None:
        """Called by kombu's poller when this channel has credit and nothing in flight on
        its consuming connection: (re)start watching, then ask for a fetch."""
        channel: Any = self
        connection = channel.client.connection
        queues = tuple(channel.active_queues)
        if not queues or connection._sock is None:
            return
        if not self._watch(connection, queues):
            return
        channel._in_poll = connection
        channel._brpop_sent_at = None  # kombu's BRPOP reply deadline does not apply
        self._ask_for_fetch(connection)

    def _watch(self, connection: Any, queues: tuple[str, ...]) -> bool:
        """Make ``connection`` (connected, registered with the poller) watch ``queues``;
        False if it had to be dropped first (the poller reconnects it next cycle)."""
        watched = self._watched
        if watched and watched[0] is connection and watched[1] is connection._sock:
            if watched[2] == queues:
                return True
            # Prefixes cannot change on a subscribed connection: start over on a new one.
            connection.disconnect()
            return False
        connection.send_command("CLIENT", "ID")
        client_id = connection.read_response()
        prefixes: list[str] = []
        for prefix in watch_prefixes(queues):
            prefixes += ["PREFIX", prefix]
        connection.send_command(
            "CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST", *prefixes
        )
        connection.read_response()
        connection.send_command("SUBSCRIBE", _INVALIDATE)
        connection.read_response(push_request=True)
        self._watched = (connection, connection._sock, queues)
        self._pings = self._silent_checks = 0
        self._fetch_wanted = True
        return True

    def _queues_changed(self) -> bool:
        """Whether the consumed queues differ from the watched ones (none at all is no
        change: a client's reply queue comes and goes); if so the watching connection is
        dropped, and the poller reconnects it to watch the new set."""
        channel: Any = self
        watched = self._watched
        queues = tuple(channel.active_queues)
        if not watched or not queues or watched[2] == queues:
            return False
        self._watched = None
        watched[0].disconnect()
        return True

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        """Start consuming ``queue``: watched at once if it already was (a fetch is asked
        for: messages may be waiting), else on a new watching connection."""
        result = super().basic_consume(queue, *args, **kwargs)
        # kombu's signature: (queue, no_ack, callback, consumer_tag), by position or name
        named = dict(zip(("no_ack", "callback", "consumer_tag"), args, strict=False))
        named.update(kwargs)
        if named.get("no_ack"):
            self._no_ack_tags = {**self._no_ack_tags, str(named.get("consumer_tag")): queue}
        channel: Any = self
        watched = self._watched
        if watched and not self._queues_changed() and channel._in_poll is watched[0]:
            self._fetch_wanted = True
            try:
                self._ask_for_fetch(watched[0])
            except channel.connection_errors:
                watched[0].disconnect()
        return result

    def _ask_for_fetch(self, connection: Any) -> None:
        """A ``PING`` whose reply wakes the event loop for a fetch (a subscribed
        connection may send only that)."""
        connection.send_command("PING")
        self._pings += 1

    def _brpop_read(self, **options: Any) -> bool:
        """The watching connection is readable: read what it holds (pushes and ``PING``
        replies), then fetch if anything may be waiting."""
        channel: Any = self
        connection = channel.client.connection
        try:
            wake = self._read_wakeups(connection)
        except channel.connection_errors:
            connection.disconnect()  # the next poll cycle reconnects and watches again
            raise
        if self._queues_changed():
            return True
        if wake or self._fetch_wanted:
            self._fetch_wanted = False
            budget = channel.qos.can_consume_max_estimate()
            budget = FETCH_MAX if budget is None else min(budget, FETCH_MAX)
            if budget > 0 and self.fetch(budget) >= budget:
                self._ask_for_fetch(connection)  # more may wait: come back after the loop turns
        return True

    def _read_wakeups(self, connection: Any) -> bool:
        """Read every reply and push waiting on the watching connection; each is a reason
        to fetch. Over RESP3 (redis-py's default from 8) tracking pushes arrive as push
        frames that redis-py hands to its handler, so ``push_request`` returns them here
        instead of blocking for a reply; over RESP2 they are pub/sub messages."""
        while True:
            reply = connection.read_response(push_request=True)
            self._silent_checks = 0
            if reply == b"PONG" or (isinstance(reply, list) and reply and reply[0] == b"pong"):
                self._pings = max(0, self._pings - 1)
            if not connection.can_read(timeout=0):
                return True

    def _poll_error(self, type: str, **options: Any) -> None:
        channel: Any = self
        if type == "BRPOP":
            channel.client.connection.disconnect()
            return
        super()._poll_error(type, **options)  # type: ignore[misc]

    def check_watch(self) -> None:
        """Timer: a ``PING`` on the watching connection (its reply also triggers a fetch, a
        safety net under the pushes). Three checks in a row that had credit and found
        nothing read since, with a ``PING`` outstanding, mean a half-open connection: it
        is dropped, and the poller reconnects it. Without credit the connection is paused
        (kombu stops polling it), so its replies wait unread and prove nothing."""
        channel: Any = self
        watched = self._watched
        if not watched or channel._in_poll is not watched[0]:
            return
        connection = watched[0]
        if self._queues_changed():
            return
        if not channel.qos.can_consume():
            self._silent_checks = 0
            return
        self._silent_checks = self._silent_checks + 1 if self._pings else 0
        if self._silent_checks >= 3:
            log.warning("the Redis connection watching the queues stopped answering; reconnecting")
            self._silent_checks = 0
            connection.disconnect()
            return
        try:
            self._ask_for_fetch(connection)
        except channel.connection_errors:
            connection.disconnect()

    # -- fetching -----------------------------------------------------------------------
    def fetch(self, budget: int) -> int:
        """Take up to ``budget`` messages with :data:`_FETCH` and deliver them; how many
        were taken (dropped malformed ones included)."""
        channel: Any = self
        queues = channel._queue_cycle.consume(len(channel.active_queues))
        if not queues:
            return 0
        steps = channel.priority_steps
        keys = [channel._q_for_pri(queue, pri) for pri in steps for queue in queues]
        live = channel._tag_to_queue
        unrecorded = {queue for tag, queue in self._no_ack_tags.items() if tag in live}
        record = ["0" if queue in unrecorded else "1" for _pri in steps for queue in queues]
        qos: Any = channel.qos
        keys += [
            qos.unacked_key,
            qos.unacked_index_key,
            inflight_key(self.consumer_id),
            CONSUMERS_KEY,
        ]
        with self.conn_or_acquire() as client:
            items = self._run(client, _FETCH, keys, [budget, self.consumer_id, *record])
        rotated = False
        for i in range(0, len(items or ()), 2):
            key, item = bytes_to_str(items[i]), items[i + 1]
            queue = key.rsplit(channel.sep, 1)[0]
            if not rotated:
                channel._queue_cycle.rotate(queue)
                rotated = True
            self._deliver_one(queue, item)
        return len(items or ()) // 2

    def _run(self, client: Any, script: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA of a script of this module, loading it when the server lacks it (the
        first call, and after a flush or a restart of the server)."""
        sha = _SHAS.get(script)
        if sha is not None:
            try:
                return client.evalsha(sha, len(keys), *keys, *args)
            except NoScriptError:
                pass
        _SHAS[script] = client.script_load(script)
        return client.evalsha(_SHAS[script], len(keys), *keys, *args)

    def _deliver_one(self, queue: str, item: bytes) -> None:
        channel: Any = self
        try:
            message = loads(bytes_to_str(item))
        except DATA_ERRORS as exc:
            log.error("dropped a malformed message from %s: %s", queue, exc)
            count_dropped()
            self._forget_raw(item)
            return
        channel.connection._deliver(message, queue)

    def _forget_raw(self, item: bytes) -> None:
        """The fetch recorded an item that JSON could decode but kombu could not (a bad
        ``__type__`` value): clear its record, so no restore brings it back."""
        try:
            tag = json.loads(item)["properties"]["delivery_tag"]
        except (ValueError, TypeError, KeyError, IndexError):
            return
        qos: Any = self.qos
        if isinstance(tag, str):
            qos.forget(tag)

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        while True:
            try:
                return super()._get(queue)  # kombu's Redis _get takes no timeout
            except DATA_ERRORS as exc:
                log.error("dropped a malformed message from %s: %s", queue, exc)
                count_dropped()

    # -- heartbeat and recovery -------------------------------------------------------
    def beat(self) -> None:
        """Refresh this consumer's heartbeat (only once it has consumed)."""
        channel: Any = self
        if not channel.active_queues or channel.closed:
            return
        with self.conn_or_acquire() as client:
            self._run(client, _BEAT, [CONSUMERS_KEY], [self.consumer_id])

    def recover_dead(self) -> int:
        """Requeue what consumers silent for ``consumer_dead_after`` seconds held; how
        many messages came back."""
        dead_after = float(self.consumer_dead_after)
        restored = 0
        with self.conn_or_acquire() as client:
            found = self._run(client, _DEAD, [CONSUMERS_KEY], [dead_after]) or []
            for i in range(0, len(found), 2):
                consumer, silent = bytes_to_str(found[i]), float(found[i + 1])
                if consumer == self.consumer_id:
                    continue
                held = inflight_key(consumer)
                tags = [bytes_to_str(tag) for tag in client.hkeys(held)]
                back = 0
                for tag in tags:
                    back += self._restore_tag(client, tag)
                if tags:
                    client.hdel(held, *tags)
                self._run(client, _FORGET, [CONSUMERS_KEY, held], [consumer, dead_after])
                if back:
                    log.warning(
                        "requeued %d message(s) held by consumer %s, silent for %.0f s",
                        back,
                        consumer,
                        silent,
                    )
                restored += back
        if restored:
            _count_recovered(restored)
        return restored

    def _restore_tag(self, client: Any, tag: str) -> bool:
        """Put a delivery back on its queue from the ``unacked`` hash, as kombu's
        ``restore_by_tag`` does (a transaction that ``WATCH``es the hash, so of two
        workers restoring the same tag one finds it gone); whether this call did."""
        channel: Any = self
        qos: Any = self.qos

        def restore(pipe: Any) -> bool:
            entry = pipe.hget(qos.unacked_key, tag)
            pipe.multi()
            qos._remove_from_indices(tag, pipe)
            if entry:
                payload, exchange, routing_key = loads(bytes_to_str(entry))
                channel._do_restore_message(payload, exchange, routing_key, pipe)
            return bool(entry)

        return bool(client.transaction(restore, qos.unacked_key, value_from_callable=True))

    def close(self) -> None:
        channel: Any = self
        if not channel.closed and self._watched:
            # Kombu's close reads a BRPOP reply still in flight, which may hold a popped
            # message. Nothing is ever popped on the watching connection: nothing to read.
            channel._in_poll = None
            self._watched = None
            try:
                # What this channel holds goes back to its queues now (kombu would do it
                # further down, once), then no heartbeat is left to go stale.
                channel.qos.restore_unacked_once()
                with self.conn_or_acquire() as client:
                    self._run(
                        client,
                        _FORGET,
                        [CONSUMERS_KEY, inflight_key(self.consumer_id)],
                        [self.consumer_id, 0],
                    )
            except (*channel.connection_errors, AttributeError) as exc:
                log.debug("could not forget consumer %s on close: %r", self.consumer_id, exc)
        super().close()


_SHAS: dict[str, str] = {}


class Transport(kombu_redis.Transport):
    """``redis://`` with :class:`Channel`, delivering only well-formed envelopes, with a
    timer for the heartbeats, the watch health check and dead-consumer recovery."""

    Channel = Channel

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)
        cycle: Any = self.cycle
        old = getattr(cycle, "_pynomaly_upkeep", None)
        if old is not None:
            old.cancel()
        options = getattr(self.client, "transport_options", None) or {}
        upkeep = _Upkeep(cycle, float(options.get("consumer_dead_after", DEFAULT_DEAD_AFTER)))
        upkeep.start(loop)
        cycle._pynomaly_upkeep = upkeep

    def _deliver(self, message: Any, queue: str | None) -> None:
        problem = envelope_problem(message)
        if problem is not None:
            log.error("dropped a malformed message from %s: %s", queue, problem)
            count_dropped()
            tag = _delivery_tag(message)
            if tag is not None:
                self._forget(tag)
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
            count_dropped()
            self._forget(message["properties"]["delivery_tag"])

    def _forget(self, delivery_tag: str) -> None:
        """Clear a dropped delivery's records, so no restore brings the same poison back."""
        for channel in self.channels or ():
            qos: Any = channel.qos
            if delivery_tag in qos._delivered:
                qos.reject(delivery_tag, requeue=False)
                return
        for channel in self.channels or ():
            if isinstance(channel, Channel):
                qos = channel.qos
                qos.forget(delivery_tag)
                return


class _Upkeep:
    """The event loop's timers for the consuming channels of one connection: heartbeats
    and the watch health check every ``dead_after / 6`` seconds, dead-consumer recovery
    every ``dead_after / 3``."""

    def __init__(self, cycle: Any, dead_after: float) -> None:
        self.cycle = cycle
        self.dead_after = dead_after
        self.healthy_since = time.monotonic()
        self.trefs: list[Any] = []

    def start(self, loop: Any) -> None:
        self.trefs = [
            loop.call_repeatedly(max(1.0, self.dead_after / 6), self.beat),
            loop.call_repeatedly(max(1.0, self.dead_after / 3), self.recover),
        ]

    def cancel(self) -> None:
        for tref in self.trefs:
            tref.cancel()

    def _consuming(self) -> list[Any]:
        return [c for c in list(self.cycle._channels) if isinstance(c, Channel) and c._watched]

    def beat(self) -> None:
        for channel in self._consuming():
            try:
                channel.beat()
                channel.check_watch()
            except channel.connection_errors:
                self.healthy_since = time.monotonic()
                return

    def recover(self) -> None:
        # After an outage every heartbeat is old and the others may still be
        # reconnecting: only a worker connected for dead_after judges them.
        if time.monotonic() - self.healthy_since < self.dead_after:
            return
        for channel in self._consuming()[:1]:  # the records are not per channel
            try:
                channel.recover_dead()
            except channel.connection_errors:
                self.healthy_since = time.monotonic()


def _delivery_tag(message: Any) -> str | None:
    properties = message.get("properties") if isinstance(message, dict) else None
    tag = properties.get("delivery_tag") if isinstance(properties, dict) else None
    return tag if isinstance(tag, str) else None


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


def _count_recovered(count: int) -> None:
    from pynomaly_workers.metrics import get_metrics

    get_metrics().broker_recovered.inc(count)


# -- the internals relied on ------------------------------------------------------------
KOMBU_INTERNALS: tuple[tuple[Any, str], ...] = (
    (kombu_redis.Channel, "_brpop_start"),
    (kombu_redis.Channel, "_brpop_read"),
    (kombu_redis.Channel, "_poll_error"),
    (kombu_redis.Channel, "_in_poll"),
    (kombu_redis.Channel, "_brpop_sent_at"),
    (kombu_redis.Channel, "_q_for_pri"),
    (kombu_redis.Channel, "priority_steps"),
    (kombu_redis.Channel, "from_transport_options"),
    (kombu_redis.Channel, "client"),
    (kombu_redis.Channel, "_create_client"),
    (kombu_redis.QoS, "_remove_from_indices"),
    (kombu_redis.QoS, "restore_by_tag"),
    (kombu_redis.QoS, "unacked_key"),
    (kombu_redis.QoS, "unacked_index_key"),
    (kombu_virtual.QoS, "can_consume_max_estimate"),
    (kombu_virtual.QoS, "_flush"),
    (kombu_redis.MultiChannelPoller, "_register_BRPOP"),
    (kombu_redis.MultiChannelPoller, "on_readable"),
    (kombu_redis.Transport, "register_with_event_loop"),
)


def missing_internals() -> list[str]:
    """The kombu internals this module relies on that the installed kombu lacks."""
    missing = [
        f"{owner.__name__}.{name}" for owner, name in KOMBU_INTERNALS if not hasattr(owner, name)
    ]
    channel_init = kombu_redis.Channel.__init__.__code__.co_names
    if "_queue_cycle" not in channel_init:
        missing.append("Channel._queue_cycle")
    if "_delivered" not in kombu_virtual.QoS.__init__.__code__.co_names:
        missing.append("virtual.QoS._delivered")
    virtual_init = kombu_virtual.Channel.__init__.__code__.co_names
    missing += [
        f"virtual.Channel.{name}" for name in ("_tag_to_queue",) if name not in virtual_init
    ]
    return missing
