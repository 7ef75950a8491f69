"""Thresholds and severity calibrated from training scores."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from pynomaly_workers.domain.scoring import (
    ScoreStats,
    anomaly_mask,
    fit_score_stats,
    parity_error,
    severity,
)

Scores = npt.NDArray[np.float64]

# Training-score distributions a model might produce (higher = more anomalous).
DISTRIBUTIONS: dict[str, Callable[[np.random.Generator], Scores]] = {
    "normal": lambda rng: rng.normal(size=5_000),
    "exponential": lambda rng: rng.exponential(scale=0.2, size=5_000),
    "uniform": lambda rng: rng.uniform(-1.0, 1.0, size=5_000),
    "iforest-like": lambda rng: 0.5 + 0.05 * rng.standard_t(df=3, size=5_000),
    "heavy-ties": lambda rng: rng.integers(0, 5, size=5_000).astype(np.float64),
    "tiny-sample": lambda rng: rng.normal(size=7),
    "shifted": lambda rng: 1_000.0 + 0.001 * rng.normal(size=2_000),
    "constant": lambda rng: np.full(100, 0.25),
}
CONTAMINATIONS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.49)


def make_stats(name: str, contamination: float) -> tuple[Scores, ScoreStats]:
    """Training scores of one distribution and the stats fitted to them."""
    training = DISTRIBUTIONS[name](np.random.default_rng(7))
    return training, fit_score_stats(training, contamination=contamination)


def probe_grid(stats: ScoreStats) -> Scores:
    """A dense, sorted grid from far below to far above the training range."""
    low, high = stats.quantiles[0], stats.max_score
    width = max(high - low, stats.scale, 1e-9)
    dense = np.linspace(low - 3 * width, high + 3 * width, 20_001)
    special = np.array(
        [
            *stats.quantiles,
            stats.threshold,
            np.nextafter(stats.threshold, -np.inf),
            np.nextafter(stats.threshold, np.inf),
            low - 1e6 * width,
            high + 1e6 * width,
            -1e300,
            1e300,
            -np.inf,
            np.inf,
        ]
    )
    return np.sort(np.concatenate([dense, special]))


# --- threshold ---------------------------------------------------------------------------


@pytest.mark.parametrize("contamination", CONTAMINATIONS)
def test_threshold_leaves_about_contamination_of_training_scores_above_it(
    contamination: float,
) -> None:
    # Given continuous training scores
    training = np.random.default_rng(0).normal(size=20_000)

    # When the stats are fitted
    stats = fit_score_stats(training, contamination=contamination)

    # Then the fraction of training scores flagged is the contamination (within one row)
    flagged = anomaly_mask(training, threshold=stats.threshold).mean()
    assert flagged == pytest.approx(contamination, abs=1.5 / training.size)


def test_threshold_on_an_evenly_spaced_sample_is_its_upper_quantile() -> None:
    stats = fit_score_stats(np.linspace(0.0, 1.0, 101), contamination=0.1)

    assert stats.threshold == pytest.approx(0.9)


def test_stats_summarise_the_training_scores() -> None:
    # Given
    training = np.array([3.0, 1.0, 2.0, 5.0, 4.0])

    # When
    stats = fit_score_stats(training, contamination=0.2)

    # Then
    assert stats.n == 5
    assert stats.contamination == 0.2
    assert stats.max_score == 5.0
    assert stats.mean == pytest.approx(3.0)
    assert stats.std == pytest.approx(math.sqrt(2.0))
    assert stats.quantiles[0] == 1.0
    assert stats.quantiles[-1] == 5.0
    assert all(a <= b for a, b in itertools.pairwise(stats.quantiles))
    assert stats.scale > 0


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_scale_is_positive_even_for_degenerate_scores(name: str) -> None:
    _, stats = make_stats(name, 0.05)

    assert stats.scale > 0
    assert stats.threshold <= stats.max_score


@pytest.mark.parametrize("contamination", [0.0, 0.5, -0.01, 0.75, 1.0, float("nan"), float("inf")])
def test_contamination_outside_the_open_interval_is_rejected(contamination: float) -> None:
    with pytest.raises(ValueError, match=r"contamination must be in \(0, 0.5\)"):
        fit_score_stats(np.arange(10.0), contamination=contamination)


@pytest.mark.parametrize(
    "training",
    [np.array([]), np.array([0.1, np.nan]), np.array([np.inf, 0.0]), np.array([-np.inf])],
    ids=["empty", "nan", "inf", "minus-inf"],
)
def test_training_scores_must_be_finite_and_non_empty(training: Scores) -> None:
    with pytest.raises(ValueError, match="non-empty array of finite numbers"):
        fit_score_stats(training, contamination=0.1)


# --- serialisation -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_stats_survive_a_json_round_trip(name: str) -> None:
    # Given
    _, stats = make_stats(name, 0.05)

    # When the stats go through the database's JSON column
    text = json.dumps(stats.to_dict(), allow_nan=False)
    restored = ScoreStats.from_dict(json.loads(text))

    # Then nothing is lost and the restored stats judge scores identically
    assert restored == stats
    probe = probe_grid(stats)
    np.testing.assert_array_equal(severity(probe, restored), severity(probe, stats))


def test_to_dict_holds_only_plain_python_numbers() -> None:
    _, stats = make_stats("normal", 0.05)

    data = stats.to_dict()

    assert set(data) == {
        "threshold",
        "contamination",
        "quantiles",
        "max_score",
        "scale",
        "mean",
        "std",
        "n",
    }
    assert type(data["n"]) is int
    assert all(type(data[key]) is float for key in set(data) - {"n", "quantiles"})
    assert type(data["quantiles"]) is list
    assert all(type(q) is float for q in data["quantiles"])


def test_from_dict_accepts_json_integers_where_floats_are_expected() -> None:
    data = {
        "threshold": 1,
        "contamination": 0.1,
        "quantiles": [0, 1, 2],
        "max_score": 2,
        "scale": 1,
        "mean": 1,
        "std": 1,
        "n": 3,
    }

    stats = ScoreStats.from_dict(data)

    assert stats.quantiles == (0.0, 1.0, 2.0)
    assert type(stats.threshold) is float
    assert type(stats.quantiles[0]) is float


# --- severity: the documented calibration ------------------------------------------------


@pytest.fixture
def uniform_stats() -> ScoreStats:
    """Training scores evenly spread on [0, 1] with 10% contamination.

    The empirical CDF is the identity, the threshold is 0.9 and the scale is the
    interquartile range, 0.5 (wider than max - threshold = 0.1).
    """
    return fit_score_stats(np.linspace(0.0, 1.0, 1_001), contamination=0.1)


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        (-1e9, 0.0),
        (-1.0, 0.0),
        (0.0, 0.0),
        (0.09, 0.05),
        (0.45, 0.25),
        (0.72, 0.4),
        (0.9, 0.5),
        (1.0, 0.5 + 0.5 * (1 - math.exp(-0.2))),
        (1.4, 0.5 + 0.5 * (1 - math.exp(-1.0))),
        (2.9, 0.5 + 0.5 * (1 - math.exp(-4.0))),
        (1e9, 1.0),
    ],
)
def test_severity_follows_the_documented_calibration(
    uniform_stats: ScoreStats, score: float, expected: float
) -> None:
    assert uniform_stats.threshold == pytest.approx(0.9)
    assert uniform_stats.scale == pytest.approx(0.5)

    result = severity(np.array([score]), uniform_stats)

    assert result[0] == pytest.approx(expected, abs=1e-9)


def test_the_worst_training_outlier_sits_near_0_82_when_it_sets_the_scale() -> None:
    # Given training scores whose tail (max - threshold) is wider than their IQR
    training = np.concatenate([np.linspace(0.0, 1.0, 990), np.linspace(5.0, 50.0, 10)])
    stats = fit_score_stats(training, contamination=0.01)

    # Then the largest training score has severity 0.5 + 0.5 * (1 - 1/e)
    result = severity(np.array([stats.max_score]), stats)

    assert result[0] == pytest.approx(0.5 + 0.5 * (1 - math.exp(-1)), abs=1e-9)


# --- severity: invariants over many models -----------------------------------------------


@pytest.mark.parametrize("contamination", CONTAMINATIONS)
@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_severity_is_in_the_unit_interval(name: str, contamination: float) -> None:
    _, stats = make_stats(name, contamination)

    result = severity(probe_grid(stats), stats)

    assert np.isfinite(result).all()
    assert result.min() >= 0.0
    assert result.max() <= 1.0


@pytest.mark.parametrize("contamination", CONTAMINATIONS)
@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_severity_never_decreases_as_the_score_grows(name: str, contamination: float) -> None:
    # Given a sorted grid of scores
    _, stats = make_stats(name, contamination)
    grid = probe_grid(stats)

    # When
    result = severity(grid, stats)

    # Then
    steps = np.diff(result)
    assert steps.min() >= 0.0, f"severity drops at score {grid[int(np.argmin(steps))]!r}"


@pytest.mark.parametrize("contamination", CONTAMINATIONS)
@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_severity_above_half_means_exactly_anomaly(name: str, contamination: float) -> None:
    # Given scores on both sides of the threshold, including one ulp either side of it
    _, stats = make_stats(name, contamination)
    grid = probe_grid(stats)

    # When
    result = severity(grid, stats)
    mask = anomaly_mask(grid, threshold=stats.threshold)

    # Then 'severity > 0.5' (the partial index's predicate) selects exactly the anomalies
    np.testing.assert_array_equal(result > 0.5, mask)


@pytest.mark.parametrize("contamination", CONTAMINATIONS)
@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_severity_at_the_threshold_is_one_half(name: str, contamination: float) -> None:
    _, stats = make_stats(name, contamination)

    result = severity(np.array([stats.threshold]), stats)

    assert result[0] == pytest.approx(0.5, abs=1e-9)


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_a_score_one_ulp_above_the_threshold_is_strictly_above_half(name: str) -> None:
    _, stats = make_stats(name, 0.05)

    result = severity(np.array([np.nextafter(stats.threshold, np.inf)]), stats)

    assert result[0] > 0.5


@pytest.mark.parametrize(
    ("threshold", "scale"),
    [(0.0, 1.0), (0.01, 10.0), (1e-300, 1e300), (-5.0, 1e-12), (1e6, 1e-3)],
)
def test_anomalies_just_over_the_threshold_are_above_half_at_any_scale(
    threshold: float, scale: float
) -> None:
    # Given stats whose scale dwarfs (or is dwarfed by) the threshold's precision
    stats = ScoreStats(
        threshold=threshold,
        contamination=0.1,
        quantiles=tuple(np.linspace(threshold - 1.0, threshold + 1.0, 201).tolist()),
        max_score=threshold + 1.0,
        scale=scale,
        mean=threshold,
        std=1.0,
        n=1_000,
    )
    scores = np.array([np.nextafter(threshold, np.inf), np.nextafter(threshold, -np.inf)])

    # When
    result = severity(scores, stats)

    # Then
    assert result[0] > 0.5
    assert result[1] <= 0.5


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_scores_clearly_below_the_threshold_are_clearly_below_half(name: str) -> None:
    training, stats = make_stats(name, 0.05)
    below = training[training < stats.threshold]
    if below.size == 0:
        below = np.array([stats.threshold - 1.0])

    result = severity(below - 0.01 * stats.scale, stats)

    assert result.max() < 0.5


@pytest.mark.parametrize("score", [1e6, 1e100, 1e300, np.finfo(np.float64).max, np.inf], ids=str)
@pytest.mark.parametrize("name", ["normal", "constant", "shifted"])
def test_extreme_scores_saturate_at_one(name: str, score: float) -> None:
    _, stats = make_stats(name, 0.05)

    result = severity(np.array([score]), stats)

    assert 0.5 < result[0] <= 1.0
    assert result[0] == pytest.approx(1.0)


@pytest.mark.parametrize("score", [-1e3, -1e6, -1e300, -np.finfo(np.float64).max, -np.inf], ids=str)
@pytest.mark.parametrize("name", ["normal", "constant", "shifted"])
def test_extremely_low_scores_have_zero_severity(name: str, score: float) -> None:
    # Far below the threshold the above-threshold formula would overflow; it must not leak
    _, stats = make_stats(name, 0.05)

    result = severity(np.array([score]), stats)

    assert result[0] == 0.0


def test_severity_keeps_the_input_shape_and_order() -> None:
    _, stats = make_stats("normal", 0.05)
    scores = np.array([3.0, -3.0, 0.0, stats.threshold])

    result = severity(scores, stats)

    assert result.shape == (4,)
    assert result.dtype == np.float64
    assert result[0] > 0.5 > result[2] > result[1]


def test_severity_of_no_scores_is_empty() -> None:
    _, stats = make_stats("normal", 0.05)

    assert severity(np.array([]), stats).shape == (0,)


# --- anomaly mask ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "threshold", "expected"),
    [
        ([0.5, 0.9, 0.91, 1.0], 0.9, [False, False, True, True]),
        ([0.9, 0.9, 0.9], 0.9, [False, False, False]),
        ([float(np.nextafter(0.9, 1.0))], 0.9, [True]),
        ([-1.0, 0.0, 1.0], 0.0, [False, False, True]),
        ([-np.inf, np.inf], 1e308, [False, True]),
        ([], 0.5, []),
    ],
    ids=["mixed", "all-equal", "one-ulp-above", "zero-threshold", "infinities", "empty"],
)
def test_anomaly_mask_is_strictly_above_the_threshold(
    scores: list[float], threshold: float, expected: list[bool]
) -> None:
    mask = anomaly_mask(np.array(scores, dtype=np.float64), threshold=threshold)

    assert mask.dtype == np.bool_
    assert mask.tolist() == expected


# --- parity ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "candidate", "expected"),
    [
        ([0.1, 0.2, 0.3], [0.1, 0.2, 0.3], 0.0),
        ([0.1, 0.2, 0.3], [0.1, 0.25, 0.3], 0.05),
        ([1.0, -1.0], [0.0, 2.0], 3.0),
        ([], [], 0.0),
        ([0.5, 0.5], [0.5, float("nan")], math.inf),
    ],
    ids=["equal", "one-differs", "largest-wins", "empty", "nan-is-infinite"],
)
def test_parity_error_is_the_largest_absolute_difference(
    reference: list[float], candidate: list[float], expected: float
) -> None:
    a = np.array(reference, dtype=np.float64)
    b = np.array(candidate, dtype=np.float64)

    assert parity_error(a, b) == pytest.approx(expected)
    assert parity_error(b, a) == pytest.approx(expected)


def test_parity_error_rejects_vectors_of_different_shapes() -> None:
    with pytest.raises(ValueError, match=r"shapes differ: \(3,\) vs \(2,\)"):
        parity_error(np.zeros(3), np.zeros(2))
