"""HBOS and ECOD as batch-independent detectors with scikit-learn's estimator interface.

Both score a record as a sum over its features, against reference distributions frozen
at training: a record's score never depends on the rest of its batch. (PyOD's ECOD
refits its empirical distributions on the training rows *plus* every batch it scores, so
the same record scores differently in different batches; on the training rows the two
definitions agree, which ``tests/unit/test_detectors.py`` checks against PyOD.)

As for scikit-learn's detectors, ``decision_function`` is higher for normal records: the
anomaly score is its negation, and :meth:`feature_scores` splits that score by feature
exactly (the explanation of a flagged record).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from pynomaly_workers.domain.records import Matrix

Array = npt.NDArray[np.float64]


class HBOS:
    """Histogram-based outlier score (Goldstein & Dengel, 2012), as PyOD defines it: per
    feature, ``-log2(density + alpha)`` of the training histogram bin the value falls
    in; values past the outer edges by more than ``tol`` bin widths get the least dense
    bin's term."""

    def __init__(self, n_bins: int = 10, alpha: float = 0.1, tol: float = 0.5) -> None:
        self.n_bins = n_bins
        self.alpha = alpha
        self.tol = tol

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"n_bins": self.n_bins, "alpha": self.alpha, "tol": self.tol}

    def fit(self, matrix: Matrix) -> HBOS:
        if not isinstance(self.n_bins, int) or self.n_bins < 2:
            raise ValueError(f"n_bins must be an integer >= 2, got {self.n_bins!r}")
        for name in ("alpha", "tol"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ValueError(f"{name} must be in (0, 1), got {value!r}")
        data = np.asarray(matrix, dtype=np.float64)
        pairs = [
            np.histogram(data[:, j], bins=self.n_bins, density=True) for j in range(data.shape[1])
        ]
        self.hist_ = np.column_stack([density for density, _ in pairs])
        self.bin_edges_ = np.column_stack([edges for _, edges in pairs])
        self.n_features_in_ = data.shape[1]
        return self

    def feature_scores(self, matrix: Matrix) -> Array:
        """Per record and feature, that feature's share of the anomaly score."""
        data = np.asarray(matrix, dtype=np.float64)
        terms = np.log2(self.hist_ + self.alpha)  # (bins, features)
        out = np.empty_like(data)
        for j in range(data.shape[1]):
            edges, term = self.bin_edges_[:, j], terms[:, j]
            index = np.digitize(data[:, j], edges, right=True)
            inside = term[np.clip(index - 1, 0, self.n_bins - 1)]
            below_by = (edges[0] - data[:, j]) / (edges[1] - edges[0])
            above_by = (data[:, j] - edges[-1]) / (edges[-1] - edges[-2])
            value = np.where(
                index == 0, np.where(below_by <= self.tol, term[0], term.min()), inside
            )
            value = np.where(
                index == self.n_bins + 1,
                np.where(above_by <= self.tol, term[-1], term.min()),
                value,
            )
            out[:, j] = -value
        return out

    def decision_function(self, matrix: Matrix) -> Array:
        normality: Array = -self.feature_scores(matrix).sum(axis=1)
        return normality


class ECOD:
    """Empirical-CDF-based outlier detection (Li et al., 2022), with the empirical
    distributions frozen at training: per feature, the larger of the left-tail and
    right-tail ``-log`` probabilities, or the tail the training skewness points to.
    A value beyond every training value counts half a training row in its tail, so it
    scores higher than any training row, and finitely."""

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {}

    def fit(self, matrix: Matrix) -> ECOD:
        from scipy.stats import skew  # type: ignore[import-untyped]

        data = np.asarray(matrix, dtype=np.float64)
        self.sorted_ = np.sort(data, axis=0)
        self.skew_sign_ = np.sign(skew(data, axis=0))
        self.n_features_in_ = data.shape[1]
        return self

    def feature_scores(self, matrix: Matrix) -> Array:
        data = np.asarray(matrix, dtype=np.float64)
        n = len(self.sorted_)
        at_most = np.empty_like(data)
        at_least = np.empty_like(data)
        for j in range(data.shape[1]):
            column = self.sorted_[:, j]
            at_most[:, j] = np.searchsorted(column, data[:, j], side="right")
            at_least[:, j] = n - np.searchsorted(column, data[:, j], side="left")
        left = -np.log(np.maximum(at_most, 0.5) / n)
        right = -np.log(np.maximum(at_least, 0.5) / n)
        s = self.skew_sign_
        by_skew = left * -np.sign(s - 1) + right * np.sign(s + 1)
        scores: Array = np.maximum(np.maximum(left, right), by_skew)
        return scores

    def decision_function(self, matrix: Matrix) -> Array:
        normality: Array = -self.feature_scores(matrix).sum(axis=1)
        return normality
