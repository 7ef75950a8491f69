"""Validation of numeric records: turns JSON lists into a float64 matrix or says why not."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, TypeGuard

import numpy as np
import numpy.typing as npt

from pynomaly_workers.domain.errors import InvalidRecords, PayloadTooLarge

Matrix = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class RecordLimits:
    """How much one message may carry inline; larger inputs go through ``source``."""

    max_records: int
    max_features: int


def to_matrix(records: object, *, limits: RecordLimits) -> Matrix:
    """Convert ``records`` (a list of equal-length numeric lists) to a 2-D float64 matrix.

    Raises :class:`InvalidRecords` or :class:`PayloadTooLarge` with a message naming the
    first offending row, so the caller can fix the payload.
    """
    if not isinstance(records, Sequence) or isinstance(records, str | bytes):
        raise InvalidRecords(
            f"records must be a list of numeric lists, got {type(records).__name__}"
        )
    if len(records) == 0:
        raise InvalidRecords("records is empty: send at least one row of numbers")
    if len(records) > limits.max_records:
        raise PayloadTooLarge(
            f"{len(records)} records exceed the limit of {limits.max_records} per message; "
            "write them to a CSV/Parquet file and pass it as 'source' instead"
        )
    matrix = _as_numeric_array(records)
    if matrix.shape[1] > limits.max_features:
        raise PayloadTooLarge(
            f"{matrix.shape[1]} features exceed the limit of {limits.max_features}"
        )
    check_finite(matrix)
    return matrix


def check_width(matrix: Matrix, *, n_features: int, model: str) -> None:
    """Raise unless every row has the model's feature count."""
    if matrix.shape[1] != n_features:
        raise InvalidRecords(
            f"records have {matrix.shape[1]} features but model {model} expects {n_features}"
        )


def check_finite(matrix: Matrix, *, first_index: int = 0) -> None:
    """Raise on the first row holding NaN or ±inf."""
    finite = np.isfinite(matrix)
    if finite.all():
        return
    row, col = np.argwhere(~finite)[0]
    raise InvalidRecords(
        f"record {first_index + int(row)} has a non-finite value ({matrix[row, col]!r}) "
        f"at feature {int(col)}; NaN and infinity cannot be scored"
    )


def _as_numeric_array(records: Sequence[object]) -> Matrix:
    try:
        array = np.asarray(records)
    except ValueError:
        raise InvalidRecords(_describe_ragged(records)) from None
    # numpy turns True into 1 when it sits among numbers; JSON booleans are not features.
    if array.dtype.kind not in "iuf" or array.ndim != 2 or _holds_bool(records):
        raise InvalidRecords(_describe_bad_row(records))
    if array.shape[1] == 0:
        raise InvalidRecords("records have zero features: each row needs at least one number")
    return np.ascontiguousarray(array, dtype=np.float64)


def _holds_bool(rows: Sequence[Any]) -> bool:
    return bool in set(map(type, chain.from_iterable(rows)))


def _describe_ragged(records: Sequence[object]) -> str:
    widths = [len(row) if _is_row(row) else -1 for row in records]
    if -1 in widths:
        return _describe_bad_row(records)
    first = widths[0]
    for index, width in enumerate(widths):
        if width != first:
            return (
                f"records must all have the same length: record 0 has {first} values, "
                f"record {index} has {width}"
            )
    return _describe_bad_row(records)


def _describe_bad_row(records: Sequence[object]) -> str:
    for index, row in enumerate(records):
        if not _is_row(row):
            return f"record {index} must be a list of numbers, got {type(row).__name__}"
        for position, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, int | float):
                return (
                    f"record {index} has a non-numeric value {value!r} at feature {position}; "
                    "only JSON numbers can be scored"
                )
    return "records must be a list of equal-length lists of numbers"


def _is_row(row: object) -> TypeGuard[Sequence[object]]:
    return isinstance(row, Sequence) and not isinstance(row, str | bytes)
