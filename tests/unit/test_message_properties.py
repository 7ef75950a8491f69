"""Property-based tests of the two gates every message passes: the broker channel's
envelope decoder and the contract's kwargs validator. Whatever a producer sends is either
accepted or refused with the documented error type and a message naming what was wrong;
nothing else escapes (anything else would stop a worker or be retried as transient)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pynomaly_workers.adapters.broker import MalformedMessage, decode_envelope
from pynomaly_workers.domain.errors import InvalidInput
from pynomaly_workers.domain.jobs import parse_detection_request, parse_training_request
from pynomaly_workers.domain.records import RecordLimits
from tests.strategies import (
    JSON,
    KOMBU_TYPED,
    damaged_envelopes,
    detect_kwargs,
    envelope,
    raw_items,
)

LIMITS = RecordLimits(max_records=50, max_features=8)
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Words one of which an error about the kwargs must contain: the argument it is about.
ARGUMENT_WORDS = (
    "job_id",
    "model",
    "record",  # records, record_ids, "record 3 has ..."
    "dataset",
    "source",
    "timestamp",
    "feature",
    "argument",  # unknown argument(s) ...
    "algorithm",
    "contamination",
    "params",
    "name",
)


@PROPERTY
@given(raw_items)
@example(b'{"__type__": "datetime", "__value__": 5}')
@example(b"\xff\xfe")
@example(json.dumps(envelope({"model": "m"}) | {"headers": {"task": ["x"]}}).encode())
def test_the_decoder_returns_an_envelope_or_says_what_is_wrong(raw: bytes) -> None:
    message, refusal = _decode(raw)
    if message is None:
        assert refusal.strip()
        return
    assert isinstance(message["body"], str)
    assert isinstance(message["properties"]["delivery_tag"], str)
    assert isinstance(message.get("headers", {}).get("task", ""), str)


def _decode(raw: bytes | str) -> tuple[dict[str, Any] | None, str]:
    """The envelope, or None and why not; any error but MalformedMessage escapes."""
    try:
        return decode_envelope(raw), ""
    except MalformedMessage as exc:
        return None, str(exc)


def _refusal(parse: Callable[[], object]) -> str | None:
    """Why ``parse`` refused its input (None if it accepted); any error but the documented
    InvalidInput family escapes and fails the test."""
    try:
        parse()
    except InvalidInput as exc:
        return str(exc)
    return None


@PROPERTY
@given(damaged_envelopes())
def test_a_damaged_envelope_is_refused_or_still_well_typed(message: dict[str, Any]) -> None:
    decoded, refusal = _decode(json.dumps(message))
    if decoded is None:
        assert refusal.strip()
        return
    assert isinstance(decoded["properties"]["delivery_info"], dict)


@PROPERTY
@given(KOMBU_TYPED)
def test_kombu_typed_values_never_escape_as_other_errors(value: dict[str, Any]) -> None:
    with pytest.raises(MalformedMessage):
        decode_envelope(json.dumps({"body": "", "properties": value}))


def _named_argument(message: str) -> bool:
    return any(word in message for word in ARGUMENT_WORDS)


@PROPERTY
@given(detect_kwargs)
@example({"model": "m@" + "9" * 5000, "records": [[1.0]]})
@example({"model": "m", "records": [[2**64]]})
@example({"model": "m", "records": [[1.0]], "timestamps": [1e300]})
@example({"model": "m", "records": [[1.0]], "record_ids": [True]})
def test_detect_kwargs_are_accepted_or_refused_with_the_argument_named(
    kwargs: dict[str, Any],
) -> None:
    refusal = _refusal(
        lambda: parse_detection_request(kwargs, default_job_id="job-1", limits=LIMITS)
    )
    if refusal is not None:
        assert _named_argument(refusal), refusal
        return
    assert set(kwargs) <= {
        "job_id",
        "model",
        "records",
        "dataset",
        "source",
        "record_ids",
        "timestamps",
    }


train_kwargs = st.dictionaries(
    st.sampled_from(
        ["model", "algorithm", "records", "dataset", "source", "contamination", "params"]
    )
    | st.text(max_size=8),
    JSON,
    max_size=5,
) | st.fixed_dictionaries(
    {
        "model": st.text(max_size=10),
        "records": st.lists(st.lists(st.floats(), max_size=3), max_size=3),
    },
    optional={
        "algorithm": st.text(max_size=8) | JSON,
        "contamination": st.floats() | JSON,
        "params": JSON,
    },
)


@PROPERTY
@given(train_kwargs)
@example({"model": "m", "records": [[1.0]], "contamination": True})
@example({"model": "m", "records": [[1.0]], "algorithm": ["iforest"]})
def test_train_kwargs_are_accepted_or_refused_with_the_argument_named(
    kwargs: dict[str, Any],
) -> None:
    refusal = _refusal(lambda: parse_training_request(kwargs, limits=LIMITS))
    if refusal is not None:
        assert _named_argument(refusal), refusal
        return
    assert 0 < parse_training_request(kwargs, limits=LIMITS).contamination < 0.5
