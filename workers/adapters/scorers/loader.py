"""Loading model versions into scorers, choosing the backend by measurement, with a
bounded per-process cache.

Backends differ by batch size: for a 100-tree IsolationForest one row costs about 5 ms in
scikit-learn, 1 ms in ONNX Runtime and a few microseconds in the project's own forest walk
(``forest.py``, in C; 0.1 ms where it falls back to NumPy, whose walk loses large batches
to scikit-learn's). Rather than guess, each load times every backend on a few batch
sizes, and every later call uses the fastest for its size. A backend that does not
reproduce scikit-learn's scores within the version's parity tolerance on the
calibration rows is not used.

The measuring runs isolated (a forked child in a worker), and only the backends that win
are then built here: an ONNX Runtime session that loses every batch size would otherwise
cost the process its runtime's setup and the calibration's garbage for nothing (~25 MB
for the benchmark's IsolationForest, where the forest walk wins).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from threading import Lock
from typing import Any

import numpy as np

from pynomaly_workers.adapters.heap import release_free_memory
from pynomaly_workers.adapters.scorers import sklearn
from pynomaly_workers.adapters.scorers.explain import Explainer, explainer_for
from pynomaly_workers.adapters.scorers.forest import ForestScorer, compiled
from pynomaly_workers.adapters.scorers.host_cache import HostModelCache
from pynomaly_workers.adapters.scorers.onnx import OnnxScorer
from pynomaly_workers.domain.errors import InvalidInput
from pynomaly_workers.domain.explain import Attribution
from pynomaly_workers.domain.models import ModelRef, ModelVersion
from pynomaly_workers.domain.ports import (
    Isolation,
    ModelStore,
    RegistryWatch,
    Scorer,
    Telemetry,
)
from pynomaly_workers.domain.profile import TrainingProfile
from pynomaly_workers.domain.records import Matrix
from pynomaly_workers.domain.scoring import Scores, parity_error

log = logging.getLogger(__name__)

CALIBRATION_SIZES = (1, 64, 2048)
BUILD_AFTER_CALLS = 64
"""A backend that must be built (an ONNX session, ~5-8 ms; an unpickled estimator) is
built once a version has wanted it this many times in a process; the forest walk,
about 0.1 ms slower a call, serves until then."""
BUILD_MIN_SAVING_S = 1e-3
"""...and only for batches on which it saves at least this much a call over that free
forest, as calibration measured both. An ONNX Runtime session costs a process about
22 MB the first time (the runtime's library and heap) and 2.4 MB each for a 100-tree
forest, while it saves a one-record job 0.09 ms (0.11 ms on the forest, 0.02 ms in
ONNX Runtime); on a 2,048-row batch it saves 35 ms (42.5 against 7.2). A worker
serving a thousand models with one-record jobs loaded ONNX Runtime in every pool
process for those 0.09 ms."""
_REPEATS = 3


@dataclass(frozen=True, slots=True)
class Calibration:
    """Measured seconds per call of each backend at each batch size."""

    sizes: tuple[int, ...]
    seconds: dict[str, tuple[float, ...]] = field(default_factory=dict)
    fallback: tuple[float, ...] | None = None
    """The free backend's (the memory-mapped forest walk's) seconds at each size, kept
    even where it wins no size: what building another backend would save over it."""

    def best(self, n_rows: int, *, among: set[str] | None = None) -> str:
        """The backend with the lowest estimated time for ``n_rows`` rows (of ``among``,
        when given; scikit-learn, the reference, when none of them was measured)."""
        index = int(np.searchsorted(self.sizes, n_rows))
        index = min(index, len(self.sizes) - 1)
        candidates = [b for b in self.seconds if among is None or b in among]
        if not candidates:
            return "sklearn"
        return min(candidates, key=lambda backend: self.seconds[backend][index])

    def saving(self, backend: str, n_rows: int) -> float | None:
        """Seconds a call of ``n_rows`` rows on ``backend`` saves over the free backend;
        None when either was not measured."""
        if self.fallback is None or backend not in self.seconds:
            return None
        index = min(int(np.searchsorted(self.sizes, n_rows)), len(self.sizes) - 1)
        return self.fallback[index] - self.seconds[backend][index]

    def winners(self) -> set[str]:
        """The backends that are fastest at some calibrated batch size."""
        return {self.best(size) for size in self.sizes}

    def pruned(self) -> Calibration:
        """The same measurements without the backends that never win."""
        keep = self.winners()
        seconds = {k: v for k, v in self.seconds.items() if k in keep}
        return Calibration(self.sizes, seconds, fallback=self.fallback)

    def row_cost_us(self) -> float:
        """Microseconds per row of the best backend on the largest calibrated batch."""
        largest = self.sizes[-1]
        return min(times[-1] for times in self.seconds.values()) / largest * 1e6

    def to_dict(self) -> dict[str, Any]:
        """JSON for the host cache."""
        return {
            "sizes": list(self.sizes),
            "seconds": {k: list(v) for k, v in self.seconds.items()},
            "fallback": list(self.fallback) if self.fallback is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration | None:
        """A calibration from :meth:`to_dict`'s JSON, or None if it is not one."""
        try:
            sizes = tuple(int(n) for n in data["sizes"])
            seconds = {str(k): tuple(float(t) for t in v) for k, v in data["seconds"].items()}
            free = data.get("fallback")
            fallback = tuple(float(t) for t in free) if free is not None else None
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        timings = [*seconds.values(), *([fallback] if fallback is not None else [])]
        if not seconds or any(len(v) != len(sizes) for v in timings):
            return None
        return cls(sizes=sizes, seconds=seconds, fallback=fallback)


