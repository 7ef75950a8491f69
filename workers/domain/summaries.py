"""Short, bounded text forms of task arguments and results, for operators' screens.

Flower and the task events show these instead of the arguments themselves: a detection
job's ``records`` can be 100,000 rows, which must never reach an event, a log line or a
result backend.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MAX_REPR = 256
MAX_VALUE = 64


def kwargs_summary(kwargs: Mapping[str, Any], *, limit: int = MAX_REPR) -> str:
    """``{'job_id': 'a', 'model': 'm', 'records': <300 rows x 4>}``, at most ``limit``
    characters: lists become their shape, long strings are cut."""
    parts = [f"{key!r}: {_value(value)}" for key, value in kwargs.items()]
    return _cut("{" + ", ".join(parts) + "}", limit)


def result_summary(result: Any, *, limit: int = MAX_REPR) -> str:
    """A job summary (or any result) in one short line."""
    if isinstance(result, Mapping) and "n_records" in result:
        text = (
            f"{result.get('status', 'succeeded')}: {result['n_records']} records, "
            f"{result.get('n_anomalies', 0)} anomalies, model {result.get('model')}"
            f"@{result.get('model_version')}"
        )
        return _cut(text, limit)
    if isinstance(result, Mapping):
        return kwargs_summary(result, limit=limit)
    return _cut(repr(result), limit)


def _value(value: Any) -> str:
    if isinstance(value, list | tuple):
        if value and isinstance(value[0], list | tuple):
            return f"<{len(value)} rows x {len(value[0])}>"
        return f"<{len(value)} items>"
    if isinstance(value, Mapping):
        return _cut(repr(dict(value)), MAX_VALUE)
    if isinstance(value, str):
        return repr(_cut(value, MAX_VALUE))
    return _cut(repr(value), MAX_VALUE)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


_URL_SECRET = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):(?P<secret>[^@\s]+)@")


def mask_secrets(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` URL masked."""
    return _URL_SECRET.sub(r"\g<head>:***@", text)
