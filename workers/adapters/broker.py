"""The Redis broker transport, hardened against malformed messages.

Kombu's Redis channel decodes each popped message inside the worker's event loop; a body
that is not JSON raises there and stops the whole worker ("Unrecoverable error",
celery/celery#4308). Anything can LPUSH onto a queue list, so one bad producer could take
every worker down in turn. This channel logs and drops such a message instead: it was
already removed from the list, cannot be decoded by any worker, and retrying it would
only repeat the crash.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any

from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)

TRANSPORT = "pynomaly_workers.adapters.broker:Transport"


class Channel(kombu_redis.Channel):
    """A Redis channel that survives undecodable messages."""

    def _brpop_read(self, **options: Any) -> bool:
        try:
            return bool(super()._brpop_read(**options))  # type: ignore[misc]
        except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError
            log.error("dropped a malformed broker message (not a JSON envelope): %s", exc)
            return True

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        while True:
            try:
                return super()._get(queue)  # kombu's Redis _get takes no timeout
            except ValueError as exc:
                log.error("dropped a malformed message from %s: %s", queue, exc)


class Transport(kombu_redis.Transport):
    """``redis://`` with :class:`Channel`, delivering only well-formed envelopes."""

    Channel = Channel

    def _deliver(self, message: Any, queue: str | None) -> None:
        problem = envelope_problem(message)
        if problem is not None:
            log.error("dropped a malformed message from %s: %s", queue, problem)
            return
        super()._deliver(message, queue)


def envelope_problem(message: Any) -> str | None:
    """Why ``message`` is not a kombu message envelope, or None if it is one."""
    if not isinstance(message, dict):
        return f"the envelope is a JSON {type(message).__name__}, not an object"
    properties = message.get("properties")
    if not isinstance(properties, dict):
        properties = {}
    checks = (
        (isinstance(properties.get("delivery_info"), dict), "no 'properties.delivery_info'"),
        ("delivery_tag" in properties, "no 'properties.delivery_tag'"),
        (isinstance(message.get("headers", {}), dict), "'headers' is not an object"),
        (isinstance(message.get("body"), str), "'body' is not a string"),
    )
    for ok, problem in checks:
        if not ok:
            return problem
    if properties.get("body_encoding") == "base64" and not _is_base64(message["body"]):
        return "'body' is not valid base64"
    return None


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True
