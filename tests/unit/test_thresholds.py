"""Thresholds by intent, the pure math: fine score bins, counts above a threshold, the
threshold each intent picks, the projection's notes, severity at a changed threshold."""

from __future__ import annotations

import numpy as np
import pytest

from pynomaly_workers.domain.drift import DriftCounts
from pynomaly_workers.domain.errors import InvalidInput
from pynomaly_workers.domain.profile import bin_counts
from pynomaly_workers.domain.scoring import ScoreStats, fit_score_stats, severity
from pynomaly_workers.domain.thresholds import (
    LabelledScores,
    ScoreHistogram,
    alerts_threshold,
    check_intent,
    contamination_threshold,
    effective_stats,
    precision_threshold,
    project,
    score_edges,
)


@pytest.fixture
def training() -> np.ndarray:
    return np.random.default_rng(3).gamma(2.0, 1.0, size=20_000)


@pytest.fixture
def stats(training: np.ndarray) -> ScoreStats:
    return fit_score_stats(training, contamination=0.05)


def histogram_of(scores: np.ndarray, stats: ScoreStats) -> ScoreHistogram:
    edges = score_edges(stats)
    return ScoreHistogram(edges, bin_counts(scores, edges))


def test_edges_depend_on_training_scores_only_and_are_dense_in_the_tail(
    stats: ScoreStats, training: np.ndarray
) -> None:
    edges = score_edges(stats)
    assert np.all(np.diff(edges) > 0)
    # a changed threshold gives the same bins, so windows before and after it add up
    assert np.array_equal(score_edges(effective_stats(stats, threshold=7.5)), edges)
    # from the 75th percentile to the largest training score, each half-percent of the
    # training scores is split in 4 bins, 8 from the 95th, 32 from the 99th: an eighth
    # of a percent each (on the median) up to the 95th, never more than the half percent
    tail = edges[(edges >= np.quantile(training, 0.75)) & (edges <= stats.max_score)]
    shares = np.diff(np.searchsorted(np.sort(training), tail)) / len(training)
    assert len(shares) == 40 * 4 + 8 * 8 + 2 * 32
    assert np.median(shares[:160]) == pytest.approx(0.00125, abs=0.0002)
    assert shares.max() <= 0.005 + 2 / len(training)
    # and outliers far past the largest training score still fall in bins
    assert edges[-1] >= stats.max_score + 32 * stats.scale


def test_the_count_above_an_edge_is_exact_and_inside_a_bin_close(stats: ScoreStats) -> None:
    scores = np.random.default_rng(5).gamma(2.0, 1.1, size=50_000)
    hist = histogram_of(scores, stats)
    for edge in hist.edges[::17]:
        assert hist.above(float(edge)) == (float(np.sum(scores > edge)), True)
    inside = float((hist.edges[200] + hist.edges[201]) / 2)
    count, exact = hist.above(inside)
    assert not exact
    assert count == pytest.approx(np.sum(scores > inside), rel=0.01)


@pytest.mark.parametrize(("alerts", "within"), [(10, 2), (150, 15), (800, 40), (2_500, 125)])
def test_an_alert_target_lands_on_an_edge_whose_count_is_exact(
    stats: ScoreStats, alerts: int, within: int
) -> None:
    scores = np.random.default_rng(8).gamma(2.0, 1.05, size=100_000)
    hist = histogram_of(scores, stats)
    threshold = alerts_threshold(hist, alerts=alerts)
    projected, exact = hist.above(threshold)
    assert exact
    assert projected == np.sum(scores > threshold)  # what a replay would raise
    assert abs(projected - alerts) <= within  # the bins are fine enough


def test_an_alert_target_in_a_run_of_empty_bins_takes_its_middle() -> None:
    edges = np.arange(1.0, 11.0)  # bins (.., 1], (1, 2], ..., (10, ..)
    counts = np.array([5, 5, 0, 0, 0, 0, 0, 0, 3, 0, 2])
    hist = ScoreHistogram(edges, counts)
    # 5 scores lie above every edge from 2 to 8: the middle of that run is 5
    assert alerts_threshold(hist, alerts=5) == 5.0


def test_a_contamination_gives_the_training_quantile(
    stats: ScoreStats, training: np.ndarray
) -> None:
    assert contamination_threshold(stats, 0.05) == pytest.approx(stats.threshold)
    assert contamination_threshold(stats, 0.01) == pytest.approx(np.quantile(training, 0.99))


def labelled(*pairs: tuple[float, str]) -> LabelledScores:
    return LabelledScores.of(list(pairs))


@pytest.mark.parametrize(
    ("precision", "expected"),
    [
        # top 5 by score: a a n a n -> shares 1, 1, .67, .75, .6
        (1.0, 7.5),  # top 2 (9, 8); the edge below 8 that keeps 7 out is 7.5
        (0.75, 5.5),  # top 4: down to 6, the edge 5.5 keeps 5 out
        (0.6, 4.5),  # all 5
    ],
)
def test_a_precision_keeps_the_most_labelled_anomalies_that_reach_it(
    precision: float, expected: float
) -> None:
    found = labelled(
        (9, "anomaly"), (8, "anomaly"), (7, "not_anomaly"), (6, "anomaly"), (5, "expected")
    )
    edges = np.arange(0.5, 12.0, 1.0)
    assert precision_threshold(found, precision=precision, edges=edges) == expected
    assert found.at(expected)[1] / found.at(expected)[0] >= precision


