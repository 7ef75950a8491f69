"""The evaluation metrics against scikit-learn's, ties and one-class inputs included."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from pynomaly_workers.domain.errors import InvalidLabels, InvalidMessage
from pynomaly_workers.domain.evaluation import (
    average_precision,
    evaluate,
    parse_evaluation_request,
    parse_labels,
    precision_at_k,
    promotion_evidence,
    roc_auc,
)

TOLERANCE = 1e-9


def labelled(
    seed: int, *, n: int, positive: float, levels: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores where anomalies score higher on average; ``levels`` rounds the
    scores to that many distinct values (many ties)."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < positive
    y[0], y[1] = True, False  # both classes, always
    scores = rng.normal(size=n) + 1.5 * y
    if levels is not None:
        scores = np.round(scores * levels / 8) / levels
    return y, scores


CASES = [
    (seed, n, positive, levels)
    for seed in (0, 1)
    for n, positive in ((10, 0.3), (1_000, 0.02), (20_000, 0.1))
    for levels in (None, 4, 1)
]


@pytest.mark.parametrize(("seed", "n", "positive", "levels"), CASES)
def test_the_ranking_metrics_equal_scikit_learns(
    seed: int, n: int, positive: float, levels: int | None
) -> None:
    y, scores = labelled(seed, n=n, positive=positive, levels=levels)

    assert average_precision(y, scores) == pytest.approx(
        average_precision_score(y, scores), abs=TOLERANCE
    )
    assert roc_auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=TOLERANCE)


@pytest.mark.parametrize(("seed", "n", "positive", "levels"), CASES)
def test_the_threshold_metrics_equal_scikit_learns(
    seed: int, n: int, positive: float, levels: int | None
) -> None:
    y, scores = labelled(seed, n=n, positive=positive, levels=levels)
    threshold = float(np.quantile(scores, 0.9))

    found = evaluate(y, scores, threshold=threshold).metrics

    flagged = scores > threshold
    assert found["precision"] == pytest.approx(
        precision_score(y, flagged, zero_division=0), abs=TOLERANCE
    )
    assert found["recall"] == pytest.approx(recall_score(y, flagged), abs=TOLERANCE)
    assert found["f1"] == pytest.approx(f1_score(y, flagged, zero_division=0), abs=TOLERANCE)
    assert found["alerts_per_1000"] == pytest.approx(1000 * flagged.mean(), abs=TOLERANCE)


def test_all_tied_scores_rank_nothing() -> None:
    y = np.array([True, False, False, True, False])
    scores = np.zeros(5)

    assert roc_auc(y, scores) == pytest.approx(0.5, abs=TOLERANCE)
    assert average_precision(y, scores) == pytest.approx(0.4, abs=TOLERANCE)
    assert precision_at_k(y, scores, k=2) == pytest.approx(0.4, abs=TOLERANCE)


def test_precision_at_k_counts_the_top_k_and_ties_at_the_kth_in_proportion() -> None:
    y = np.array([True, True, False, True, False, False])
    scores = np.array([9.0, 8.0, 7.0, 5.0, 5.0, 1.0])

    # k=3: 9 and 8 are anomalies, 7 is not
    assert precision_at_k(y, scores, k=3) == pytest.approx(2 / 3)
    # k=4: 9, 8, 7, then one of the two tied at 5 (one of which is an anomaly): 2.5/4
    assert precision_at_k(y, scores, k=4) == pytest.approx(2.5 / 4)
    # the order the tied records come in does not matter
    swapped = [0, 1, 2, 4, 3, 5]
    assert precision_at_k(y[swapped], scores[swapped], k=4) == pytest.approx(2.5 / 4)


def test_nothing_flagged_gives_zero_precision_and_f1() -> None:
    y = np.array([True, False, False])
    found = evaluate(y, np.array([0.3, 0.2, 0.1]), threshold=10.0).metrics

    assert (found["precision"], found["recall"], found["f1"]) == (0.0, 0.0, 0.0)
    assert found["alerts_per_1000"] == 0.0
    assert found["precision_at_k"] == 1.0


@pytest.mark.parametrize(
    ("labels", "kind"), [([False, False, False], "anomalies"), ([True, True], "normal records")]
)
def test_one_class_is_refused_with_a_message_that_says_why(labels: list[bool], kind: str) -> None:
    scores = np.linspace(0, 1, len(labels))

    with pytest.raises(InvalidLabels, match=f"wbc has no labelled {kind}.*both classes"):
        evaluate(labels, scores, threshold=0.5, dataset="wbc")


def test_labels_are_zero_one_or_booleans() -> None:
    assert parse_labels([0, 1, 1.0, 0], column="y").tolist() == [False, True, True, False]
    assert parse_labels(np.array([True, False]), column="y").tolist() == [True, False]
    with pytest.raises(InvalidLabels, match=r"'y'.*record 12 has 2 \(1 such records\)"):
        parse_labels([0, 0, 2], column="y", first_index=10)
    with pytest.raises(InvalidLabels, match="record 1 has nan"):
        parse_labels([0.0, float("nan")], column="y")
    with pytest.raises(InvalidLabels, match="0/1 or true/false"):
        parse_labels(np.array(["yes", "no"]), column="y")


@pytest.mark.parametrize(
    ("candidate", "current", "forced", "passed", "recorded_forced"),
    [
        (0.61, 0.60, False, True, False),
        (0.60, 0.60, False, True, False),  # at least as good passes
        (0.59, 0.60, False, False, False),
        (0.59, 0.60, True, False, True),
        (0.61, 0.60, True, True, False),  # --force on a passing move forces nothing
    ],
)
def test_a_promotion_passes_when_the_candidate_ranks_at_least_as_well(
    candidate: float, current: float, forced: bool, passed: bool, recorded_forced: bool
) -> None:
    evidence = promotion_evidence(
        dataset="wbc",
        candidate={"version": 3, "average_precision": candidate},
        champion={"version": 2, "average_precision": current},
        forced=forced,
    )

    assert (evidence["passed"], evidence["forced"]) == (passed, recorded_forced)
    assert evidence["candidate"]["average_precision"] == candidate
    assert evidence["current"]["average_precision"] == current


def test_a_first_promotion_has_nothing_to_beat() -> None:
    evidence = promotion_evidence(
        dataset="wbc", candidate={"version": 1, "average_precision": 0.1}, champion=None
    )

    assert evidence["passed"] is True
    assert evidence["current"] is None


def test_an_evaluation_message_is_checked_against_the_contract() -> None:
    request = parse_evaluation_request({"job_id": "e-1", "model": "m@champion", "dataset": "d"})
    assert (request.job_id, str(request.model), request.dataset) == ("e-1", "m@champion", "d")
    assert (request.purpose, request.actor) == ("evaluate", "unknown")

    with pytest.raises(InvalidMessage, match="unknown argument"):
        parse_evaluation_request({"job_id": "e", "model": "m", "dataset": "d", "records": []})
    with pytest.raises(InvalidMessage, match="purpose must be one of evaluate, promotion"):
        parse_evaluation_request({"job_id": "e", "model": "m", "dataset": "d", "purpose": "x"})
    with pytest.raises(InvalidMessage, match="dataset must be"):
        parse_evaluation_request({"job_id": "e", "model": "m"})
