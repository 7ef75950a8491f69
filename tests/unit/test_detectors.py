"""HBOS and ECOD: the training scores of PyOD's implementations, scores that do not
depend on the batch, and exact per-feature explanations."""

from __future__ import annotations

import numpy as np
import pytest

from pynomaly_workers.adapters.scorers import sklearn
from pynomaly_workers.adapters.scorers.detectors import ECOD, HBOS
from pynomaly_workers.adapters.scorers.explain import explainer_for
from pynomaly_workers.domain.errors import InvalidInput


@pytest.fixture(scope="module")
def training() -> np.ndarray:
    rng = np.random.default_rng(3)
    # skewed, symmetric and heavy-tailed features, so every ECOD tail rule is exercised
    return np.column_stack(
        [rng.exponential(size=700), rng.normal(size=700), rng.standard_t(3, size=700)]
    )


def test_hbos_training_scores_are_pyods(training: np.ndarray) -> None:
    from pyod.models.hbos import HBOS as PYOD_HBOS

    reference = PYOD_HBOS(n_bins=12, alpha=0.05, tol=0.3).fit(training)
    ours = HBOS(n_bins=12, alpha=0.05, tol=0.3).fit(training)

    np.testing.assert_allclose(-ours.decision_function(training), reference.decision_scores_)
    rows = training[:50] * 3.0  # new rows, some outside the bins
    np.testing.assert_allclose(-ours.decision_function(rows), reference.decision_function(rows))


def test_ecod_training_scores_are_pyods(training: np.ndarray) -> None:
    from pyod.models.ecod import ECOD as PYOD_ECOD

    reference = PYOD_ECOD().fit(training)
    ours = ECOD().fit(training)

    np.testing.assert_allclose(-ours.decision_function(training), reference.decision_scores_)


def test_ecod_scores_do_not_depend_on_the_batch(training: np.ndarray) -> None:
    # PyOD refits on training + batch, so a row scores differently beside other rows;
    # frozen distributions score it the same alone or in any company.
    ours = ECOD().fit(training)
    row = np.array([[4.0, 0.1, -0.2]])
    company = np.vstack([row, np.random.default_rng(9).normal(size=(300, 3)) * 5])

    alone = ours.decision_function(row)[0]
    assert ours.decision_function(company)[0] == alone


@pytest.mark.parametrize("detector", [HBOS(), ECOD()], ids=["hbos", "ecod"])
def test_feature_scores_add_up_to_the_score_and_name_a_planted_feature(
    training: np.ndarray, detector: HBOS | ECOD
) -> None:
    detector.fit(training)
    rows = np.median(training, axis=0) + np.zeros((4, 3))
    rows[:, 1] += np.array([5.0, -5.0, 6.0, -6.0])

    explain = explainer_for(detector, profile=None)
    assert explain is not None
    found = explain(rows)

    assert (found.exact, found.method) == (True, "feature_scores")
    np.testing.assert_allclose(found.contributions.sum(axis=1), -detector.decision_function(rows))
    assert (np.argmax(found.contributions, axis=1) == 1).all()


def test_a_value_beyond_the_training_range_scores_higher_than_any_training_row(
    training: np.ndarray,
) -> None:
    detector = ECOD().fit(training)
    beyond = training.max(axis=0, keepdims=True) + 1.0

    assert -detector.decision_function(beyond)[0] > (-detector.decision_function(training)).max()
    assert np.isfinite(detector.decision_function(beyond)).all()


@pytest.mark.parametrize(
    ("params", "message"),
    [({"n_bins": 1}, "n_bins must be an integer >= 2"), ({"alpha": 1.5}, "alpha must be in")],
)
def test_bad_hbos_parameters_say_what_is_wrong(
    training: np.ndarray, params: dict[str, float], message: str
) -> None:
    estimator = sklearn.build_estimator("hbos", contamination=0.01, params=params)
    with pytest.raises(InvalidInput, match=message):
        sklearn.fit(estimator, training)