@dataclass(slots=True, eq=False)
class LoadedModel:
    """A model version with its scorers ready in this process.

    Mutable, and compared by identity: its lazy backends get built and it counts the
    calls that wanted one of them (:attr:`waiting`) for as long as the process keeps it."""

    version: ModelVersion
    scorers: dict[str, Scorer]
    calibration: Calibration | None = None
    explainer: Explainer | None = None
    fallback: Scorer | None = None
    """A backend that costs nothing to hold (the memory-mapped forest walk), used
    while the measured best one is not built yet and has not been asked for often."""
    waiting: int = 0
    """Calls that wanted a backend not built yet."""

    @property
    def sklearn(self) -> Scorer:
        """The reference scorer."""
        return self.scorers["sklearn"]

    @property
    def nbytes(self) -> int:
        """What this version holds in the process: its arrays (mapped or owned), its
        unpickled artifact (counted by its pickled size), its ONNX model."""
        held = [*self.scorers.values()]
        if self.fallback is not None and all(s is not self.fallback for s in held):
            held.append(self.fallback)
        return sum(int(getattr(scorer, "nbytes", 0)) for scorer in held)

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
            name for name, scorer in self.scorers.items() if n_rows <= _max_rows(scorer, n_rows)
        }
        best = self.calibration.best(n_rows, among=eligible)
        chosen = self.scorers[best]
        if getattr(chosen, "built", True) or self.fallback is None:
            return chosen
        if n_rows > _max_rows(self.fallback, n_rows):
            return chosen
        saving = self.calibration.saving(best, n_rows)
        if saving is not None and saving < BUILD_MIN_SAVING_S:
            return self.fallback  # not worth its memory for batches like this one
        # Building it (an ONNX Runtime session: milliseconds) pays off only for a
        # version this process keeps using; until then the free backend serves.
        self.waiting += 1
        return self.fallback if self.waiting <= BUILD_AFTER_CALLS else chosen

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


class LazyScorer:
    """A backend built on the first call that needs it, not at load: scikit-learn's
    estimator (read and unpickled) for a version whose forest came from the host cache,
    an ONNX Runtime session for a version this process keeps using."""

    def __init__(self, backend: str, build: Callable[[], tuple[Scorer, int]]) -> None:
        self.backend = backend
        self._build = build
        self._scorer: Scorer | None = None
        self.nbytes = 0

    @property
    def built(self) -> bool:
        """Whether the backend was built yet."""
        return self._scorer is not None

    def score(self, matrix: Matrix) -> Scores:
        if self._scorer is None:
            self._scorer, self.nbytes = self._build()
        return self._scorer.score(matrix)


