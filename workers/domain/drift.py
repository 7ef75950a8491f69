"""Drift statistics that need nothing but numpy: the population stability index, and the
Benjamini-Hochberg correction across the tests of one model's features."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

PSI_EPSILON = 1e-4  # a bin empty on one side still counts, a little


def proportions(counts: Sequence[int] | npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """Counts as shares of their total, with empty bins floored at a small share."""
    values = np.asarray(counts, dtype=np.float64)
    total = values.sum()
    shares = values / total if total > 0 else np.full(len(values), 1.0 / len(values))
    floored: npt.NDArray[np.float64] = np.maximum(shares, PSI_EPSILON)
    return floored


def population_stability_index(
    expected: Sequence[int] | npt.NDArray[Any], actual: Sequence[int] | npt.NDArray[Any]
) -> float:
    """PSI = sum (a - e) ln(a / e) over the bins: 0 for the same distribution; by common
    practice < 0.1 is stable, 0.1-0.25 a moderate shift, > 0.25 a major one."""
    e, a = proportions(expected), proportions(actual)
    return float(np.sum((a - e) * np.log(a / e)))


def benjamini_hochberg(p_values: Sequence[float]) -> npt.NDArray[np.float64]:
    """Adjusted p-values (q-values) controlling the false discovery rate across tests."""
    p = np.asarray(p_values, dtype=np.float64)
    n = len(p)
    if n == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * n / np.arange(1, n + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(adjusted, 1.0)
    return out


class DriftCounts:
    """What a model version scored in one time window, folded into the bins of its
    training profile: records, flagged records, per-feature bin counts, score bin counts,
    and the scores again in fine bins (``domain.thresholds.score_edges``, for threshold
    projections; None in windows counted before they were kept). No record is kept."""

    __slots__ = ("features", "fine", "n_flagged", "n_records", "scores")

    def __init__(
        self,
        *,
        n_records: int,
        n_flagged: int,
        features: npt.NDArray[np.int64],
        scores: npt.NDArray[np.int64],
        fine: npt.NDArray[np.int64] | None = None,
    ) -> None:
        self.n_records = n_records
        self.n_flagged = n_flagged
        self.features = features  # (n_features, n_bins + 1), ragged bins padded with 0
        self.scores = scores
        self.fine = fine

    def add(self, other: DriftCounts) -> None:
        """Fold ``other`` into these counts."""
        self.n_records += other.n_records
        self.n_flagged += other.n_flagged
        self.features = self.features + other.features
        self.scores = self.scores + other.scores
        if other.fine is not None:
            # fine counts cover only the records counted since they were kept: their sum
            # says how many (a window may straddle the upgrade)
            self.fine = other.fine if self.fine is None else self.fine + other.fine

    def to_dict(self) -> dict[str, Any]:
        data = {
            "n_records": self.n_records,
            "n_flagged": self.n_flagged,
            "features": self.features.tolist(),
            "scores": self.scores.tolist(),
        }
        if self.fine is not None:
            data["fine"] = self.fine.tolist()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriftCounts:
        fine = data.get("fine")
        return cls(
            n_records=int(data["n_records"]),
            n_flagged=int(data["n_flagged"]),
            features=np.asarray(data["features"], dtype=np.int64),
            scores=np.asarray(data["scores"], dtype=np.int64),
            fine=np.asarray(fine, dtype=np.int64) if fine is not None else None,
        )
