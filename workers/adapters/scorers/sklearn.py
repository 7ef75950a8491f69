"""scikit-learn estimators: building, fitting, serialising and scoring.

Artifacts are pickles, the format scikit-learn supports. They are only ever loaded from
the project's own database after their sha256 matches the registered model version, never
from a message or a cache.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

from pynomaly_workers.domain.errors import InvalidInput
from pynomaly_workers.domain.records import Matrix
from pynomaly_workers.domain.scoring import Scores

_SEED = 0
WORKING_MEMORY_MB = 64


def build_estimator(algorithm: str, *, contamination: float, params: dict[str, Any]) -> Any:
    """A fresh estimator for ``algorithm`` with the caller's parameters on top of ours."""
    from sklearn.covariance import EllipticEnvelope
    from sklearn.ensemble import IsolationForest
    from sklearn.neighbors import LocalOutlierFactor
    from sklearn.svm import OneClassSVM

    from pynomaly_workers.adapters.scorers.detectors import ECOD, HBOS

    builders: dict[str, tuple[Any, dict[str, Any]]] = {
        "iforest": (IsolationForest, {"contamination": contamination, "random_state": _SEED}),
        "lof": (LocalOutlierFactor, {"contamination": contamination, "novelty": True}),
        "ocsvm": (OneClassSVM, {"nu": contamination, "gamma": "scale"}),
        "elliptic": (EllipticEnvelope, {"contamination": contamination, "random_state": _SEED}),
        "hbos": (HBOS, {}),
        "ecod": (ECOD, {}),
    }
    cls, defaults = builders[algorithm]
    try:
        return cls(**{**defaults, **params})
    except TypeError as exc:
        raise InvalidInput(f"params are not valid for {algorithm}: {exc}") from None


def fit(estimator: Any, matrix: Matrix) -> Any:
    """Fit and return the estimator; parameter errors become :class:`InvalidInput`."""
    try:
        return estimator.fit(matrix)
    except ValueError as exc:
        raise InvalidInput(f"training failed: {exc}") from None


def training_scores(estimator: Any, matrix: Matrix) -> Scores:
    """Anomaly scores of the training rows themselves (higher = more anomalous).

    LOF in novelty mode must not score its own training rows with ``decision_function``
    (each point would count itself as a neighbour); scikit-learn keeps the right values
    in ``negative_outlier_factor_``.
    """
    if hasattr(estimator, "negative_outlier_factor_"):
        return np.asarray(-(estimator.negative_outlier_factor_ - estimator.offset_), np.float64)
    return SklearnScorer(estimator).score(matrix)


def dump(estimator: Any) -> bytes:
    """Serialise a fitted estimator."""
    buffer = io.BytesIO()
    pickle.dump(estimator, buffer, protocol=pickle.HIGHEST_PROTOCOL)
    return buffer.getvalue()


def load(content: bytes) -> Any:
    """Inverse of :func:`dump`; only for bytes whose sha256 the store has verified."""
    return pickle.loads(content)  # noqa: S301 - verified, self-produced artifact


class SklearnScorer:
    """Scores with the estimator's own ``decision_function`` (negated)."""

    backend = "sklearn"
    nbytes = 0
    """Held in memory, as the loader counts it (the pickled artifact's size)."""

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator

    def score(self, matrix: Matrix) -> Scores:
        from sklearn import config_context

        # Neighbour-based models compute distances in chunks of up to working_memory
        # (1 GB by default); a worker process should not grow that much for one batch.
        with config_context(working_memory=WORKING_MEMORY_MB):
            return np.asarray(-self.estimator.decision_function(matrix), dtype=np.float64)
