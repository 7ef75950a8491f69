"""Loading model versions into scorers, choosing the backend by measurement, with a
bounded per-process cache.

Backends differ by batch size: for a 100-tree IsolationForest one row costs about 5 ms in
scikit-learn, 1 ms in ONNX Runtime and 0.1 ms in the vectorised NumPy forest
(``forest.py``), while scikit-learn's compiled traversal wins large batches. Rather than
guess, each load times every backend on a few batch sizes, and every later call uses the
fastest for its size. A backend that does not reproduce scikit-learn's scores within the
version's parity tolerance on the calibration rows is not used.

The measuring runs isolated (a forked child in a worker), and only the backends that win
are then built here: an ONNX Runtime session that loses every batch size would otherwise
cost the process its runtime's setup and the calibration's garbage for nothing (~25 MB
for the benchmark's IsolationForest, where the NumPy walk and scikit-learn win).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from threading import Lock

import numpy as np

from pynomaly_workers.adapters.heap import release_free_memory
from pynomaly_workers.adapters.scorers import sklearn
from pynomaly_workers.adapters.scorers.explain import Explainer, explainer_for
from pynomaly_workers.adapters.scorers.forest import ForestScorer
from pynomaly_workers.adapters.scorers.onnx import OnnxScorer
from pynomaly_workers.domain.explain import Attribution
from pynomaly_workers.domain.models import ModelRef, ModelVersion
from pynomaly_workers.domain.ports import Isolation, ModelStore, Scorer
from pynomaly_workers.domain.profile import TrainingProfile
from pynomaly_workers.domain.records import Matrix
from pynomaly_workers.domain.scoring import parity_error

log = logging.getLogger(__name__)

CALIBRATION_SIZES = (1, 64, 2048)
_REPEATS = 3


@dataclass(frozen=True, slots=True)
class Calibration:
    """Measured seconds per call of each backend at each batch size."""

    sizes: tuple[int, ...]
    seconds: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def best(self, n_rows: int, *, among: set[str] | None = None) -> str:
        """The backend with the lowest estimated time for ``n_rows`` rows (of ``among``,
        when given; scikit-learn, the reference, when none of them was measured)."""
        index = int(np.searchsorted(self.sizes, n_rows))
        index = min(index, len(self.sizes) - 1)
        candidates = [b for b in self.seconds if among is None or b in among]
        if not candidates:
            return "sklearn"
        return min(candidates, key=lambda backend: self.seconds[backend][index])

    def winners(self) -> set[str]:
        """The backends that are fastest at some calibrated batch size."""
        return {self.best(size) for size in self.sizes}

    def pruned(self) -> Calibration:
        """The same measurements without the backends that never win."""
        keep = self.winners()
        return Calibration(self.sizes, {k: v for k, v in self.seconds.items() if k in keep})

    def row_cost_us(self) -> float:
        """Microseconds per row of the best backend on the largest calibrated batch."""
        largest = self.sizes[-1]
        return min(times[-1] for times in self.seconds.values()) / largest * 1e6


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model version with its scorers ready in this process."""

    version: ModelVersion
    scorers: dict[str, Scorer]
    calibration: Calibration | None = None
    explainer: Explainer | None = None

    @property
    def sklearn(self) -> Scorer:
        """The reference scorer."""
        return self.scorers["sklearn"]

    @property
    def onnx(self) -> Scorer | None:
        """The ONNX Runtime scorer, if the version has a parity-checked export."""
        return self.scorers.get("onnx")

    def scorer_for(self, n_rows: int) -> Scorer:
        """The fastest backend for a batch of ``n_rows``, as measured at load."""
        if self.calibration is None:
            return self.sklearn
        # A backend measured on small batches only is not extrapolated past its limit.
        eligible = {
            name
            for name, scorer in self.scorers.items()
            if n_rows <= getattr(scorer, "max_rows", n_rows)
        }
        return self.scorers[self.calibration.best(n_rows, among=eligible)]

    def row_cost_us(self) -> float | None:
        """Scoring cost per row in microseconds, if measured."""
        return self.calibration.row_cost_us() if self.calibration else None

    def explain(self, matrix: Matrix) -> Attribution | None:
        """Per-feature contributions to each row's anomaly (see ``explain.py``)."""
        return self.explainer(matrix) if self.explainer is not None else None


