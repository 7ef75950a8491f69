"""Our IsolationForest -> ONNX exporter reproduces scikit-learn's decision_function; the
other estimators still go through skl2onnx."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
import pytest
from sklearn.covariance import EllipticEnvelope
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor
from sklearn.svm import OneClassSVM

from pynomaly_workers.adapters.scorers.onnx import OnnxScorer, export

Array = np.ndarray[Any, Any]

# The trees compare the same float32 rows with the same float64 thresholds and sum float64
# leaf values; the one inexact step is the tree operator's float32 output r (relative error
# <= 2**-24). The score is -2**-r - offset, so its error is <= ln 2 * r * 2**-r * 2**-24,
# and ln 2 * r * 2**-r peaks at 1 / e (r = 1 / ln 2): 2.2e-8 in all, plus float64 noise.
TOLERANCE = 2.0**-24 / math.e + 1e-12
# ONNX Runtime 1.19, the oldest pyproject allows, reads IR versions up to 10.
OLDEST_RUNTIME_IR = 10


def _rows(*, n_rows: int, n_features: int, seed: int) -> Array:
    """Correlated normal rows with a few far-out ones and some repeated values."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(n_features, n_features)) / math.sqrt(n_features)
    rows = rng.normal(size=(n_rows, n_features)) @ mixing
    rows[: n_rows // 50] *= 6.0
    rows[n_rows // 2 : n_rows // 2 + n_rows // 10] = np.round(rows[: n_rows // 10], 1)
    return rows


def _on_thresholds(estimator: IsolationForest, rows: Array) -> Array:
    """Rows whose split feature sits on, just below and just above a tree's threshold
    (as float32, which is what both scikit-learn and ONNX compare)."""
    probes = []
    trees = zip(estimator.estimators_[:5], estimator.estimators_features_[:5], strict=True)
    for tree, features in trees:
        for node in np.flatnonzero(tree.tree_.children_left >= 0)[:40]:
            at = np.float32(tree.tree_.threshold[node])
            for value in (np.nextafter(at, -np.inf), at, np.nextafter(at, np.inf)):
                probe = rows[node % len(rows)].copy()
                probe[features[tree.tree_.feature[node]]] = value
                probes.append(probe)
    return np.asarray(probes)


def _decision_error(estimator: Any, rows: Array) -> float:
    content = export(estimator, n_features=rows.shape[1])
    assert content is not None
    scores = OnnxScorer(content).score(rows)  # -decision_function, as every scorer returns
    return float(np.max(np.abs(scores + estimator.decision_function(rows))))


@pytest.mark.parametrize("n_features", [1, 8, 64])
@pytest.mark.parametrize(
    "params",
    [
        {"n_estimators": 10},
        {"n_estimators": 100},
        {"n_estimators": 200},
        {"max_samples": 64},
        {"max_samples": 1000},
        {"max_features": 0.5},
        {"bootstrap": True},
        {"contamination": 0.01},
        {"n_estimators": 200, "max_samples": 1000, "max_features": 0.5, "bootstrap": True},
        {"n_estimators": 10, "max_samples": 64, "bootstrap": True, "contamination": 0.01},
    ],
)
def test_exported_forest_scores_like_decision_function(
    params: dict[str, Any], n_features: int
) -> None:
    # Given an IsolationForest fitted on 2,000 rows
    train = _rows(n_rows=2000, n_features=n_features, seed=n_features)
    estimator = IsolationForest(random_state=7, **params).fit(train)
    fresh = _rows(n_rows=500, n_features=n_features, seed=100 + n_features) * 1.5
    probes = _on_thresholds(estimator, train)

    # When its export scores the training rows, new rows and rows on split thresholds
    error = _decision_error(estimator, np.vstack([train, fresh, probes]))

    # Then the scores are scikit-learn's decision_function to float32's last bit of r
    assert error <= TOLERANCE


def test_missing_values_take_the_branch_scikit_learn_takes() -> None:
    # Given a forest and rows with NaN in various features (scikit-learn routes a NaN
    # per node, by where training sent its missing values, else to the larger child)
    train = _rows(n_rows=2000, n_features=8, seed=1)
    estimator = IsolationForest(random_state=0).fit(train)
    rows = train[:400].copy()
    rows[np.arange(400), np.arange(400) % 8] = np.nan
    rows[::7, 3] = np.nan

    # When exported and scored, Then it agrees with scikit-learn
    assert _decision_error(estimator, rows) <= TOLERANCE


def test_forest_of_one_sample_trees_scores_like_scikit_learn() -> None:
    # Given trees of one sample each: scikit-learn's normalising denominator is zero
    train = _rows(n_rows=200, n_features=3, seed=2)
    estimator = IsolationForest(max_samples=1, n_estimators=5, random_state=0).fit(train)

    # When exported and scored, Then every row gets scikit-learn's fixed score
    assert _decision_error(estimator, train) <= TOLERANCE


def test_constant_data_exports_single_leaf_trees() -> None:
    # Given rows that are all equal: every tree is a lone leaf holding all its samples
    estimator = IsolationForest(n_estimators=20, random_state=0).fit(np.ones((300, 4)))
    rows = np.vstack([np.ones((3, 4)), np.zeros((3, 4))])

    # When exported and scored, Then it agrees with scikit-learn
    assert _decision_error(estimator, rows) <= TOLERANCE


def test_forest_export_is_one_tree_operator_that_old_runtimes_load() -> None:
    # Given a 100-tree forest
    train = _rows(n_rows=2000, n_features=8, seed=3)
    estimator = IsolationForest(n_estimators=100, random_state=0).fit(train)

    # When exported
    content = export(estimator, n_features=8)
    assert content is not None
    model = onnx.load_from_string(content)

    # Then it is one TreeEnsembleRegressor (not skl2onnx's graph), valid ONNX, within the
    # IR version the oldest supported runtime reads, with a single ``scores`` output
    onnx.checker.check_model(model)
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("TreeEnsembleRegressor") == 1
    assert len(ops) < 10
    assert model.producer_name != "skl2onnx"
    assert model.ir_version <= OLDEST_RUNTIME_IR
    assert [output.name for output in model.graph.output] == ["scores"]


@pytest.mark.parametrize(
    "estimator",
    [LocalOutlierFactor(novelty=True, n_neighbors=10), OneClassSVM(gamma="scale")],
    ids=["lof", "ocsvm"],
)
def test_other_estimators_still_export_through_skl2onnx(estimator: Any) -> None:
    # Given a fitted estimator that is not an IsolationForest
    train = _rows(n_rows=300, n_features=4, seed=4)
    estimator.fit(train)

    # When exported
    content = export(estimator, n_features=4)
    assert content is not None

    # Then skl2onnx built it, and it still scores like scikit-learn
    assert onnx.load_from_string(content).producer_name == "skl2onnx"
    assert _decision_error(estimator, train[:100]) < 1e-3


def test_estimators_skl2onnx_cannot_convert_still_have_no_export() -> None:
    # Given an EllipticEnvelope, for which skl2onnx has no converter
    estimator = EllipticEnvelope(random_state=0).fit(_rows(n_rows=300, n_features=4, seed=5))

    # When exported, Then there is no ONNX model (it is scored by scikit-learn)
    assert export(estimator, n_features=4) is None


def test_a_converter_failing_on_its_own_bug_leaves_the_version_without_onnx(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given skl2onnx failing inside (as an id-keyed lookup of its topology once did)
    import skl2onnx
    from sklearn.covariance import EllipticEnvelope

    def broken(*_args: object, **_kwargs: object) -> None:
        raise KeyError(139657568066432)

    monkeypatch.setattr(skl2onnx, "to_onnx", broken)
    rows = np.random.default_rng(0).normal(size=(100, 3))

    # When a version is exported, then it simply has no ONNX model
    assert export(EllipticEnvelope().fit(rows), n_features=3) is None
