"""What a message on a queue must look like before a worker hands it to Celery.

Anything can LPUSH onto a queue list, so one bad producer could take every worker down in
turn: kombu's Redis channel decodes each popped message inside the worker's event loop, and
a body that is not JSON raises there and stops the whole worker ("Unrecoverable error",
celery/celery#4308). The transports check each envelope here and drop (and count) what
cannot be delivered: it was already taken off its queue, no worker can decode it, and
retrying it would only repeat the crash.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from kombu.utils.json import loads

DATA_ERRORS = (TypeError, ValueError, KeyError, IndexError, AttributeError, ArithmeticError)
"""What decoding a malformed item, or handing a malformed message to Celery, raises;
never a connection error (those are ``OSError`` or kombu/redis errors, and must reach
Celery so it reconnects)."""


def count_dropped() -> None:
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