class ModelLoader:
    """Loads model versions once per process and keeps the most recently used ones, up
    to ``capacity_bytes`` (and ``capacity`` versions). An IsolationForest's arrays come
    from the host cache when another process of this host saved them (memory-mapped:
    one copy per host); calibrations are measured once per host and model shape."""

    def __init__(
        self,
        store: ModelStore,
        *,
        capacity: int,
        capacity_bytes: int = 0,
        onnx_threads: int = 1,
        calibrate: bool = True,
        ref_ttl_seconds: float = 0.0,
        isolation: Isolation | None = None,
        host: HostModelCache | None = None,
        telemetry: Telemetry | None = None,
        watch: RegistryWatch | None = None,
        ref_max_age_seconds: float = 300.0,
    ) -> None:
        """``isolation`` is where backends are measured (here, when None); ``host`` the
        per-host cache (none: every load reads and unpickles the artifact);
        ``capacity_bytes`` 0 bounds the cache by ``capacity`` alone; ``watch`` tells
        of registry changes (then a resolved ref is kept until one is heard, at most
        ``ref_max_age_seconds``; without it, or while it cannot tell, for
        ``ref_ttl_seconds``)."""
        self.store = store
        self.capacity = capacity
        self.capacity_bytes = capacity_bytes
        self.onnx_threads = onnx_threads
        self.calibrate = calibrate
        self.ref_ttl_seconds = ref_ttl_seconds
        self.isolation = isolation
        self.host = host
        self.telemetry = telemetry
        self.watch = watch
        self.ref_max_age_seconds = ref_max_age_seconds
        self._cache: OrderedDict[int, LoadedModel] = OrderedDict()
        # Each kept version's bytes as of its last use (a lazy backend built since grows
        # it): eviction adds these up instead of asking every kept version on each load.
        self._sizes: dict[int, int] = {}
        # ref -> (when read, the watch's generation before the read, the version)
        self._refs: dict[ModelRef, tuple[float, int | None, ModelVersion]] = {}
        self._calibrations: dict[str, Calibration] = {}
        self._lock = Lock()

    def resolve(self, ref: ModelRef) -> ModelVersion:
        """The version ``ref`` names, remembered until the registry is heard to change
        (a new version, a moved alias, a changed threshold), which saves a query per
        micro-batch. Where changes cannot be heard (SQLite, or the watch's connection
        is down) it is remembered for ``ref_ttl_seconds`` and a change is seen that
        much later. ``name@version`` always names the same artifact, but its threshold
        may be changed (``models threshold``), so it is read again too; its loaded
        model is kept (:meth:`load`).
        """
        now = time.monotonic()
        generation = self._generation()
        with self._lock:
            cached = self._refs.get(ref)
        if cached is not None and self._fresh(cached, now=now, generation=generation):
            return cached[2]
        version = self.store.get_model(ref)
        self._remember({ref: version}, now=now, generation=generation)
        return version

    def _remember(
        self, versions: dict[ModelRef, ModelVersion], *, now: float, generation: int | None
    ) -> None:
        """Keep what ``versions`` resolved to, read at ``now`` under ``generation``."""
        with self._lock:
            if len(self._refs) > 10_000:
                self._refs.clear()
            for ref, version in versions.items():
                self._refs[ref] = (now, generation, version)

    def _generation(self) -> int | None:
        return self.watch.generation() if self.watch is not None else None

    def _fresh(
        self,
        entry: tuple[float, int | None, ModelVersion],
        *,
        now: float,
        generation: int | None,
    ) -> bool:
        """Whether a remembered resolution still holds. While changes can be heard: only
        if none was heard since it was read (and it is younger than the safety net), so
        a change reaches the next job however recently the name was read. While they
        cannot: if it is younger than the TTL."""
        read_at, read_generation, _ = entry
        if generation is not None:
            return read_generation == generation and now - read_at < self.ref_max_age_seconds
        return now - read_at < self.ref_ttl_seconds

    def resolve_many(
        self, refs: Collection[ModelRef]
    ) -> dict[ModelRef, ModelVersion | InvalidInput]:
        """:meth:`resolve` for a micro-batch's refs: what is remembered and fresh is
        answered from memory, the bare names due for a read are read in one query (a
        batch of one-record jobs over many models cost a query per model), the rest one
        by one."""
        now = time.monotonic()
        generation = self._generation()
        out: dict[ModelRef, ModelVersion | InvalidInput] = {}
        stale: list[ModelRef] = []
        with self._lock:
            for ref in refs:
                cached = self._refs.get(ref)
                if cached is not None and self._fresh(cached, now=now, generation=generation):
                    out[ref] = cached[2]
                else:
                    stale.append(ref)
        bare = [ref for ref in stale if ref.version is None and ref.alias is None]
        found = self.store.get_active_models([ref.name for ref in bare]) if len(bare) > 1 else {}
        fresh: dict[ModelRef, ModelVersion] = {}
        for ref in stale:
            version = found.get(ref.name) if ref in bare else None
            try:
                fresh[ref] = version if version is not None else self.store.get_model(ref)
            except InvalidInput as exc:  # UnknownModel: the store's message says why
                out[ref] = exc
        self._remember(fresh, now=now, generation=generation)
        return {**out, **fresh}

    def load(self, version: ModelVersion) -> LoadedModel:
        """The loaded model for ``version`` (an immutable version never needs reloading:
        a kept one only takes ``version``'s threshold, which may have been changed)."""
        with self._lock:
            cached = self._cache.get(version.id)
            if cached is not None:
                self._cache.move_to_end(version.id)
                cached.version = version
                self._sizes[version.id] = cached.nbytes
        if cached is not None:
            self._report(hit=True)
            return cached
        started = time.perf_counter()
        loaded, unpickled = self._build(version)
        if unpickled:
            # Unpickling (and calibrating, when not isolated) left MBs free in the heap;
            # give them back now rather than keep them for the process's life.
            release_free_memory()
        with self._lock:
            self._cache[version.id] = loaded
            self._sizes[version.id] = loaded.nbytes
            evicted, size = self._evict()
            count = len(self._cache)
        self._report(hit=False, seconds=time.perf_counter() - started, evicted=evicted)
        if self.telemetry is not None:
            self.telemetry.model_cache_size(models=count, nbytes=size)
        return loaded

    def prepare(self, artifact_sha256: str, estimator: object) -> None:
        """Save a freshly fitted forest's arrays to the host cache (training calls it,
        in its forked child): the version's first load on this host maps them."""
        if self.host is not None and ForestScorer.supports(estimator):
            self.host.save_forest(artifact_sha256, ForestScorer(estimator))

    def _evict(self) -> tuple[int, int]:
        """Drop least recently used versions past the bounds (never the newest); how
        many went, and the bytes of those kept."""
        evicted = 0
        size = sum(self._sizes.values())
        while len(self._cache) > 1 and (
            len(self._cache) > self.capacity or (self.capacity_bytes and size > self.capacity_bytes)
        ):
            dropped, _ = self._cache.popitem(last=False)
            size -= self._sizes.pop(dropped, 0)
            evicted += 1
        return evicted, size

    def _report(self, *, hit: bool, seconds: float = 0.0, evicted: int = 0) -> None:
        if self.telemetry is not None:
            self.telemetry.model_cache(hit=hit, load_seconds=seconds, evicted=evicted)

    def _build(self, version: ModelVersion) -> tuple[LoadedModel, bool]:
        """The loaded version, and whether its artifact was unpickled here."""
        forest = self._host_forest(version)
        estimator, size = (None, 0) if forest is not None else self._estimator(version)
        if estimator is not None and ForestScorer.supports(estimator):
            forest = ForestScorer(estimator)
            if self.host is not None:
                self.host.save_forest(version.artifact_sha256, forest)
                # the saved arrays are what this process uses too: one copy per host
                forest = self.host.forest(version.artifact_sha256) or forest
                estimator, size = None, 0
        calibration = self._calibration(version, has_forest=forest is not None)
        wanted = {"sklearn", "forest", "onnx"} if calibration is None else {*calibration.seconds}
        scorers: dict[str, Scorer] = {"sklearn": self._sklearn(version, estimator, size)}
        if version.onnx_sha256 is not None and "onnx" in wanted:
            scorers["onnx"] = self._onnx(version, lazy=calibration is not None)
        if forest is not None and "forest" in wanted:
            scorers["forest"] = forest
        if calibration is None:
            scorers = _faithful(scorers, version)
        else:
            log.debug(
                "model %s: backend by batch size %s; %.2f us/row",
                version.label,
                {size: calibration.best(size) for size in calibration.sizes},
                calibration.row_cost_us(),
            )
        explainer = explainer_for(estimator, profile=version.profile, forest=forest)
        loaded = LoadedModel(
            version=version,
            scorers=scorers,
            calibration=calibration,
            explainer=explainer,
            fallback=forest,
        )
        return loaded, estimator is not None

    def _host_forest(self, version: ModelVersion) -> ForestScorer | None:
        if self.host is None or version.algorithm != "iforest":
            return None
        return self.host.forest(version.artifact_sha256)

    def _estimator(self, version: ModelVersion) -> tuple[object, int]:
        artifact = self.store.load_artifact(version.artifact_sha256)
        return sklearn.load(artifact), len(artifact)

    def _sklearn(self, version: ModelVersion, estimator: object | None, size: int) -> Scorer:
        if estimator is None:

            def build() -> tuple[Scorer, int]:
                unpickled, nbytes = self._estimator(version)
                return sklearn.SklearnScorer(unpickled), nbytes

            return LazyScorer("sklearn", build)
        scorer = sklearn.SklearnScorer(estimator)
        scorer.nbytes = size
        return scorer

    def _onnx(self, version: ModelVersion, *, lazy: bool) -> Scorer:
        sha256 = version.onnx_sha256
        assert sha256 is not None

        def build() -> tuple[Scorer, int]:
            content = self.store.load_artifact(sha256)
            return OnnxScorer(content, threads=self.onnx_threads), len(content)

        if lazy:
            return LazyScorer("onnx", build)
        scorer, nbytes = build()
        return _sized(scorer, nbytes)

    def _calibration(self, version: ModelVersion, *, has_forest: bool) -> Calibration | None:
        """Measured once per host and model shape (see :func:`calibration_key`)."""
        if not self.calibrate:
            return None
        key = calibration_key(version, has_forest=has_forest)
        with self._lock:
            known = self._calibrations.get(key)
        if known is not None:
            return known
        saved = self.host.calibration(key) if self.host is not None else None
        calibration = Calibration.from_dict(saved) if saved else None
        if calibration is None:
            try:
                calibration = self._isolated(
                    lambda: measure_backends(
                        self._estimator(version)[0],
                        onnx=self.store.load_artifact(version.onnx_sha256)
                        if version.onnx_sha256 is not None
                        else None,
                        version=version,
                        threads=self.onnx_threads,
                    )
                )
            except Exception:
                # Calibration only picks the fastest backend: a failed measurement must
                # not fail the job. The version loads with its parity-checked backends,
                # and the next load measures again.
                log.warning(
                    "model %s: could not measure its backends; using the parity-checked "
                    "ones unmeasured",
                    version.label,
                    exc_info=True,
                )
                return None
            log.info(
                "model %s: measured its backends (kept for every version of its shape): "
                "backend by batch size %s; %.2f us/row",
                version.label,
                {size: calibration.best(size) for size in calibration.sizes},
                calibration.row_cost_us(),
            )
            if self.host is not None:
                self.host.save_calibration(key, calibration.to_dict())
        with self._lock:
            self._calibrations[key] = calibration
        return calibration

    def _isolated(self, work: Callable[[], Calibration]) -> Calibration:
        return work() if self.isolation is None else self.isolation.run(work)


