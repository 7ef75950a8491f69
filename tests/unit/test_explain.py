"""Per-feature attributions: each adds up to the quantity it splits, and a deviation
planted in one feature is named first, for every algorithm."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pynomaly_workers.adapters.scorers import sklearn
from pynomaly_workers.adapters.scorers.explain import explainer_for
from pynomaly_workers.domain.explain import Attribution, explanations
from pynomaly_workers.domain.profile import profile_training_data

WIDTH = 5


def fitted(algorithm: str, training: np.ndarray) -> Any:
    params = {"n_estimators": 100} if algorithm == "iforest" else {}
    estimator = sklearn.build_estimator(algorithm, contamination=0.02, params=params)
    return sklearn.fit(estimator, training)


def attribution(algorithm: str, training: np.ndarray, rows: np.ndarray) -> Attribution:
    estimator = fitted(algorithm, training)
    profile = profile_training_data(training, sklearn.training_scores(estimator, training))
    explain = explainer_for(estimator, profile=profile)
    assert explain is not None
    return explain(rows)


@pytest.fixture(scope="module")
def training() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(600, WIDTH))


def planted(feature: int, *, n: int = 20, shift: float = 6.0, seed: int = 1) -> np.ndarray:
    """Normal rows, each with a deviation in ``feature`` only."""
    rows = np.random.default_rng(seed).normal(size=(n, WIDTH)) * 0.5
    rows[:, feature] += np.where(np.arange(n) % 2 == 0, shift, -shift)
    return rows


@pytest.mark.parametrize("algorithm", ["iforest", "lof", "elliptic", "ocsvm"])
@pytest.mark.parametrize("feature", [0, 3])
def test_a_planted_deviation_is_named_first(
    training: np.ndarray, algorithm: str, feature: int
) -> None:
    found = attribution(algorithm, training, planted(feature))

    first = np.argmax(found.contributions, axis=1)
    assert (first == feature).all(), (algorithm, first.tolist())


def test_isolation_bits_add_up_to_each_paths_isolation(training: np.ndarray) -> None:
    # Given a forest and rows, some anomalous
    estimator = fitted("iforest", training)
    rows = np.vstack([planted(2, n=5), training[:5]])

    found = attribution("iforest", training, rows)

    # Then each row's credits sum to the mean over trees of log2(root size / leaf size)
    expected = np.zeros(len(rows))
    for tree, features in zip(estimator.estimators_, estimator.estimators_features_, strict=True):
        leaves = tree.apply(rows[:, features].astype(np.float32))
        sizes = tree.tree_.n_node_samples
        expected += np.log2(sizes[0] / sizes[leaves])
    expected /= len(estimator.estimators_)
    assert found.exact
    np.testing.assert_allclose(found.contributions.sum(axis=1), expected, rtol=1e-9)


def test_mahalanobis_terms_add_up_to_the_squared_distance(training: np.ndarray) -> None:
    estimator = fitted("elliptic", training)
    rows = np.vstack([planted(1, n=5), training[:5]])

    found = attribution("elliptic", training, rows)

    assert found.exact
    np.testing.assert_allclose(
        found.contributions.sum(axis=1), estimator.mahalanobis(rows), rtol=1e-9
    )


def test_neighbour_gaps_add_up_to_the_mean_squared_neighbour_distance(
    training: np.ndarray,
) -> None:
    estimator = fitted("lof", training)
    rows = np.vstack([planted(4, n=5), training[:5] + 0.01])

    found = attribution("lof", training, rows)

    distances, _ = estimator.kneighbors(rows, n_neighbors=estimator.n_neighbors_)
    assert found.exact
    np.testing.assert_allclose(
        found.contributions.sum(axis=1), (distances**2).mean(axis=1), rtol=1e-9
    )


def test_one_class_svm_is_marked_approximate(training: np.ndarray) -> None:
    found = attribution("ocsvm", training, planted(0, n=3))

    assert (found.method, found.exact) == ("robust_z", False)


def test_an_svm_without_a_training_profile_has_no_explanation(training: np.ndarray) -> None:
    assert explainer_for(fitted("ocsvm", training), profile=None) is None


def test_explanations_keep_the_top_features_largest_first() -> None:
    found = Attribution(np.array([[0.1, 3.0, -2.0, 1.5]]), "m", True, "t")

    (explained,) = explanations(found, feature_names=["a", "b", "c", "d"], top_k=3)

    assert explained == {
        "method": "m",
        "exact": True,
        "top": [
            {"feature": "b", "contribution": 3.0},
            {"feature": "d", "contribution": 1.5},
            {"feature": "a", "contribution": 0.1},
        ],
    }
    (by_index,) = explanations(found, feature_names=None, top_k=1)
    assert by_index["top"] == [{"feature": 1, "contribution": 3.0}]


@pytest.mark.parametrize("walk", [True, False], ids=["c-walk", "numpy-walk"])
@pytest.mark.parametrize("max_features", [1.0, 0.5])
def test_isolation_bits_from_the_node_table_equal_a_walk_crediting_each_split(
    training: np.ndarray, max_features: float, walk: bool
) -> None:
    # Given forests with and without feature subsampling
    from sklearn.ensemble import IsolationForest

    from pynomaly_workers.adapters.scorers.forest import ForestScorer

    estimator = IsolationForest(n_estimators=30, max_features=max_features, random_state=3).fit(
        training
    )
    scorer = ForestScorer(estimator, walk=walk)
    rows = np.vstack([planted(1, n=7), training[:100]])

    # When credits come from the per-node table (a handful of rows only walk: no table
    # is built for them) and from walking the trees split by split
    few = scorer.isolation_bits(rows[:10])
    assert scorer._credit_table is None
    tabled = scorer.isolation_bits(rows)
    walked = scorer._isolation_bits_walking(np.asarray(rows, dtype=np.float32).astype(np.float64))

    # Then every row's credit per feature is the same (the C walk reads the node
    # table at its leaf positions)
    if walk:
        assert scorer._leaf_table is not None
    else:
        assert scorer._credit_table is not None
    np.testing.assert_allclose(tabled, walked, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(few, walked[:10], rtol=1e-9, atol=1e-12)
