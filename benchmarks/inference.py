"""Raw scoring speed in this process: scikit-learn, ONNX Runtime and the project's forest
walk (C, or NumPy where the C module is not built), large batches and single rows, for
an IsolationForest (100 trees) on 16 features.

It is measured on the version ``pynomaly.train`` registered (loaded from the store as a
worker loads it), while the worker processes sit idle; exporting a second copy to ONNX
here would add seconds to every run for the same model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from benchmarks.config import CONTAMINATION, Sizes
from benchmarks.data import Matrix, normal_rows, readings
from benchmarks.stats import median
from pynomaly_workers.adapters.scorers import onnx, sklearn
from pynomaly_workers.adapters.scorers.forest import ForestScorer, compiled
from pynomaly_workers.domain.models import ModelRef
from pynomaly_workers.domain.ports import ModelStore, Scorer
from pynomaly_workers.domain.scoring import parity_error

BATCH_REPEATS = 3
ONNX_THREADS = 1  # what a worker process gets with two processes on two cores
_WARMUP_CALLS = 10


def best_batch_seconds(scorer: Scorer, matrix: Matrix, *, repeats: int = BATCH_REPEATS) -> float:
    """The fastest of ``repeats`` timed runs over the whole matrix."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        scorer.score(matrix)
        timings.append(time.perf_counter() - started)
    return min(timings)


def single_row_us(scorer: Scorer, rows: Matrix, *, calls: int) -> float:
    """Median microseconds to score one row, over ``calls`` calls (after a warm-up)."""
    for i in range(_WARMUP_CALLS):
        scorer.score(rows[i : i + 1])
    timings = []
    for i in range(calls):
        row = rows[i % len(rows) : i % len(rows) + 1]
        started = time.perf_counter()
        scorer.score(row)
        timings.append(time.perf_counter() - started)
    return round(median(timings) * 1e6, 1)


@dataclass(frozen=True, slots=True)
class Backends:
    """One fitted IsolationForest and its ONNX export."""

    estimator: Any
    onnx_bytes: bytes
    origin: str

    def scorers(self) -> dict[str, Scorer]:
        """The three backends behind the project's scorer interface."""
        return {
            "sklearn": sklearn.SklearnScorer(self.estimator),
            "onnx": onnx.OnnxScorer(self.onnx_bytes, threads=ONNX_THREADS),
            "forest": ForestScorer(self.estimator),
        }


def backends_from_store(store: ModelStore, model: str) -> Backends:
    """The registered version's own artifacts: the estimator ``pynomaly.train`` fitted
    and the ONNX export it parity-checked (``onnx.export``), loaded as a worker does."""
    version = store.get_model(ModelRef(model))
    if version.onnx_sha256 is None:
        raise RuntimeError(f"{version.label} has no ONNX export to compare with")
    return Backends(
        estimator=sklearn.load(store.load_artifact(version.artifact_sha256)),
        onnx_bytes=store.load_artifact(version.onnx_sha256),
        origin=f"{version.label} trained by pynomaly.train",
    )


def backends_in_process(sizes: Sizes) -> Backends:
    """The same kind of model fitted and exported here (when training through the
    workers failed): slower to prepare, as the ONNX export takes seconds."""
    training = normal_rows(sizes.train_rows, n_features=sizes.n_features, seed=11)
    estimator = sklearn.build_estimator("iforest", contamination=CONTAMINATION, params={})
    sklearn.fit(estimator, training)
    content = onnx.export(estimator, n_features=sizes.n_features)
    if content is None:
        raise RuntimeError("skl2onnx could not export the IsolationForest")
    return Backends(
        estimator=estimator, onnx_bytes=content, origin="fitted in the benchmark process"
    )


def measure_inference(sizes: Sizes, backends: Backends) -> dict[str, Any]:
    """Rows per second for each backend on a large batch, and single-row latency."""
    batch = readings(
        sizes.inference_rows,
        n_features=sizes.n_features,
        seed=21,
        anomaly_fraction=sizes.anomaly_fraction,
    ).matrix
    scorers = backends.scorers()
    rows_per_s: dict[str, float] = {}
    for name, scorer in scorers.items():
        if len(batch) > (getattr(scorer, "max_rows", None) or len(batch)):
            continue  # the NumPy walk (no C module) is never handed a batch this large
        seconds = best_batch_seconds(scorer, batch, repeats=sizes.batch_repeats)
        rows_per_s[name] = round(len(batch) / seconds, 1)
    best = max(rows_per_s, key=lambda name: rows_per_s[name])
    return {
        "model": "IsolationForest",
        "n_estimators": backends.estimator.n_estimators,
        "n_features": sizes.n_features,
        "origin": backends.origin,
        "rows": len(batch),
        "sklearn_rows_per_s": rows_per_s["sklearn"],
        "onnx_rows_per_s": rows_per_s["onnx"],
        "forest_rows_per_s": rows_per_s.get("forest"),
        "forest_walk": "c" if compiled() else "numpy",
        "best_rows_per_s": rows_per_s[best],
        "best_backend": best,
        "onnx_threads": ONNX_THREADS,
        "parity_max_error": _parity(scorers, batch[: sizes.parity_rows], "onnx"),
        "forest_parity_max_error": _parity(scorers, batch[: sizes.parity_rows], "forest"),
        "single_row_us": _single_rows(sizes, batch, scorers),
    }


def _parity(scorers: dict[str, Scorer], rows: Matrix, backend: str) -> float:
    return parity_error(scorers["sklearn"].score(rows), scorers[backend].score(rows))


def _single_rows(sizes: Sizes, rows: Matrix, scorers: dict[str, Scorer]) -> dict[str, float]:
    calls = sizes.single_row_calls
    return {name: single_row_us(scorer, rows, calls=calls) for name, scorer in scorers.items()}