def _max_rows(scorer: Scorer, n_rows: int) -> int:
    """The largest batch ``scorer`` takes (any: ``n_rows``)."""
    limit = getattr(scorer, "max_rows", None)
    return n_rows if limit is None else int(limit)


def _sized(scorer: Scorer, nbytes: int) -> Scorer:
    setattr(scorer, "nbytes", nbytes)  # noqa: B010 - every backend class declares it
    return scorer


_SHAPELESS = frozenset({"random_state", "n_jobs", "verbose", "warm_start", "contamination"})
CALIBRATION_FORMAT = 3
"""Part of every calibration key: a host measures again the shapes it calibrated before
the free backend's times were kept (format 1) and before the forest was walked in C
(format 2)."""


def calibration_key(version: ModelVersion, *, has_forest: bool) -> str:
    """What a version's backend costs depend on: its algorithm, features, training rows
    (by power of two), parameters (not its seed) and which backends it has. Versions
    with one key share one calibration per host."""
    shape = {
        "format": CALIBRATION_FORMAT,
        "algorithm": version.algorithm,
        "features": version.n_features,
        "rows": int(version.n_training_rows).bit_length(),
        "params": {k: v for k, v in sorted(version.params.items()) if k not in _SHAPELESS},
        "backends": sorted(
            [
                "sklearn",
                # the C walk and the NumPy one it falls back to cost very differently
                *([f"forest-{'c' if compiled() else 'numpy'}"] if has_forest else []),
                *(["onnx"] if version.onnx_sha256 else []),
            ]
        ),
    }
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode()).hexdigest()
    return f"{version.algorithm}-{digest[:32]}"


def _scorers(
    estimator: object, *, onnx: bytes | None, forest: ForestScorer | None, threads: int
) -> dict[str, Scorer]:
    scorers: dict[str, Scorer] = {"sklearn": sklearn.SklearnScorer(estimator)}
    if onnx is not None:
        scorers["onnx"] = OnnxScorer(onnx, threads=threads)
    if forest is not None:
        scorers["forest"] = forest
    return scorers


def measure_backends(
    estimator: object, *, onnx: bytes | None, version: ModelVersion, threads: int
) -> Calibration:
    """Build every backend, drop the unfaithful ones, time the rest: the calibration of
    the backends that win some batch size."""
    forest = ForestScorer(estimator) if ForestScorer.supports(estimator) else None
    scorers = _faithful(_scorers(estimator, onnx=onnx, forest=forest, threads=threads), version)
    measured = calibrate(scorers, n_features=version.n_features, profile=version.profile)
    free = measured.seconds.get("forest")  # the loader's fallback, when it is faithful
    return dataclasses.replace(measured, fallback=free).pruned()


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