def test_equal_scores_are_kept_or_left_out_together() -> None:
    found = labelled((9, "anomaly"), (8, "anomaly"), (8, "not_anomaly"))
    # keeping only one of the two 8s would be 2/2, but no threshold can do that
    assert precision_threshold(found, precision=1.0, edges=np.array([7.0, 8.5])) == 8.5


def test_an_unreachable_precision_says_the_best_there_is() -> None:
    found = labelled((9, "not_anomaly"), (8, "anomaly"), (7, "not_anomaly"))
    with pytest.raises(InvalidInput, match=r"best is 0\.500"):
        precision_threshold(found, precision=0.9, edges=np.array([5.0]))


def test_without_an_edge_in_the_gap_the_threshold_is_the_next_score() -> None:
    found = labelled((9, "anomaly"), (8, "not_anomaly"))
    assert precision_threshold(found, precision=1.0, edges=np.array([1.0])) == 8.0


def test_the_projection_says_what_it_cannot_know(stats: ScoreStats) -> None:
    scores = np.random.default_rng(2).gamma(2.0, 1.0, size=10_000)
    hist = histogram_of(scores, stats)
    found = labelled((9, "anomaly"), (stats.threshold + 0.01, "not_anomaly"))
    lower = float(hist.edges[150])
    result = project(
        hist,
        found,
        threshold=lower,
        current=stats.threshold,
        lowest_stored=stats.threshold,
        days=7,
        days_observed=0.5,
    )
    assert result.alerts == np.sum(scores > lower)
    assert result.current_alerts == pytest.approx(np.sum(scores > stats.threshold), rel=0.01)
    assert result.alerts_per_day == result.alerts / 0.5
    assert (result.labelled, result.confirmed, result.precision) == (2, 1, 0.5)
    assert any("never stored" in note for note in result.notes)
    assert any("0.5 of the 7 days" in note for note in result.notes)
    raised = project(
        hist,
        found,
        threshold=float(hist.edges[-5]),
        current=stats.threshold,
        lowest_stored=stats.threshold,
        days=1,
        days_observed=1,
    )
    assert raised.notes == ()
    assert raised.precision is None  # nothing labelled above it


def test_severity_at_a_changed_threshold_still_means_anomaly_above_half(
    stats: ScoreStats, training: np.ndarray
) -> None:
    for threshold in (float(np.quantile(training, 0.9)), stats.max_score * 1.2):
        changed = effective_stats(stats, threshold)
        scores = np.linspace(0, stats.max_score * 2, 2001)
        levels = severity(scores, changed)
        assert np.array_equal(levels > 0.5, scores > threshold)
        assert np.all(np.diff(levels) >= 0)
        assert levels.min() >= 0
        assert levels.max() <= 1
        assert changed.scale == stats.scale
        assert changed.contamination == pytest.approx(
            max(np.mean(training > threshold), 1 / (stats.n + 1)), abs=0.003
        )


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [
        ("alerts_per_day", -1, "0 or more"),
        ("precision", 0, r"\(0, 1\]"),
        ("precision", 1.5, r"\(0, 1\]"),
        ("contamination", 0.5, r"\(0, 0\.5\)"),
        ("recall", 0.5, "unknown intent"),
    ],
)
def test_intents_out_of_range_say_what_range(kind: str, value: float, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        check_intent(kind, value)


def test_fine_counts_add_up_and_survive_windows_counted_without_them() -> None:
    def counts(fine: list[int] | None) -> DriftCounts:
        return DriftCounts(
            n_records=3,
            n_flagged=1,
            features=np.zeros((1, 2), dtype=np.int64),
            scores=np.array([1, 2]),
            fine=None if fine is None else np.array(fine),
        )

    old = counts(None)
    old.add(counts([1, 2, 0]))
    old.add(counts([0, 1, 2]))
    assert old.fine is not None
    assert old.fine.tolist() == [1, 3, 2]
    again = DriftCounts.from_dict(old.to_dict()).fine
    assert again is not None
    assert again.tolist() == [1, 3, 2]
    assert "fine" not in counts(None).to_dict()
    assert DriftCounts.from_dict(counts(None).to_dict()).fine is None


def test_alert_precision_is_exported_per_version_and_flags() -> None:
    from prometheus_client import REGISTRY

    from pynomaly_workers.adapters.telemetry import PrometheusTelemetry
    from pynomaly_workers.domain.thresholds import AlertPrecision

    # When a version with labelled anomalies and labelled shadow flags is reported, and
    # one whose shadow flags nobody labelled
    telemetry = PrometheusTelemetry()
    telemetry.alert_precision(AlertPrecision("gauged", 3, 4, 3, 10, 2, 1))
    telemetry.alert_precision(AlertPrecision("gauged", 4, 5, 5, 7, 0, 0))

    # Then each has its labelled counts and, where something is labelled, its share
    def sample(name: str, version: int, flags: str) -> float | None:
        labels = {"model": "gauged", "version": str(version), "flags": flags}
        return REGISTRY.get_sample_value(name, labels)

    assert sample("pynomaly_alert_labelled", 3, "stored") == 4
    assert sample("pynomaly_alert_precision", 3, "stored") == 0.75
    assert sample("pynomaly_alert_labelled", 3, "shadow") == 2
    assert sample("pynomaly_alert_precision", 3, "shadow") == 0.5
    assert sample("pynomaly_alert_precision", 4, "stored") == 1.0
    assert sample("pynomaly_alert_labelled", 4, "shadow") == 0
    assert sample("pynomaly_alert_precision", 4, "shadow") is None
