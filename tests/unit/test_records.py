"""Validation of inline records: JSON lists in, a float64 matrix or a precise error out."""

from __future__ import annotations

import re

import numpy as np
import pytest

from pynomaly_workers.domain.errors import InvalidInput, InvalidRecords, PayloadTooLarge
from pynomaly_workers.domain.records import RecordLimits, check_finite, check_width, to_matrix

LIMITS = RecordLimits(max_records=1_000, max_features=64)


# --- valid input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ([[1, 2], [3, 4]], [[1.0, 2.0], [3.0, 4.0]]),
        ([[1.5, -2.25]], [[1.5, -2.25]]),
        ([[0]], [[0.0]]),
        ([[1, 2.5], [3.5, 4]], [[1.0, 2.5], [3.5, 4.0]]),
        (((1, 2), (3, 4)), [[1.0, 2.0], [3.0, 4.0]]),
        ([[-(2**63), 2**63 - 1]], [[-(2.0**63), 2.0**63]]),
        ([[1e-300, 1e300]], [[1e-300, 1e300]]),
    ],
    ids=["ints", "floats", "single-zero", "mixed", "tuples", "int64-bounds", "tiny-and-huge"],
)
def test_valid_records_become_a_float64_matrix(
    records: object, expected: list[list[float]]
) -> None:
    # When
    matrix = to_matrix(records, limits=LIMITS)

    # Then
    assert matrix.dtype == np.float64
    assert matrix.ndim == 2
    assert matrix.flags.c_contiguous
    np.testing.assert_array_equal(matrix, np.array(expected, dtype=np.float64))


def test_matrix_shape_is_rows_by_features() -> None:
    records = [[float(i), float(i) * 2, float(i) * 3] for i in range(7)]

    matrix = to_matrix(records, limits=LIMITS)

    assert matrix.shape == (7, 3)
    assert matrix[6].tolist() == [6.0, 12.0, 18.0]


def test_matrix_is_a_copy_not_a_view_of_the_input() -> None:
    # Given
    records = [[1.0, 2.0]]

    # When
    matrix = to_matrix(records, limits=LIMITS)
    records[0][0] = 99.0

    # Then
    assert matrix[0, 0] == 1.0


# --- wrong container ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "type_name"),
    [("1,2,3", "str"), (b"\x01", "bytes"), (5, "int"), (None, "NoneType"), ({"a": 1}, "dict")],
)
def test_records_that_are_not_a_list_are_rejected(records: object, type_name: str) -> None:
    with pytest.raises(
        InvalidRecords, match=f"records must be a list of numeric lists, got {type_name}"
    ):
        to_matrix(records, limits=LIMITS)


@pytest.mark.parametrize("records", [[], ()])
def test_empty_records_are_rejected(records: object) -> None:
    with pytest.raises(InvalidRecords, match="records is empty: send at least one row"):
        to_matrix(records, limits=LIMITS)


# --- ragged rows -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([[1, 2], [3]], "record 0 has 2 values, record 1 has 1"),
        ([[1], [2], [3, 4]], "record 0 has 1 values, record 2 has 2"),
        ([[1, 2], [3, 4], [5, 6], [7, 8, 9]], "record 0 has 2 values, record 3 has 3"),
        ([[1, 2, 3], []], "record 0 has 3 values, record 1 has 0"),
    ],
)
def test_ragged_rows_name_the_first_row_of_a_different_length(
    records: list[list[int]], message: str
) -> None:
    with pytest.raises(InvalidRecords, match="must all have the same length") as caught:
        to_matrix(records, limits=LIMITS)

    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("records", "index", "type_name"),
    [
        ([1, 2, 3], 0, "int"),
        ([[1, 2], 5], 1, "int"),
        ([5, [1, 2]], 0, "int"),
        ([[1, 2], "ab"], 1, "str"),
        ([[1, 2], None], 1, "NoneType"),
        ([{"a": 1}], 0, "dict"),
        ([[1.0], [2.0], {"x": 1.0}], 2, "dict"),
    ],
    ids=["flat-list", "int-row-last", "int-row-first", "str-row", "none-row", "dict", "dict-late"],
)
def test_a_row_that_is_not_a_list_is_named(records: object, index: int, type_name: str) -> None:
    with pytest.raises(
        InvalidRecords, match=f"^record {index} must be a list of numbers, got {type_name}$"
    ):
        to_matrix(records, limits=LIMITS)


# --- non-numeric values ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "index", "feature", "value"),
    [
        ([[1, "2"]], 0, 1, "2"),
        ([["a", 1]], 0, 0, "a"),
        ([[1.0, 2.0], [3.0, "nan"]], 1, 1, "nan"),
        ([[1, 2], [3, None]], 1, 1, None),
        ([[None]], 0, 0, None),
        ([[True, False]], 0, 0, True),
        ([[1, True]], 0, 1, True),
        ([[1.5, 2.5], [3.5, False]], 1, 1, False),
        ([[0, 1], [1, 0], [True, 0]], 2, 0, True),
        ([[[1, 2]]], 0, 0, [1, 2]),
        ([[1, 2], [3, [4]]], 1, 1, [4]),
        ([[1, {"x": 1}]], 0, 1, {"x": 1}),
    ],
    ids=[
        "string",
        "string-first",
        "string-nan",
        "none",
        "only-none",
        "only-bools",
        "bool-among-ints",
        "bool-among-floats",
        "bool-in-later-row",
        "nested-list",
        "nested-list-later-row",
        "object",
    ],
)
def test_non_numeric_values_name_the_record_and_feature(
    records: object, index: int, feature: int, value: object
) -> None:
    expected = f"record {index} has a non-numeric value {value!r} at feature {feature}"

    with pytest.raises(InvalidRecords, match=re.escape(expected)):
        to_matrix(records, limits=LIMITS)


