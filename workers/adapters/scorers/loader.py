"""Loading model versions into scorers, choosing the backend by measurement, with a
bounded per-process cache.

ONNX Runtime has a far lower per-call overhead (single rows: tens of microseconds
against milliseconds for scikit-learn's IsolationForest), while scikit-learn can be
faster on large batches. Rather than guess, each load times both backends on a few batch
sizes and every later call uses the faster one for its size.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from threading import Lock

import numpy as np

from pynomaly_workers.adapters.scorers import sklearn
from pynomaly_workers.adapters.scorers.onnx import OnnxScorer
from pynomaly_workers.domain.models import ModelVersion
from pynomaly_workers.domain.ports import ModelStore, Scorer
from pynomaly_workers.domain.records import Matrix

log = logging.getLogger(__name__)

CALIBRATION_SIZES = (1, 64, 2048)
_REPEATS = 3


@dataclass(frozen=True, slots=True)
class Calibration:
    """Measured seconds per call of each backend at each batch size."""

    sizes: tuple[int, ...]
    seconds: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def best(self, n_rows: int) -> str:
        """The backend with the lowest estimated time for ``n_rows`` rows."""
        index = int(np.searchsorted(self.sizes, n_rows))
        index = min(index, len(self.sizes) - 1)
        return min(self.seconds, key=lambda backend: self.seconds[backend][index])

    def row_cost_us(self) -> float:
        """Microseconds per row of the best backend on the largest calibrated batch."""
        largest = self.sizes[-1]
        return min(times[-1] for times in self.seconds.values()) / largest * 1e6


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model version with its scorers ready in this process."""

    version: ModelVersion
    sklearn: Scorer
    onnx: Scorer | None
    calibration: Calibration | None = None

    def scorer_for(self, n_rows: int) -> Scorer:
        """The faster backend for a batch of ``n_rows``, as measured at load."""
        if self.onnx is None:
            return self.sklearn
        if self.calibration is None:
            return self.onnx if n_rows <= 64 else self.sklearn
        return self.onnx if self.calibration.best(n_rows) == "onnx" else self.sklearn

    def row_cost_us(self) -> float | None:
        """Scoring cost per row in microseconds, if measured."""
        return self.calibration.row_cost_us() if self.calibration else None


def calibrate(scorers: dict[str, Scorer], *, n_features: int) -> Calibration:
    """Time each scorer on synthetic rows at :data:`CALIBRATION_SIZES` (best of a few)."""
    rows = np.random.default_rng(0).normal(size=(CALIBRATION_SIZES[-1], n_features))
    seconds: dict[str, tuple[float, ...]] = {}
    for name, scorer in scorers.items():
        scorer.score(rows[:8])  # warm-up: first calls allocate
        seconds[name] = tuple(_best_time(scorer, rows[:size]) for size in CALIBRATION_SIZES)
    return Calibration(sizes=CALIBRATION_SIZES, seconds=seconds)


def _best_time(scorer: Scorer, rows: Matrix) -> float:
    best = float("inf")
    for _ in range(_REPEATS):
        started = time.perf_counter()
        scorer.score(rows)
        best = min(best, time.perf_counter() - started)
    return best


class ModelLoader:
    """Loads artifacts from the store once per process and keeps the last few in memory."""

    def __init__(
        self, store: ModelStore, *, capacity: int, onnx_threads: int = 1, calibrate: bool = True
    ) -> None:
        self.store = store
        self.capacity = capacity
        self.onnx_threads = onnx_threads
        self.calibrate = calibrate
        self._cache: OrderedDict[int, LoadedModel] = OrderedDict()
        self._lock = Lock()

    def load(self, version: ModelVersion) -> LoadedModel:
        """The loaded model for ``version`` (an immutable version never needs reloading)."""
        with self._lock:
            cached = self._cache.get(version.id)
            if cached is not None:
                self._cache.move_to_end(version.id)
                return cached
        loaded = self._build(version)
        with self._lock:
            self._cache[version.id] = loaded
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return loaded

    def _build(self, version: ModelVersion) -> LoadedModel:
        estimator = sklearn.load(self.store.load_artifact(version.artifact_sha256))
        scorers: dict[str, Scorer] = {"sklearn": sklearn.SklearnScorer(estimator)}
        if version.onnx_sha256 is not None:
            content = self.store.load_artifact(version.onnx_sha256)
            scorers["onnx"] = OnnxScorer(content, threads=self.onnx_threads)
        calibration = None
        if self.calibrate:
            calibration = calibrate(scorers, n_features=version.n_features)
            log.info(
                "model %s: backend by batch size %s; %.2f us/row",
                version.label,
                {size: calibration.best(size) for size in calibration.sizes},
                calibration.row_cost_us(),
            )
        return LoadedModel(
            version=version,
            sklearn=scorers["sklearn"],
            onnx=scorers.get("onnx"),
            calibration=calibration,
        )
