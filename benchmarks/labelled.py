"""Labelled data shipped with installed packages, in the ODDS style, and PyOD's figures
on it (issue #22, "on real data").

**WBC-style** (as ODDS builds "WBC" from the Wisconsin breast-cancer data): scikit-learn's
breast-cancer set (``sklearn.datasets.load_breast_cancer``: 569 records, 30 features),
its 357 benign records as normal and a seeded sample of 21 of its 212 malignant ones as
anomalies (378 records, 5.6% anomalies, ODDS's proportion). A seeded, stratified split
gives a training half (labels unused: unsupervised, anomalies included, as ODDS
evaluates) and a test half that is evaluated.

The PyOD side fits PyOD's implementation of each algorithm with the parameters the
workers use where the two libraries share them, and scores the same test half; average
precision is scikit-learn's on both sides. ``pynomaly.train`` fits on 90% of the rows it
is given (it holds out a seeded 10% for the ONNX parity check,
``services.training.split_holdout``), so PyOD is fitted on those same rows, and once more
on the whole training half.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float64]
Labels = npt.NDArray[np.bool_]

WBC_ANOMALIES = 21
"""Malignant records kept as anomalies: ODDS's WBC has 21 of 378."""
LABEL_COLUMN = "label"
ALGORITHMS = ("iforest", "lof", "ocsvm", "elliptic", "hbos", "ecod")


@dataclass(frozen=True, slots=True)
class Labelled:
    """Records, their labels (True = anomaly) and feature names."""

    matrix: Matrix
    labels: Labels
    features: list[str]

    @property
    def contamination(self) -> float:
        """The share of anomalies."""
        return float(self.labels.mean())

    def take(self, rows: npt.NDArray[np.int64]) -> Labelled:
        return Labelled(self.matrix[rows], self.labels[rows], self.features)


def wbc(*, seed: int = 0, anomalies: int = WBC_ANOMALIES) -> Labelled:
    """The WBC-style set: every benign record, ``anomalies`` malignant ones drawn with
    ``seed``, in a seeded order."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    benign = np.flatnonzero(data.target == 1)  # scikit-learn: 0 malignant, 1 benign
    malignant = np.flatnonzero(data.target == 0)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(malignant, size=anomalies, replace=False))
    rows = rng.permutation(np.concatenate([benign, chosen]))
    matrix = np.asarray(data.data[rows], dtype=np.float64)
    labels = np.asarray(data.target[rows] == 0)
    features = [f"f{i}" for i in range(matrix.shape[1])]
    return Labelled(matrix, labels, features)


def split(
    data: Labelled, *, seed: int = 0, test_fraction: float = 0.5
) -> tuple[Labelled, Labelled]:
    """A seeded split that keeps the share of anomalies in both halves."""
    rng = np.random.default_rng(seed + 1)
    test: list[int] = []
    for label in (False, True):
        rows = rng.permutation(np.flatnonzero(data.labels == label))
        test.extend(rows[: round(len(rows) * test_fraction)].tolist())
    in_test = np.zeros(len(data.labels), dtype=bool)
    in_test[test] = True
    return data.take(np.flatnonzero(~in_test)), data.take(np.flatnonzero(in_test))


def write_labelled_csv(path: Path, data: Labelled, *, label: bool = True) -> Path:
    """``record_id``, the features (as Python writes floats: exactly) and, with
    ``label``, the label column (0/1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["record_id", *data.features, *([LABEL_COLUMN] if label else [])])
        for index, (row, flag) in enumerate(zip(data.matrix.tolist(), data.labels, strict=True)):
            writer.writerow([f"r{index}", *map(repr, row), *([int(flag)] if label else [])])
    return path


def pyod_detector(algorithm: str, *, contamination: float) -> Any:
    """PyOD's implementation of ``algorithm``, parameterised as the workers' one is
    (``adapters/scorers/sklearn.build_estimator``)."""
    from pyod.models.ecod import ECOD
    from pyod.models.hbos import HBOS
    from pyod.models.iforest import IForest
    from pyod.models.lof import LOF
    from pyod.models.mcd import MCD
    from pyod.models.ocsvm import OCSVM

    builders: dict[str, Any] = {
        "iforest": lambda: IForest(contamination=contamination, random_state=0),
        "lof": lambda: LOF(contamination=contamination, n_neighbors=20),
        "ocsvm": lambda: OCSVM(contamination=contamination, nu=contamination, gamma="scale"),
        # scikit-learn's EllipticEnvelope is a minimum covariance determinant fit: MCD
        "elliptic": lambda: MCD(contamination=contamination, random_state=0),
        "hbos": lambda: HBOS(contamination=contamination, n_bins=10, alpha=0.1, tol=0.5),
        "ecod": lambda: ECOD(contamination=contamination),
    }
    return builders[algorithm]()


def pyod_average_precision(
    algorithm: str, fit_rows: Matrix, test: Labelled, *, contamination: float
) -> float:
    """PyOD's ``algorithm`` fitted on ``fit_rows``, its average precision on ``test``."""
    from sklearn.metrics import average_precision_score

    detector = pyod_detector(algorithm, contamination=contamination)
    detector.fit(fit_rows)
    scores = detector.decision_function(test.matrix)
    return float(average_precision_score(test.labels, scores))