# --- non-finite values -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "index", "feature"),
    [
        ([[float("nan"), 1.0]], 0, 0),
        ([[1.0, 2.0], [3.0, float("inf")]], 1, 1),
        ([[1.0], [2.0], [3.0], [float("-inf")]], 3, 0),
        ([[1.0, 2.0], [float("nan"), float("inf")], [float("inf"), 0.0]], 1, 0),
    ],
    ids=["nan", "inf", "minus-inf", "first-of-several"],
)
def test_non_finite_values_name_the_record_index(
    records: list[list[float]], index: int, feature: int
) -> None:
    with pytest.raises(
        InvalidRecords, match=rf"^record {index} has a non-finite value .* at feature {feature};"
    ) as caught:
        to_matrix(records, limits=LIMITS)

    assert "NaN and infinity cannot be scored" in str(caught.value)


@pytest.mark.parametrize("first_index", [0, 1, 250, 10_000])
def test_check_finite_offsets_the_row_by_the_chunk_start(first_index: int) -> None:
    # Given the third row of a chunk that starts at first_index holds NaN
    matrix = np.zeros((5, 2))
    matrix[2, 1] = np.nan

    # Then the message names the row's index in the whole job
    with pytest.raises(
        InvalidRecords, match=rf"^record {first_index + 2} has a non-finite value .* at feature 1"
    ):
        check_finite(matrix, first_index=first_index)


def test_check_finite_accepts_finite_matrices() -> None:
    matrix = np.array([[0.0, -1e308], [1e308, 5e-324]])

    check_finite(matrix, first_index=3)  # no exception


# --- size limits -------------------------------------------------------------------------


@pytest.mark.parametrize(("n_records", "limit"), [(2, 1), (11, 10), (1_001, 1_000)])
def test_too_many_records_advise_a_source_file(n_records: int, limit: int) -> None:
    limits = RecordLimits(max_records=limit, max_features=8)
    records = [[1.0, 2.0]] * n_records

    with pytest.raises(
        PayloadTooLarge, match=f"{n_records} records exceed the limit of {limit}"
    ) as caught:
        to_matrix(records, limits=limits)

    assert "'source'" in str(caught.value)
    assert "CSV/Parquet" in str(caught.value)


@pytest.mark.parametrize(("width", "limit"), [(2, 1), (9, 8), (65, 64)])
def test_too_many_features_are_rejected(width: int, limit: int) -> None:
    limits = RecordLimits(max_records=10, max_features=limit)

    with pytest.raises(PayloadTooLarge, match=f"^{width} features exceed the limit of {limit}$"):
        to_matrix([[0.5] * width], limits=limits)


def test_records_exactly_at_both_limits_are_accepted() -> None:
    limits = RecordLimits(max_records=3, max_features=4)

    matrix = to_matrix([[1.0] * 4] * 3, limits=limits)

    assert matrix.shape == (3, 4)


def test_payload_too_large_is_an_input_error_not_a_transient_one() -> None:
    limits = RecordLimits(max_records=1, max_features=1)

    with pytest.raises(InvalidInput) as caught:
        to_matrix([[1.0], [2.0]], limits=limits)

    assert caught.value.code == "payload_too_large"


# --- zero-width rows ---------------------------------------------------------------------


@pytest.mark.parametrize("records", [[[]], [[], []], [(), ()]])
def test_zero_width_rows_are_rejected(records: object) -> None:
    with pytest.raises(InvalidRecords, match="records have zero features"):
        to_matrix(records, limits=LIMITS)


# --- width against the model -------------------------------------------------------------


@pytest.mark.parametrize(("width", "expected"), [(3, 4), (5, 4), (1, 2)])
def test_check_width_says_both_widths_and_the_model(width: int, expected: int) -> None:
    matrix = np.zeros((2, width))

    with pytest.raises(
        InvalidRecords,
        match=f"^records have {width} features but model fraud@2 expects {expected}$",
    ):
        check_width(matrix, n_features=expected, model="fraud@2")


def test_check_width_accepts_the_model_width() -> None:
    check_width(np.zeros((3, 4)), n_features=4, model="fraud@2")  # no exception


def test_invalid_records_errors_carry_their_code() -> None:
    with pytest.raises(InvalidInput) as caught:
        to_matrix([[1, "x"]], limits=LIMITS)

    assert isinstance(caught.value, InvalidRecords)
    assert caught.value.code == "invalid_records"
