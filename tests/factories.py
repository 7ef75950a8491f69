"""Factories shared by integration and e2e tests."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine

from pynomaly_workers.adapters.scorers.loader import LoadedModel, ModelLoader
from pynomaly_workers.adapters.stores.sql import SqlStore
from pynomaly_workers.domain.jobs import parse_training_request
from pynomaly_workers.domain.models import ModelVersion
from pynomaly_workers.domain.ports import Scorer
from pynomaly_workers.domain.records import RecordLimits
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.services.training import train_model

LIMITS = RecordLimits(max_records=1_000_000, max_features=1_024)


def training_rows(n: int = 400, width: int = 4, seed: int = 0) -> list[list[float]]:
    """Standard-normal training rows."""
    return np.random.default_rng(seed).normal(size=(n, width)).round(6).tolist()  # type: ignore[no-any-return]


def rows_with_outliers(
    n: int = 200, width: int = 4, outliers: tuple[int, ...] = (3, 50, 120), seed: int = 1
) -> list[list[float]]:
    """Normal rows with a few far-away rows at the given indices."""
    matrix = np.random.default_rng(seed).normal(size=(n, width))
    for index in outliers:
        matrix[index] = 8.0
    return matrix.round(6).tolist()  # type: ignore[no-any-return]


def train(
    adapters: Adapters, *, model: str = "m", algorithm: str = "iforest", **kwargs: Any
) -> ModelVersion:
    """Train through the service layer (no queue); small forests keep the tests quick."""
    message: dict[str, Any] = {"model": model, "algorithm": algorithm, "records": training_rows()}
    if algorithm == "iforest":
        message["params"] = {"n_estimators": 25}
    message.update(kwargs)
    return train_model(adapters, parse_training_request(message, limits=LIMITS))


def write_csv(path: Path, rows: list[list[float]], *, ids: bool = False) -> Path:
    """A CSV with a header (f0, f1, ...), optionally with record_id and timestamp columns."""
    width = len(rows[0])
    header = [f"f{i}" for i in range(width)]
    if ids:
        header = ["record_id", "timestamp", *header]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for index, row in enumerate(rows):
            meta = [f"r{index}", f"2026-01-01T00:{index // 60 % 60:02d}:{index % 60:02d}Z"]
            writer.writerow([*meta, *row] if ids else row)
    return path


def load_all_backends(adapters: Adapters, version: ModelVersion) -> LoadedModel:
    """Every scoring backend of ``version`` (the concrete loader, so tests can compare
    scikit-learn with ONNX; services see only the ``LoadedModel`` port)."""
    return ModelLoader(adapters.store, capacity=1, calibrate=False).load(version)


def reference_scorer(adapters: Adapters, version: ModelVersion) -> Scorer:
    """scikit-learn's scorer for ``version``: the reference every backend must match."""
    return load_all_backends(adapters, version).sklearn


def engine_of(adapters: Adapters) -> Engine:
    """The SQL engine behind the adapters' store."""
    store = adapters.store
    assert isinstance(store, SqlStore)
    return store.engine
