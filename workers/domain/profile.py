"""What a model version learned about its training data, kept with the version: robust
per-feature location and scale (for explanations), and histograms on bin edges fixed at
training time (for drift monitoring). Pure: numpy only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pynomaly_workers.domain.records import Matrix
from pynomaly_workers.domain.scoring import Scores

N_BINS = 10
_MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its sigma


@dataclass(frozen=True, slots=True)
class Histogram:
    """Counts of values on fixed inner edges: bin i holds edges[i-1] < v <= edges[i],
    with the first and last bins open-ended (len(counts) == len(edges) + 1)."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"edges": list(self.edges), "counts": list(self.counts)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        return cls(tuple(float(e) for e in data["edges"]), tuple(int(c) for c in data["counts"]))


def bin_counts(
    values: np.ndarray[Any, np.dtype[np.float64]], edges: tuple[float, ...]
) -> np.ndarray[Any, np.dtype[np.int64]]:
    """How many ``values`` fall in each bin of ``edges`` (see :class:`Histogram`)."""
    index = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="left")
    return np.bincount(index, minlength=len(edges) + 1).astype(np.int64)


def histogram(values: np.ndarray[Any, np.dtype[np.float64]], *, n_bins: int = N_BINS) -> Histogram:
    """Counts on edges at the values' own quantiles (equal-mass bins at training time)."""
    levels = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    edges = tuple(float(e) for e in np.unique(np.quantile(values, levels)))
    return Histogram(edges, tuple(int(c) for c in bin_counts(values, edges)))


@dataclass(frozen=True, slots=True)
class TrainingProfile:
    """Per-feature median and robust scale, per-feature and score histograms."""

    n_rows: int
    median: tuple[float, ...]
    scale: tuple[float, ...]
    features: tuple[Histogram, ...]
    scores: Histogram

    @property
    def n_features(self) -> int:
        return len(self.median)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_rows": self.n_rows,
            "median": list(self.median),
            "scale": list(self.scale),
            "features": [h.to_dict() for h in self.features],
            "scores": self.scores.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingProfile:
        return cls(
            n_rows=int(data["n_rows"]),
            median=tuple(float(v) for v in data["median"]),
            scale=tuple(float(v) for v in data["scale"]),
            features=tuple(Histogram.from_dict(h) for h in data["features"]),
            scores=Histogram.from_dict(data["scores"]),
        )


def profile_training_data(matrix: Matrix, scores: Scores) -> TrainingProfile:
    """The profile of the rows a model was fitted on and their anomaly scores."""
    median = np.median(matrix, axis=0)
    mad = np.median(np.abs(matrix - median), axis=0) * _MAD_TO_SIGMA
    fallback = np.std(matrix, axis=0)
    scale = np.where(mad > 0, mad, np.where(fallback > 0, fallback, 1.0))
    return TrainingProfile(
        n_rows=len(matrix),
        median=tuple(float(v) for v in median),
        scale=tuple(float(v) for v in scale),
        features=tuple(histogram(matrix[:, j]) for j in range(matrix.shape[1])),
        scores=histogram(np.asarray(scores, dtype=np.float64)),
    )
