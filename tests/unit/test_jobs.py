"""Detection and training messages, top anomalies, the job summary and chunk planning."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from pynomaly_workers.contract import JOB_STATUSES
from pynomaly_workers.domain.errors import (
    InvalidInput,
    InvalidMessage,
    InvalidRecords,
    PayloadTooLarge,
)
from pynomaly_workers.domain.jobs import (
    DatasetInput,
    DetectionRequest,
    InlineRecords,
    JobSummary,
    SourceInput,
    TopAnomaly,
    TrainingRequest,
    check_job_id,
    merge_top,
    parse_detection_request,
    parse_timestamp,
    parse_training_request,
    rows_per_chunk,
    split_rows,
    top_anomalies,
)
from pynomaly_workers.domain.models import ALGORITHMS, ModelRef
from pynomaly_workers.domain.records import RecordLimits

LIMITS = RecordLimits(max_records=1_000, max_features=32)
DEFAULT_JOB_ID = "job-default"
ROWS = [[0.1, 0.2], [0.3, 0.4]]
DETECT_KEYS = (
    "dataset, entities, entity_field, job_id, model, record_ids, records, source, timestamps"
)
TRAIN_KEYS = "algorithm, contamination, dataset, model, params, records, source"


def detect(**kwargs: Any) -> DetectionRequest:
    """Parse a ``pynomaly.detect`` message with the test defaults."""
    return parse_detection_request(kwargs, default_job_id=DEFAULT_JOB_ID, limits=LIMITS)


def detect_rows(**kwargs: Any) -> InlineRecords:
    """Parse a detection message carrying ``ROWS`` inline and return its input."""
    request = detect(model="m", records=ROWS, **kwargs)
    assert isinstance(request.input, InlineRecords)
    return request.input


def train(**kwargs: Any) -> TrainingRequest:
    """Parse a ``pynomaly.train`` message with the test limits."""
    return parse_training_request(kwargs, limits=LIMITS)


# === parse_detection_request: inputs =====================================================


def test_inline_records_become_a_matrix() -> None:
    # When
    request = detect(job_id="j1", model="fraud@3", records=ROWS)

    # Then
    assert request.job_id == "j1"
    assert request.model == ModelRef("fraud", 3)
    assert isinstance(request.input, InlineRecords)
    np.testing.assert_array_equal(request.input.matrix, np.array(ROWS))
    assert request.input.record_ids is None
    assert request.input.timestamps is None


def test_a_dataset_is_referenced_by_name() -> None:
    request = detect(model="fraud", dataset="sales-2024")

    assert request.input == DatasetInput("sales-2024")
    assert request.model == ModelRef("fraud", None)


@pytest.mark.parametrize("source", ["/data/big.csv", "file:///data/big.parquet", "rel/x.csv"])
def test_a_source_is_kept_as_given(source: str) -> None:
    request = detect(model="fraud", source=source)

    assert request.input == SourceInput(source)


@pytest.mark.parametrize(
    ("inputs", "got"),
    [
        ({}, None),
        ({"records": None, "dataset": None, "source": None}, None),
        ({"records": ROWS, "dataset": "d"}, "records, dataset"),
        ({"dataset": "d", "source": "/x.csv"}, "dataset, source"),
        ({"records": ROWS, "source": "/x.csv"}, "records, source"),
        ({"records": ROWS, "dataset": "d", "source": "/x.csv"}, "records, dataset, source"),
    ],
    ids=["none", "all-null", "records+dataset", "dataset+source", "records+source", "all-three"],
)
def test_exactly_one_input_is_required(inputs: dict[str, Any], got: str | None) -> None:
    expected = "give exactly one of 'records', 'dataset' or 'source'"
    expected += f" (got {got})" if got else ""

    with pytest.raises(InvalidMessage, match=f"^{re.escape(expected)}$"):
        detect(model="m", **inputs)


def test_null_inputs_do_not_count_towards_the_one_input_rule() -> None:
    request = detect(model="m", records=None, dataset="d", source=None)

    assert request.input == DatasetInput("d")


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("dataset", "", "dataset must be a non-empty string, got ''"),
        ("dataset", 5, "dataset must be a non-empty string, got 5"),
        ("dataset", ["d"], "dataset must be a non-empty string, got ['d']"),
        ("source", "", "source must be a non-empty string, got ''"),
        ("source", 3.5, "source must be a non-empty string, got 3.5"),
        ("source", {"path": "/x"}, "source must be a non-empty string, got {'path': '/x'}"),
    ],
)
def test_dataset_and_source_must_be_non_empty_strings(
    key: str, value: object, expected: str
) -> None:
    with pytest.raises(InvalidMessage, match=re.escape(expected)):
        detect(model="m", **{key: value})


@pytest.mark.parametrize("name", ["bad name", "-leading", "a/b", "x" * 129])
def test_a_dataset_name_follows_the_model_name_rules(name: str) -> None:
    with pytest.raises(InvalidInput, match=f"name {re.escape(repr(name))} is invalid"):
        detect(model="m", dataset=name)


def test_bad_records_surface_as_invalid_records() -> None:
    with pytest.raises(InvalidRecords, match="record 1 has a non-numeric value 'x' at feature 0"):
        detect(model="m", records=[[1.0], ["x"]])


def test_oversized_inline_records_are_refused() -> None:
    with pytest.raises(PayloadTooLarge, match="1001 records exceed the limit of 1000"):
        detect(model="m", records=[[1.0]] * 1_001)


# === parse_detection_request: message shape =============================================


@pytest.mark.parametrize(
    ("extra", "unknown"),
    [
        ({"foo": 1}, "foo"),
        ({"zeta": 1, "alpha": 2}, "alpha, zeta"),
        ({"e": 1, "c": 2, "a": 3, "d": 4, "b": 5, "f": 6}, "a, b, c, d, e, f"),
        ({"algorithm": "iforest"}, "algorithm"),
        ({"Records": ROWS}, "Records"),
    ],
)
def test_unknown_detect_arguments_are_listed_with_the_allowed_ones(
    extra: dict[str, Any], unknown: str
) -> None:
    expected = f"pynomaly.detect got unknown argument(s) {unknown}; allowed: {DETECT_KEYS}"

    with pytest.raises(InvalidMessage, match=f"^{re.escape(expected)}$"):
        detect(model="m", records=ROWS, **extra)


def test_model_is_required() -> None:
    with pytest.raises(InvalidMessage, match=r"pynomaly\.detect needs 'model'"):
        detect(records=ROWS)


@pytest.mark.parametrize("model", ["", "m@0", "bad name", 7, None])
def test_a_bad_model_reference_is_an_input_error(model: object) -> None:
    with pytest.raises(InvalidInput, match=r"^(model|name) "):
        detect(model=model, records=ROWS)


# === job ids =============================================================================


@pytest.mark.parametrize(
    "job_id", ["a", "0", "job-1", "2024-05-01T12:00:00.1", "A_b.c:d-e", "j" * 128]
)
def test_valid_job_ids_are_kept(job_id: str) -> None:
    assert check_job_id(job_id) == job_id
    assert detect(job_id=job_id, model="m", records=ROWS).job_id == job_id


@pytest.mark.parametrize(
    "job_id",
    [
        "has space",
        "-leading",
        ".leading",
        "_leading",
        "j" * 129,
        "abc\n",
        "a/b",
        "jöb",
        42,
        1.5,
        ["j"],
    ],
    ids=repr,
)
def test_invalid_job_ids_are_rejected(job_id: object) -> None:
    expected = f"job_id {job_id!r} is invalid: use 1-128 letters, digits"

    with pytest.raises(InvalidMessage, match=re.escape(expected)):
        detect(job_id=job_id, model="m", records=ROWS)


@pytest.mark.parametrize(
    "given", [{}, {"job_id": None}, {"job_id": ""}], ids=["absent", "null", "empty"]
)
def test_a_missing_job_id_falls_back_to_the_default(given: dict[str, Any]) -> None:
    request = detect(model="m", records=ROWS, **given)

    assert request.job_id == DEFAULT_JOB_ID


def test_the_default_job_id_is_validated_too() -> None:
    with pytest.raises(InvalidMessage, match="job_id 'not valid' is invalid"):
        parse_detection_request(
            {"model": "m", "records": ROWS}, default_job_id="not valid", limits=LIMITS
        )


# === record ids ==========================================================================


@pytest.mark.parametrize(
    ("record_ids", "expected"),
    [
        (["a", "b"], ("a", "b")),
        ([7, 8], ("7", "8")),
        (("x", 0), ("x", "0")),
        (["r" * 256, ""], ("r" * 256, "")),
    ],
    ids=["strings", "ints", "mixed-tuple", "longest"],
)
def test_record_ids_become_strings(record_ids: object, expected: tuple[str, ...]) -> None:
    assert detect_rows(record_ids=record_ids).record_ids == expected


@pytest.mark.parametrize(
    ("record_ids", "message"),
    [
        (["only-one"], "record_ids has 1 entries but there are 2 records"),
        (["a", "b", "c"], "record_ids has 3 entries but there are 2 records"),
        ([], "record_ids has 0 entries but there are 2 records"),
        ("ab", "record_ids must be a list with one entry per record"),
        (5, "record_ids must be a list with one entry per record"),
        ({"a": 1, "b": 2}, "record_ids must be a list with one entry per record"),
        ([True, False], "record_ids must be strings or integers"),
        (["a", None], "record_ids must be strings or integers"),
        (["a", 1.5], "record_ids must be strings or integers"),
        (["a", "r" * 257], "record_ids must be at most 256 characters each"),
    ],
)
def test_bad_record_ids_are_rejected(record_ids: object, message: str) -> None:
    with pytest.raises(InvalidRecords, match=f"^{re.escape(message)}$"):
        detect_rows(record_ids=record_ids)


# === timestamps ==========================================================================

NOON = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-05-01T12:00:00Z", NOON),
        ("2024-05-01T12:00:00+00:00", NOON),
        ("2024-05-01T14:00:00+02:00", NOON),
        ("2024-05-01T07:30:00-04:30", NOON),
        ("2024-05-01T12:00:00", NOON),
        ("2024-05-01 12:00:00", NOON),
        ("2024-05-01T12:00:00.250Z", NOON + timedelta(milliseconds=250)),
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
        (1714564800, NOON),
        (1714564800.5, NOON + timedelta(milliseconds=500)),
        (0, datetime(1970, 1, 1, tzinfo=UTC)),
        (-86400, datetime(1969, 12, 31, tzinfo=UTC)),
    ],
    ids=[
        "z",
        "utc-offset",
        "plus-two",
        "minus-four-thirty",
        "naive",
        "space-separated",
        "fraction",
        "date-only",
        "unix-int",
        "unix-float",
        "epoch",
        "before-epoch",
    ],
)
def test_timestamps_become_aware_utc_datetimes(value: object, expected: datetime) -> None:
    # When
    parsed = parse_timestamp(value, index=0)

    # Then the same instant, expressed in UTC
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)
    assert parsed.isoformat() == expected.isoformat()


@pytest.mark.parametrize(
    "value",
    [
        "yesterday",
        "",
        "2024-13-01",
        "12:00",
        True,
        False,
        None,
        [2024],
        {"t": 1},
        1e20,
        float("nan"),
        float("inf"),
    ],
    ids=repr,
)
def test_unparseable_timestamps_name_their_index_and_value(value: object) -> None:
    expected = f"timestamp 7 ({value!r}) is neither ISO-8601 text nor Unix seconds"

    with pytest.raises(InvalidRecords, match=f"^{re.escape(expected)}$"):
        parse_timestamp(value, index=7)


def test_timestamps_are_parsed_per_record() -> None:
    parsed = detect_rows(timestamps=["2024-05-01T12:00:00Z", 1714564800])

    assert parsed.timestamps == (NOON, NOON)


def test_a_bad_timestamp_in_a_message_names_its_record() -> None:
    with pytest.raises(InvalidRecords, match=r"^timestamp 1 \('soon'\) is neither"):
        detect_rows(timestamps=["2024-05-01T12:00:00Z", "soon"])


@pytest.mark.parametrize(
    ("timestamps", "message"),
    [
        ([NOON.isoformat()], "timestamps has 1 entries but there are 2 records"),
        ([0, 1, 2], "timestamps has 3 entries but there are 2 records"),
        ("2024-05-01", "timestamps must be a list with one entry per record"),
        (1714564800, "timestamps must be a list with one entry per record"),
    ],
)
def test_timestamps_must_be_one_per_record(timestamps: object, message: str) -> None:
    with pytest.raises(InvalidRecords, match=f"^{re.escape(message)}$"):
        detect_rows(timestamps=timestamps)


# === parse_training_request ==============================================================


def test_training_defaults_to_iforest_at_one_percent() -> None:
    # When
    request = train(model="fraud", records=ROWS)

    # Then
    assert request.model == "fraud"
    assert request.algorithm == "iforest"
    assert request.contamination == 0.01
    assert request.params == {}
    assert isinstance(request.input, InlineRecords)
    assert request.input.matrix.shape == (2, 2)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_listed_algorithm_is_accepted(algorithm: str) -> None:
    assert train(model="m", dataset="d", algorithm=algorithm).algorithm == algorithm


def test_the_contract_algorithms_are_all_available() -> None:
    assert {"iforest", "lof", "ocsvm", "elliptic", "hbos", "ecod"} <= set(ALGORITHMS)


@pytest.mark.parametrize("algorithm", ["svm", "IForest", "", None, 3, "iforest "])
def test_an_unknown_algorithm_is_rejected_with_the_choices(algorithm: object) -> None:
    expected = f"algorithm {algorithm!r} is not one of iforest, lof, ocsvm, elliptic, hbos, ecod"

    with pytest.raises(InvalidMessage, match=f"^{re.escape(expected)}$"):
        train(model="m", dataset="d", algorithm=algorithm)


@pytest.mark.parametrize("contamination", [0.001, 0.1, 0.25, 0.499])
def test_contamination_in_the_open_interval_is_accepted(contamination: float) -> None:
    request = train(model="m", dataset="d", contamination=contamination)

    assert request.contamination == contamination
    assert type(request.contamination) is float


@pytest.mark.parametrize(
    ("contamination", "message"),
    [
        (True, "contamination must be a number in (0, 0.5), got True"),
        (False, "contamination must be a number in (0, 0.5), got False"),
        ("0.1", "contamination must be a number in (0, 0.5), got '0.1'"),
        (None, "contamination must be a number in (0, 0.5), got None"),
        ([0.1], "contamination must be a number in (0, 0.5), got [0.1]"),
        (0, "contamination must be in (0, 0.5), got 0"),
        (0.0, "contamination must be in (0, 0.5), got 0.0"),
        (0.5, "contamination must be in (0, 0.5), got 0.5"),
        (-0.1, "contamination must be in (0, 0.5), got -0.1"),
        (1, "contamination must be in (0, 0.5), got 1"),
        (float("nan"), "contamination must be in (0, 0.5), got nan"),
        (float("inf"), "contamination must be in (0, 0.5), got inf"),
    ],
    ids=repr,
)
def test_bad_contamination_is_rejected(contamination: object, message: str) -> None:
    with pytest.raises(InvalidMessage, match=f"^{re.escape(message)}$"):
        train(model="m", dataset="d", contamination=contamination)


def test_params_are_copied_into_the_request() -> None:
    # Given
    params: dict[str, Any] = {"n_estimators": 50, "max_samples": "auto"}

    # When
    request = train(model="m", dataset="d", params=params)
    params["n_estimators"] = 1

    # Then
    assert request.params == {"n_estimators": 50, "max_samples": "auto"}


@pytest.mark.parametrize("params", [["n_estimators", 50], "n_estimators=50", 5, {1: "a"}], ids=repr)
def test_params_must_be_an_object(params: object) -> None:
    with pytest.raises(
        InvalidMessage, match=r"^params must be a JSON object of estimator parameters$"
    ):
        train(model="m", dataset="d", params=params)


@pytest.mark.parametrize("model", [None, 3, ["m"]])
def test_training_needs_a_model_name(model: object) -> None:
    with pytest.raises(InvalidMessage, match=r"pynomaly\.train needs 'model'"):
        train(model=model, dataset="d")


def test_training_needs_a_model_key() -> None:
    with pytest.raises(InvalidMessage, match=r"pynomaly\.train needs 'model'"):
        train(dataset="d")


@pytest.mark.parametrize("model", ["m@2", "", "has space"])
def test_a_training_name_cannot_carry_a_version_or_bad_characters(model: str) -> None:
    with pytest.raises(InvalidInput, match=f"name {re.escape(repr(model))} is invalid"):
        train(model=model, dataset="d")


def test_unknown_train_arguments_are_listed_with_the_allowed_ones() -> None:
    expected = f"pynomaly.train got unknown argument(s) job_id; allowed: {TRAIN_KEYS}"

    with pytest.raises(InvalidMessage, match=f"^{re.escape(expected)}$"):
        train(model="m", dataset="d", job_id="j")


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        ({"dataset": "d"}, DatasetInput("d")),
        ({"source": "/data/train.csv"}, SourceInput("/data/train.csv")),
    ],
)
def test_training_accepts_a_dataset_or_a_source(inputs: dict[str, Any], expected: object) -> None:
    assert train(model="m", **inputs).input == expected


def test_training_also_needs_exactly_one_input() -> None:
    with pytest.raises(InvalidMessage, match=r"give exactly one of .* \(got records, dataset\)"):
        train(model="m", records=ROWS, dataset="d")


# === top anomalies =======================================================================

SCORES = np.array([0.1, 0.9, 0.5, 0.7, 0.95, 0.3])
SEVERITIES = np.array([0.05, 0.8, 0.4, 0.6, 0.9, 0.2])
MASK = SCORES > 0.4
IDS = ["a", "b", "c", "d", "e", "f"]


@pytest.mark.parametrize(
    ("k", "expected"),
    [(1, [4]), (2, [4, 1]), (3, [4, 1, 3]), (4, [4, 1, 3, 2]), (10, [4, 1, 3, 2])],
)
def test_top_anomalies_are_the_k_highest_scores_highest_first(k: int, expected: list[int]) -> None:
    top = top_anomalies(SCORES, SEVERITIES, MASK, k=k)

    assert [a.record_index for a in top] == expected
    assert [a.score for a in top] == [float(SCORES[i]) for i in expected]
    assert [a.severity for a in top] == [float(SEVERITIES[i]) for i in expected]
    assert all(a.record_id is None for a in top)


def test_only_masked_records_can_be_top_anomalies() -> None:
    # Given the highest score is not flagged
    mask = MASK.copy()
    mask[4] = False

    top = top_anomalies(SCORES, SEVERITIES, mask, k=2)

    assert [a.record_index for a in top] == [1, 3]


def test_top_anomalies_shift_indices_by_the_chunk_offset_but_map_ids_locally() -> None:
    # Given a chunk that starts at row 1000 of the job
    # When
    top = top_anomalies(SCORES, SEVERITIES, MASK, k=2, offset=1_000, record_ids=IDS)

    # Then indices are job-wide while ids come from the chunk's own list
    assert top == [
        TopAnomaly(record_index=1_004, record_id="e", score=0.95, severity=0.9),
        TopAnomaly(record_index=1_001, record_id="b", score=0.9, severity=0.8),
    ]


@pytest.mark.parametrize("k", [0, -1])
def test_no_top_anomalies_when_k_is_not_positive(k: int) -> None:
    assert top_anomalies(SCORES, SEVERITIES, MASK, k=k) == []


def test_no_top_anomalies_without_anomalies() -> None:
    mask = np.zeros(SCORES.shape, dtype=np.bool_)

    assert top_anomalies(SCORES, SEVERITIES, mask, k=5) == []


def test_top_anomalies_of_an_empty_chunk_is_empty() -> None:
    empty = np.array([], dtype=np.float64)

    assert top_anomalies(empty, empty, np.array([], dtype=np.bool_), k=5) == []


def test_tied_scores_keep_record_order_when_all_fit() -> None:
    scores = np.array([0.8, 0.9, 0.8, 0.9])

    top = top_anomalies(scores, scores, np.ones(4, dtype=np.bool_), k=4)

    assert [a.record_index for a in top] == [1, 3, 0, 2]


@pytest.mark.parametrize("k", [1, 5, 50, 199, 200, 500])
def test_top_anomalies_match_a_full_sort(k: int) -> None:
    # Given many distinct random scores
    rng = np.random.default_rng(k)
    scores = rng.permutation(np.linspace(0.0, 1.0, 400))
    mask = scores > 0.5

    # When
    top = top_anomalies(scores, scores, mask, k=k, offset=10)

    # Then
    expected = sorted(np.flatnonzero(mask).tolist(), key=lambda i: -scores[i])[:k]
    assert [a.record_index - 10 for a in top] == expected


def test_top_anomaly_values_are_plain_python_numbers() -> None:
    top = top_anomalies(SCORES, SEVERITIES, MASK, k=1)

    assert type(top[0].record_index) is int
    assert type(top[0].score) is float
    assert type(top[0].severity) is float


def anomaly(index: int, score: float) -> TopAnomaly:
    return TopAnomaly(record_index=index, record_id=None, score=score, severity=score / 2)


def test_merge_top_keeps_the_k_best_across_chunks() -> None:
    # Given the top lists of three chunks
    groups = [
        [anomaly(5, 0.9), anomaly(2, 0.6)],
        [anomaly(105, 0.95), anomaly(130, 0.7)],
        [],
    ]

    # When
    merged = merge_top(groups, k=3)

    # Then
    assert [(a.record_index, a.score) for a in merged] == [(105, 0.95), (5, 0.9), (130, 0.7)]


def test_merge_top_breaks_ties_by_record_index() -> None:
    groups = [[anomaly(300, 0.8)], [anomaly(7, 0.8)], [anomaly(120, 0.8)]]

    merged = merge_top(groups, k=2)

    assert [a.record_index for a in merged] == [7, 120]


@pytest.mark.parametrize(
    ("groups", "k", "expected_len"),
    [([], 5, 0), ([[], []], 5, 0), ([[anomaly(1, 0.5)]], 0, 0), ([[anomaly(1, 0.5)]], 9, 1)],
)
def test_merge_top_handles_empty_and_short_inputs(
    groups: list[list[TopAnomaly]], k: int, expected_len: int
) -> None:
    assert len(merge_top(groups, k=k)) == expected_len


# === job summary =========================================================================

SummaryFactory = Callable[..., JobSummary]


@pytest.fixture
def make_summary() -> SummaryFactory:
    """A factory of summaries with sensible defaults."""

    def factory(**overrides: Any) -> JobSummary:
        values: dict[str, Any] = {
            "job_id": "job-1",
            "model": "fraud",
            "model_version": 3,
            "n_records": 1_000,
            "n_anomalies": 2,
            "threshold": 0.61,
            "cache_hits": 250,
            "duration_ms": 12.3456789,
            "top_anomalies": [
                TopAnomaly(record_index=42, record_id="r42", score=0.9, severity=0.8),
                TopAnomaly(record_index=7, record_id=None, score=0.7, severity=0.6),
            ],
        }
        values.update(overrides)
        return JobSummary(**values)

    return factory


def test_summary_has_exactly_the_contract_keys(make_summary: SummaryFactory) -> None:
    data = make_summary().to_dict()

    assert set(data) == {
        "job_id",
        "status",
        "model",
        "model_version",
        "n_records",
        "n_anomalies",
        "threshold",
        "cache_hits",
        "duration_ms",
        "top_anomalies",
    }
    for item in data["top_anomalies"]:
        assert set(item) == {"record_index", "record_id", "score", "severity"}


def test_summary_tells_suppressed_anomalies_only_when_there_are_some(
    make_summary: SummaryFactory,
) -> None:
    # Given a job whose anomalies a suppression rule (id 4) matched one of
    top = [
        TopAnomaly(record_index=42, record_id="r42", score=0.9, severity=0.8, suppressed_by=4),
        TopAnomaly(record_index=7, record_id=None, score=0.7, severity=0.6),
    ]
    summary = make_summary(n_suppressed=1, top_anomalies=top, duration_ms=12.5)

    # When it is stored and read back
    data = json.loads(json.dumps(summary.to_dict()))

    # Then n_anomalies still counts both, n_suppressed the one, and it is marked
    assert (data["n_anomalies"], data["n_suppressed"]) == (2, 1)
    assert [a.get("suppressed_by") for a in data["top_anomalies"]] == [4, None]
    assert JobSummary.from_dict(data) == summary
    assert summary.n_notifiable == 1
    assert "n_suppressed" not in make_summary().to_dict()


def test_summary_values_round_trip_through_json(make_summary: SummaryFactory) -> None:
    # When
    data = json.loads(json.dumps(make_summary().to_dict(), allow_nan=False))

    # Then
    assert data == {
        "job_id": "job-1",
        "status": "succeeded",
        "model": "fraud",
        "model_version": 3,
        "n_records": 1_000,
        "n_anomalies": 2,
        "threshold": 0.61,
        "cache_hits": 250,
        "duration_ms": 12.346,
        "top_anomalies": [
            {"record_index": 42, "record_id": "r42", "score": 0.9, "severity": 0.8},
            {"record_index": 7, "record_id": None, "score": 0.7, "severity": 0.6},
        ],
    }


@pytest.mark.parametrize("status", JOB_STATUSES)
def test_summary_reports_its_status(make_summary: SummaryFactory, status: str) -> None:
    assert make_summary(status=status).to_dict()["status"] == status


def test_summary_without_anomalies_has_an_empty_top_list(make_summary: SummaryFactory) -> None:
    data = make_summary(n_anomalies=0, top_anomalies=[]).to_dict()

    assert data["top_anomalies"] == []
    assert data["n_anomalies"] == 0


def test_job_statuses_are_the_contract_ones() -> None:
    assert JOB_STATUSES == ("queued", "running", "succeeded", "failed")


# === chunk planning ======================================================================


@pytest.mark.parametrize(
    ("n_rows", "max_rows", "expected"),
    [
        (0, 5, []),
        (1, 5, [(0, 1)]),
        (5, 5, [(0, 5)]),
        (6, 5, [(0, 5), (5, 6)]),
        (10, 3, [(0, 3), (3, 6), (6, 9), (9, 10)]),
        (9, 3, [(0, 3), (3, 6), (6, 9)]),
        (4, 1, [(0, 1), (1, 2), (2, 3), (3, 4)]),
        (3, 100, [(0, 3)]),
    ],
)
def test_split_rows_covers_every_row_once(
    n_rows: int, max_rows: int, expected: list[tuple[int, int]]
) -> None:
    assert split_rows(n_rows, max_rows=max_rows) == expected


@pytest.mark.parametrize(
    ("n_features", "max_rows", "max_bytes", "expected"),
    [
        (16, 100_000, 12_800_000, 100_000),  # the default budget at the benchmark's width
        (16, 100_000, 6_400_000, 50_000),
        (4, 100_000, 12_800_000, 100_000),  # narrow: the row cap decides
        (1024, 100_000, 12_800_000, 1_562),  # wide: the bytes decide
        (16, 100_000, 8 * 16 * 10, 10),
        (10_000, 100, 16, 1),  # never zero rows
        (0, 50, 8, 1),
    ],
)
def test_rows_per_chunk_keeps_the_matrix_within_the_budget(
    n_features: int, max_rows: int, max_bytes: int, expected: int
) -> None:
    assert rows_per_chunk(n_features=n_features, max_rows=max_rows, max_bytes=max_bytes) == expected


@pytest.mark.parametrize(("n_rows", "max_rows"), [(1, 1), (999, 7), (1_000, 10), (12_345, 1_000)])
def test_split_rows_pieces_are_contiguous_and_bounded(n_rows: int, max_rows: int) -> None:
    pieces = split_rows(n_rows, max_rows=max_rows)

    assert pieces[0][0] == 0
    assert pieces[-1][1] == n_rows
    assert all(stop == start for (_, stop), (start, _) in itertools.pairwise(pieces))
    assert all(0 < stop - start <= max_rows for start, stop in pieces)


@pytest.mark.parametrize("max_rows", [0, -1])
def test_split_rows_needs_a_positive_chunk_size(max_rows: int) -> None:
    with pytest.raises(ValueError, match="max_rows must be positive"):
        split_rows(10, max_rows=max_rows)
