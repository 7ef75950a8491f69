"""Thresholds and severity: pure math over anomaly scores (higher = more anomalous).

A model version stores :class:`ScoreStats` computed from its training scores. The
threshold is the training-score quantile at ``1 - contamination``; a record is an anomaly
when its score is strictly above it. Severity is calibrated to the same training scores:

* at or below the threshold it is ``0.5 * F(score) / F(threshold)`` where ``F`` is the
  empirical CDF of the training scores, so it climbs from 0 to 0.5 with rank;
* above it, ``0.5 + 0.5 * (1 - exp(-(score - threshold) / scale))`` with ``scale`` the
  distance from the threshold to the largest training score, so the worst training
  outlier sits at about 0.82 and nothing exceeds 1.

Severity therefore lies in [0, 1], is monotone in the score, and ``severity > 0.5`` means
"anomaly" for every model, which the partial index on ``anomalies`` relies on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Scores = npt.NDArray[np.float64]

QUANTILE_LEVELS = np.linspace(0.0, 1.0, 201)
_MIN_SCALE = 1e-12
_ABOVE_HALF = float(np.nextafter(0.5, 1.0))


@dataclass(frozen=True, slots=True)
class ScoreStats:
    """What a model version keeps of its training scores to judge new ones."""

    threshold: float
    contamination: float
    quantiles: tuple[float, ...]
    max_score: float
    scale: float
    mean: float
    std: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (floats and ints only)."""
        return {
            "threshold": self.threshold,
            "contamination": self.contamination,
            "quantiles": list(self.quantiles),
            "max_score": self.max_score,
            "scale": self.scale,
            "mean": self.mean,
            "std": self.std,
            "n": self.n,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoreStats:
        """Inverse of :meth:`to_dict`."""
        return cls(
            threshold=float(data["threshold"]),
            contamination=float(data["contamination"]),
            quantiles=tuple(float(q) for q in data["quantiles"]),
            max_score=float(data["max_score"]),
            scale=float(data["scale"]),
            mean=float(data["mean"]),
            std=float(data["std"]),
            n=int(data["n"]),
        )


def fit_score_stats(training_scores: Scores, *, contamination: float) -> ScoreStats:
    """Summarise training scores: threshold at the ``1 - contamination`` quantile."""
    if not 0.0 < contamination < 0.5:
        raise ValueError(f"contamination must be in (0, 0.5), got {contamination}")
    scores = np.asarray(training_scores, dtype=np.float64)
    if scores.size == 0 or not np.isfinite(scores).all():
        raise ValueError("training scores must be a non-empty array of finite numbers")
    threshold = float(np.quantile(scores, 1.0 - contamination))
    max_score = float(scores.max())
    spread = float(np.quantile(scores, 0.75) - np.quantile(scores, 0.25))
    scale = max(max_score - threshold, spread, _MIN_SCALE)
    return ScoreStats(
        threshold=threshold,
        contamination=contamination,
        quantiles=tuple(float(q) for q in np.quantile(scores, QUANTILE_LEVELS)),
        max_score=max_score,
        scale=scale,
        mean=float(scores.mean()),
        std=float(scores.std()),
        n=int(scores.size),
    )


def anomaly_mask(scores: Scores, *, threshold: float) -> npt.NDArray[np.bool_]:
    """True where a score is above the threshold."""
    return np.asarray(scores > threshold)


def severity(scores: Scores, stats: ScoreStats) -> Scores:
    """Calibrated severity in [0, 1] for each score (see the module docstring)."""
    scores = np.asarray(scores, dtype=np.float64)
    quantiles = np.asarray(stats.quantiles)
    cdf = np.interp(scores, quantiles, QUANTILE_LEVELS, left=0.0, right=1.0)
    cdf_at_threshold = float(np.interp(stats.threshold, quantiles, QUANTILE_LEVELS))
    below = 0.5 * cdf / max(cdf_at_threshold, _MIN_SCALE)
    # Only the excess over the threshold matters (clamping it keeps scores far below from
    # overflowing expm1), and a huge excess over a tiny scale saturates at 1 by design. The
    # floor keeps 'severity > 0.5' true for an anomaly a rounding error above the threshold.
    with np.errstate(over="ignore"):
        excess = np.maximum(scores - stats.threshold, 0.0)
        above = np.maximum(0.5 + 0.5 * -np.expm1(-excess / stats.scale), _ABOVE_HALF)
    result = np.where(scores > stats.threshold, above, np.minimum(below, 0.5))
    return np.clip(result, 0.0, 1.0)


def parity_error(reference: Scores, candidate: Scores) -> float:
    """Largest absolute difference between two score vectors of equal length."""
    if reference.shape != candidate.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {candidate.shape}")
    if reference.size == 0:
        return 0.0
    error = float(np.max(np.abs(reference - candidate)))
    return error if math.isfinite(error) else math.inf
