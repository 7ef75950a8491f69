"""Synthetic sensor readings: correlated normal rows, a known share pushed off-manifold.

Files are generated once per size into ``benchmarks/results/data`` (git-ignored) and
reused by later runs; a file is written under a temporary name and renamed, so an
interrupted run never leaves a truncated CSV behind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float64]

_MIXING_SEED = 7
_FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class Readings:
    """Rows of features and which of them were pushed off-manifold."""

    matrix: Matrix
    injected: npt.NDArray[np.bool_]


def readings(rows: int, *, n_features: int, seed: int, anomaly_fraction: float) -> Readings:
    """``rows`` correlated readings; ``anomaly_fraction`` of them are anomalies."""
    rng = np.random.default_rng(seed)
    matrix = normal_rows(rows, n_features=n_features, seed=seed)
    injected = rng.random(rows) < anomaly_fraction
    count = int(injected.sum())
    push = rng.choice([-1.0, 1.0], size=(count, n_features)) * rng.uniform(
        3.0, 6.0, size=(count, n_features)
    )
    matrix[injected] += push
    return Readings(matrix=matrix, injected=injected)


def normal_rows(rows: int, *, n_features: int, seed: int) -> Matrix:
    """Rows from the normal operating manifold (what a model is trained on)."""
    mixing = np.random.default_rng(_MIXING_SEED).normal(size=(n_features, n_features))
    noise = np.random.default_rng(seed + 1_000).normal(size=(rows, n_features))
    return np.asarray(noise @ (mixing / np.sqrt(n_features)) + 20.0, dtype=np.float64)


def write_csv(path: Path, matrix: Matrix) -> Path:
    """Write rows with a header of feature names, four decimals, atomically."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    path.parent.mkdir(parents=True, exist_ok=True)
    rounded = np.round(matrix, 4)
    table = pa.table({f"f{i}": rounded[:, i] for i in range(rounded.shape[1])})
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    pacsv.write_csv(table, partial)
    partial.replace(path)
    return path


def cached_readings_csv(
    folder: Path, rows: int, *, n_features: int, seed: int, anomaly_fraction: float
) -> Path:
    """A CSV of :func:`readings`, generated on first use and reused afterwards."""
    name = f"readings-{rows}x{n_features}-s{seed}-a{anomaly_fraction}-v{_FORMAT_VERSION}.csv"
    path = folder / name
    if not path.is_file():
        data = readings(rows, n_features=n_features, seed=seed, anomaly_fraction=anomaly_fraction)
        write_csv(path, data.matrix)
    return path


def cached_training_csv(folder: Path, rows: int, *, n_features: int, seed: int) -> Path:
    """A CSV of normal rows for ``pynomaly.train``, generated on first use."""
    path = folder / f"training-{rows}x{n_features}-s{seed}-v{_FORMAT_VERSION}.csv"
    if not path.is_file():
        write_csv(path, normal_rows(rows, n_features=n_features, seed=seed))
    return path


def as_records(matrix: Matrix) -> list[list[float]]:
    """Rows as JSON-ready lists, rounded like the CSV files."""
    rows: Any = np.round(matrix, 4).tolist()
    return [list(map(float, row)) for row in rows]
