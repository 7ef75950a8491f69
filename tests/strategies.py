"""Hypothesis strategies for what producers can put on the broker: JSON of any shape,
envelopes with one part wrong, and ``pynomaly.detect`` kwargs of every wrong kind."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from hypothesis import strategies as st

from pynomaly_workers.contract import DETECT_TASK, DETECTION_QUEUE

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
"""Any JSON value (what json.loads can return)."""

KOMBU_TYPED = st.fixed_dictionaries(
    {
        "__type__": st.sampled_from(["datetime", "date", "time", "decimal", "uuid", "bytes"]),
        "__value__": JSON,
    }
)
"""kombu's JSON for non-JSON types ({"__type__": "datetime", "__value__": ...}), with a
value of any type: kombu decodes these while reading a message off the queue."""


def envelope(kwargs: Any, *, task: Any = DETECT_TASK, task_id: str | None = None) -> dict[str, Any]:
    """The Celery protocol-2 envelope the Redis transport stores (README, any language)."""
    task_id = task_id or str(uuid.uuid4())
    body = [[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    return {
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "retries": 0},
        "properties": {
            "correlation_id": task_id,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": DETECTION_QUEUE},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@st.composite
def damaged_envelopes(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed envelope with one part replaced by arbitrary JSON or bytes."""
    message = envelope({"model": "m", "records": [[1.0]]})
    part = draw(
        st.sampled_from(
            [
                "body",
                "raw-body",
                "headers",
                "task",
                "id",
                "properties",
                "delivery_tag",
                "delivery_info",
                "body_encoding",
                "content-type",
                "content-encoding",
                "drop",
            ]
        )
    )
    value = draw(JSON)
    if part == "body":
        message["body"] = _b64(json.dumps(value).encode())
    elif part == "raw-body":
        message["body"] = _b64(draw(st.binary(max_size=64)))
    elif part in ("task", "id"):
        message["headers"][part] = value
    elif part in ("delivery_tag", "delivery_info", "body_encoding"):
        message["properties"][part] = value
    elif part == "drop":
        key = draw(st.sampled_from(sorted(message)))
        del message[key]
    else:
        message[part] = value
    return message


DETECT_KEYS = ("job_id", "model", "records", "dataset", "source", "record_ids", "timestamps")
detect_kwargs = st.dictionaries(
    st.sampled_from(DETECT_KEYS) | st.text(max_size=10), JSON, max_size=5
) | st.fixed_dictionaries(
    {
        "model": st.text(max_size=10) | JSON,
        "records": st.lists(st.lists(SCALARS, max_size=3), max_size=3) | JSON,
    },
    optional={
        "job_id": st.text(max_size=140) | JSON,
        "record_ids": JSON,
        "timestamps": st.lists(SCALARS, max_size=3) | JSON,
    },
)
"""``pynomaly.detect`` kwargs: arbitrary keys and values, and the right keys with values of
any type."""

raw_items = (
    st.binary(max_size=200)
    | JSON.map(lambda v: json.dumps(v).encode())
    | KOMBU_TYPED.map(lambda v: json.dumps({"body": "", "properties": v}).encode())
    | KOMBU_TYPED.map(lambda v: json.dumps(v).encode())
    | damaged_envelopes().map(lambda v: json.dumps(v).encode())
    | detect_kwargs.map(lambda kw: json.dumps(envelope(kw)).encode())
)
"""Anything a producer could LPUSH onto a queue list."""
