"""Per-feature attributions faithful to each model, for the records it flagged.

* IsolationForest: the bits of isolation each feature's splits earned on the record's
  path (:meth:`ForestScorer.isolation_bits`); exact: they add up to the path's
  log2(root size / leaf size), averaged over trees.
* EllipticEnvelope: the squared Mahalanobis distance split by feature,
  ``d_j * (P d)_j`` with ``d = x - location``; exact.
* LocalOutlierFactor: the squared gaps to the record's k nearest training neighbours,
  per feature, averaged over the neighbours; exact for the mean squared distance.
* OneClassSVM: a robust z-score per feature against the training median and scale;
  approximate (it ranks features, it does not split the decision function).
* Detectors whose score is a sum over features (HBOS, ECOD) report those terms; exact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pynomaly_workers.adapters.scorers.forest import ForestScorer
from pynomaly_workers.domain.explain import Attribution
from pynomaly_workers.domain.profile import TrainingProfile
from pynomaly_workers.domain.records import Matrix

Explainer = Callable[[Matrix], Attribution]


def explainer_for(
    estimator: Any, *, profile: TrainingProfile | None, forest: ForestScorer | None = None
) -> Explainer | None:
    """The attribution method for ``estimator``, or None if it has none. An
    IsolationForest is explained by its ``forest`` arrays (the estimator may be None)."""
    kind = type(estimator).__name__
    if forest is not None or kind == "IsolationForest":
        paths = forest or ForestScorer(estimator)
        return lambda rows: Attribution(
            paths.isolation_bits(rows), "isolation_path", True, "isolation bits of the path"
        )
    if kind == "EllipticEnvelope":
        return lambda rows: _mahalanobis(estimator, rows)
    if kind == "LocalOutlierFactor":
        return lambda rows: _neighbour_gaps(estimator, rows)
    if hasattr(estimator, "feature_scores"):
        return lambda rows: Attribution(
            np.asarray(estimator.feature_scores(rows), dtype=np.float64),
            "feature_scores",
            True,
            "anomaly score",
        )
    if profile is not None:
        return lambda rows: _robust_z(profile, rows)
    return None


def _mahalanobis(estimator: Any, rows: Matrix) -> Attribution:
    gap = np.asarray(rows, dtype=np.float64) - estimator.location_
    contributions = gap * (gap @ np.asarray(estimator.precision_).T)
    return Attribution(contributions, "mahalanobis", True, "squared Mahalanobis distance")


def _neighbour_gaps(estimator: Any, rows: Matrix) -> Attribution:
    from sklearn import config_context

    with config_context(working_memory=64):
        _, neighbours = estimator.kneighbors(rows, n_neighbors=estimator.n_neighbors_)
    points = np.asarray(estimator._fit_X, dtype=np.float64)[neighbours]  # (n, k, d)
    gaps = (np.asarray(rows, dtype=np.float64)[:, None, :] - points) ** 2
    return Attribution(
        gaps.mean(axis=1),
        "neighbour_gaps",
        True,
        "mean squared distance to the k nearest training neighbours",
    )


def _robust_z(profile: TrainingProfile, rows: Matrix) -> Attribution:
    z = np.abs(np.asarray(rows, dtype=np.float64) - np.asarray(profile.median)) / np.asarray(
        profile.scale
    )
    return Attribution(z, "robust_z", False, "")