def calibrate(
    scorers: dict[str, Scorer], *, n_features: int, profile: TrainingProfile | None = None
) -> Calibration:
    """Time each scorer on synthetic rows at :data:`CALIBRATION_SIZES` (best of a few).

    The rows are drawn around the training data (its per-feature median and robust
    scale) when the version has a profile: a tree walk's cost depends on how deep rows
    go, and rows far from the data (plain N(0, 1) for a model of another scale) are all
    isolated in a few splits, which made a walk look several times cheaper than it is."""
    rows = np.random.default_rng(0).normal(size=(CALIBRATION_SIZES[-1], n_features))
    if profile is not None and profile.n_features == n_features:
        rows = np.asarray(profile.median) + rows * np.asarray(profile.scale)
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
        self,
        store: ModelStore,
        *,
        capacity: int,
        onnx_threads: int = 1,
        calibrate: bool = True,
        ref_ttl_seconds: float = 0.0,
        isolation: Isolation | None = None,
    ) -> None:
        """``isolation`` is where backends are measured (here, when None)."""
        self.store = store
        self.capacity = capacity
        self.onnx_threads = onnx_threads
        self.calibrate = calibrate
        self.ref_ttl_seconds = ref_ttl_seconds
        self.isolation = isolation
        self._cache: OrderedDict[int, LoadedModel] = OrderedDict()
        self._refs: dict[ModelRef, tuple[float, ModelVersion]] = {}
        self._lock = Lock()

    def resolve(self, ref: ModelRef) -> ModelVersion:
        """The version ``ref`` names. ``name@version`` never changes, so it is remembered;
        a bare name (the active version) or an alias (``name@champion``) is remembered
        for ``ref_ttl_seconds``, which saves a query per micro-batch at the price of
        seeing a new version or a moved alias that much later.
        """
        now = time.monotonic()
        with self._lock:
            cached = self._refs.get(ref)
        if cached is not None and (ref.is_exact or now - cached[0] < self.ref_ttl_seconds):
            return cached[1]
        version = self.store.get_model(ref)
        with self._lock:
            if len(self._refs) > 1_000:
                self._refs.clear()
            self._refs[ref] = (now, version)
        return version

    def load(self, version: ModelVersion) -> LoadedModel:
        """The loaded model for ``version`` (an immutable version never needs reloading)."""
        with self._lock:
            cached = self._cache.get(version.id)
            if cached is not None:
                self._cache.move_to_end(version.id)
                return cached
        loaded = self._build(version)
        # Unpickling (and calibrating, when not isolated) left MBs free in the heap; give
        # them back now rather than keep them for the process's life.
        release_free_memory()
        with self._lock:
            self._cache[version.id] = loaded
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return loaded

    def _build(self, version: ModelVersion) -> LoadedModel:
        estimator = sklearn.load(self.store.load_artifact(version.artifact_sha256))
        onnx = (
            self.store.load_artifact(version.onnx_sha256)
            if version.onnx_sha256 is not None
            else None
        )
        forest = ForestScorer(estimator) if ForestScorer.supports(estimator) else None
        calibration = None
        wanted = {"sklearn", "numpy", "onnx"}
        if self.calibrate:
            calibration = self._isolated(
                lambda: measure_backends(
                    estimator, onnx=onnx, version=version, threads=self.onnx_threads
                )
            )
            # A backend that wins no batch size is never used, so it is not built (for
            # ONNX: no session, whose setup and arena would hold memory for nothing).
            # scikit-learn stays, as the reference (its estimator also explains).
            wanted = {*calibration.seconds, "sklearn"}
            log.info(
                "model %s: backend by batch size %s; %.2f us/row",
                version.label,
                {size: calibration.best(size) for size in calibration.sizes},
                calibration.row_cost_us(),
            )
        scorers = _scorers(
            estimator,
            onnx=onnx if "onnx" in wanted else None,
            forest=forest if "numpy" in wanted else None,
            threads=self.onnx_threads,
        )
        if calibration is None:
            scorers = _faithful(scorers, version)
        explainer = explainer_for(estimator, profile=version.profile, forest=forest)
        return LoadedModel(
            version=version, scorers=scorers, calibration=calibration, explainer=explainer
        )

    def _isolated(self, work: Callable[[], Calibration]) -> Calibration:
        return work() if self.isolation is None else self.isolation.run(work)


def _scorers(
    estimator: object, *, onnx: bytes | None, forest: ForestScorer | None, threads: int
) -> dict[str, Scorer]:
    scorers: dict[str, Scorer] = {"sklearn": sklearn.SklearnScorer(estimator)}
    if onnx is not None:
        scorers["onnx"] = OnnxScorer(onnx, threads=threads)
    if forest is not None:
        scorers["numpy"] = forest
    return scorers


def measure_backends(
    estimator: object, *, onnx: bytes | None, version: ModelVersion, threads: int
) -> Calibration:
    """Build every backend, drop the unfaithful ones, time the rest: the calibration of
    the backends that win some batch size."""
    forest = ForestScorer(estimator) if ForestScorer.supports(estimator) else None
    scorers = _faithful(_scorers(estimator, onnx=onnx, forest=forest, threads=threads), version)
    return calibrate(scorers, n_features=version.n_features, profile=version.profile).pruned()


def _faithful(scorers: dict[str, Scorer], version: ModelVersion) -> dict[str, Scorer]:
    """The scorers that reproduce scikit-learn within the version's parity tolerance."""
    rows = np.random.default_rng(1).normal(size=(256, version.n_features)) * 2.0
    reference = scorers["sklearn"].score(rows)
    tolerance = version.parity_tolerance or 1e-4
    kept: dict[str, Scorer] = {"sklearn": scorers["sklearn"]}
    for name, scorer in scorers.items():
        if name == "sklearn":
            continue
        error = parity_error(reference, scorer.score(rows))
        if error <= tolerance:
            kept[name] = scorer
        else:
            log.warning(
                "model %s: %s backend off (parity error %.3g > %.3g)",
                version.label,
                name,
                error,
                tolerance,
            )
    return kept
