"""Loading model versions into scorers, with a bounded per-process cache."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from threading import Lock

from pynomaly_workers.adapters.scorers import sklearn
from pynomaly_workers.adapters.scorers.onnx import OnnxScorer
from pynomaly_workers.domain.models import ModelVersion
from pynomaly_workers.domain.ports import ModelStore, Scorer

# Below this many rows ONNX Runtime's lower per-call overhead wins; above it
# scikit-learn's vectorised tree traversal does (measured for IsolationForest).
ONNX_MAX_ROWS = 64


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model version with its scorers ready in this process."""

    version: ModelVersion
    sklearn: Scorer
    onnx: Scorer | None

    def scorer_for(self, n_rows: int) -> Scorer:
        """The faster backend for a batch of ``n_rows``."""
        if self.onnx is not None and n_rows <= ONNX_MAX_ROWS:
            return self.onnx
        return self.sklearn


class ModelLoader:
    """Loads artifacts from the store once per process and keeps the last few in memory."""

    def __init__(self, store: ModelStore, *, capacity: int, onnx_threads: int = 1) -> None:
        self.store = store
        self.capacity = capacity
        self.onnx_threads = onnx_threads
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
        onnx = None
        if version.onnx_sha256 is not None:
            onnx = OnnxScorer(
                self.store.load_artifact(version.onnx_sha256), threads=self.onnx_threads
            )
        return LoadedModel(version=version, sklearn=sklearn.SklearnScorer(estimator), onnx=onnx)
