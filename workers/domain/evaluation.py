"""How well a model version's scores separate labelled anomalies from normal records.

Pure numpy. The ranking metrics are scikit-learn's definitions, computed the same way
(``tests/unit/test_evaluation.py`` checks them against ``sklearn.metrics`` to 1e-9):

* **average precision** (PR-AUC): ``sum_n (R_n - R_{n-1}) * P_n`` over the distinct
  scores from the highest down (``average_precision_score``); tied scores form one step;
* **ROC-AUC**: the trapezoidal area under the ROC curve over distinct scores
  (``roc_auc_score``), which credits a tie between an anomaly and a normal record half;
* **precision / recall / F1 at the threshold**: a record is flagged when its score is
  strictly above the threshold, as detection flags it; a ratio with nothing to divide
  by (nothing flagged) is 0, as scikit-learn's ``zero_division`` default reports it;
* **precision at k**, k = the number of labelled anomalies: the share of anomalies among
  the k highest scores. Records tied with the k-th score count in proportion (the
  expected value over every order of the ties), so the figure does not depend on the
  order records were read in;
* **alerts per 1,000 records**: flagged records per 1,000 scored.

Both ranking metrics need both classes: a dataset with no labelled anomaly (or nothing
else) is refused with a message that says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pynomaly_workers.contract import EVALUATE_TASK, EVALUATION_PURPOSES, kwargs_keys
from pynomaly_workers.domain.errors import InvalidLabels, InvalidMessage
from pynomaly_workers.domain.jobs import check_job_id
from pynomaly_workers.domain.models import ModelRef, check_model_name, parse_model_ref

Labels = npt.NDArray[np.bool_]
Floats = npt.NDArray[np.float64]

METRIC_NAMES = (
    "average_precision",
    "roc_auc",
    "precision",
    "recall",
    "f1",
    "precision_at_k",
    "alerts_per_1000",
)
"""The figures of one evaluation, in the order they are printed."""


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What one model version scored on one labelled dataset."""

    n_records: int
    n_positive: int
    threshold: float
    metrics: dict[str, float]

    @property
    def average_precision(self) -> float:
        """The figure a promotion is judged on."""
        return self.metrics["average_precision"]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "n_records": self.n_records,
            "n_positive": self.n_positive,
            "threshold": self.threshold,
            "metrics": dict(self.metrics),
        }


def parse_labels(values: npt.ArrayLike, *, column: str, first_index: int = 0) -> Labels:
    """A label column as booleans (anomaly = True). Accepted: booleans and the numbers
    0 and 1; anything else (a missing value, 2, "yes") is refused, naming the record."""
    array = np.asarray(values)
    if array.dtype == np.bool_:
        return array.copy()
    if array.dtype.kind not in "iuf":
        raise InvalidLabels(
            f"label column {column!r} must hold 0/1 or true/false, not {array.dtype} values"
        )
    bad = np.flatnonzero(~np.isin(array, (0, 1)))
    if bad.size:
        index = int(bad[0])
        raise InvalidLabels(
            f"label column {column!r} must hold 0 (normal) or 1 (anomaly); record "
            f"{first_index + index} has {array[index].item()!r} ({bad.size} such records)"
        )
    return np.asarray(array == 1)


def evaluate(
    labels: npt.ArrayLike, scores: npt.ArrayLike, *, threshold: float, dataset: str = "dataset"
) -> Evaluation:
    """Every figure of :data:`METRIC_NAMES` for ``scores`` (higher = more anomalous)
    against ``labels`` (True = anomaly)."""
    y, s = _checked(labels, scores, dataset=dataset)
    flagged = s > threshold
    hits = int(np.count_nonzero(flagged & y))
    n_flagged = int(np.count_nonzero(flagged))
    n_positive = int(np.count_nonzero(y))
    precision = _ratio(hits, n_flagged)
    recall = _ratio(hits, n_positive)
    metrics = {
        "average_precision": average_precision(y, s),
        "roc_auc": roc_auc(y, s),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2.0 * precision * recall, precision + recall),
        "precision_at_k": precision_at_k(y, s, k=n_positive),
        "alerts_per_1000": 1000.0 * n_flagged / len(s),
    }
    return Evaluation(len(s), n_positive, float(threshold), metrics)


def _checked(
    labels: npt.ArrayLike, scores: npt.ArrayLike, *, dataset: str
) -> tuple[Labels, Floats]:
    y = np.asarray(labels, dtype=np.bool_)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must be equal 1-D arrays")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    positives = int(np.count_nonzero(y))
    if positives == 0 or positives == len(y):
        kind = "anomalies" if positives == 0 else "normal records"
        raise InvalidLabels(
            f"{dataset} has no labelled {kind} ({positives} of {len(y)} records are "
            "labelled anomalies): average precision and ROC-AUC need both classes"
        )
    return y, s


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def _curve(labels: Labels, scores: Floats) -> tuple[Floats, Floats]:
    """True and false positives counted at each distinct score, highest first (the
    points of scikit-learn's ``_binary_clf_curve``)."""
    order = np.argsort(scores, kind="mergesort")[::-1]
    ranked, hits = scores[order], labels[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(ranked)), ranked.size - 1]
    tps = np.cumsum(hits, dtype=np.float64)[last_of_value]
    fps = 1.0 + last_of_value - tps
    return tps, fps


def average_precision(labels: Labels, scores: Floats) -> float:
    """Average precision, as ``sklearn.metrics.average_precision_score``."""
    tps, fps = _curve(*_checked(labels, scores, dataset="the labels"))
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def roc_auc(labels: Labels, scores: Floats) -> float:
    """Area under the ROC curve, as ``sklearn.metrics.roc_auc_score``."""
    tps, fps = _curve(*_checked(labels, scores, dataset="the labels"))
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def precision_at_k(labels: Labels, scores: Floats, *, k: int) -> float:
    """The share of anomalies among the ``k`` highest scores; ties with the k-th score
    count in proportion (see the module)."""
    if not 0 < k <= len(scores):
        raise ValueError(f"k must be in 1..{len(scores)}, got {k}")
    kth = np.partition(scores, len(scores) - k)[len(scores) - k]
    above = scores > kth
    tied = scores == kth
    from_tied = (k - int(np.count_nonzero(above))) / int(np.count_nonzero(tied))
    hits = np.count_nonzero(labels & above) + from_tied * np.count_nonzero(labels & tied)
    return float(hits / k)


@dataclass(frozen=True, slots=True)
class EvaluationRequest:
    """A checked ``pynomaly.evaluate`` message."""

    job_id: str
    model: ModelRef
    dataset: str
    purpose: str = EVALUATION_PURPOSES[0]
    actor: str = "unknown"


def parse_evaluation_request(kwargs: Mapping[str, Any]) -> EvaluationRequest:
    """Check a ``pynomaly.evaluate`` message against the contract; raise
    :class:`~pynomaly_workers.domain.errors.InvalidMessage` with what to change."""
    unknown = sorted(set(kwargs) - kwargs_keys(EVALUATE_TASK))
    if unknown:
        raise InvalidMessage(f"{EVALUATE_TASK} got unknown argument(s) {', '.join(unknown)}")
    purpose = kwargs.get("purpose", EVALUATION_PURPOSES[0])
    if purpose not in EVALUATION_PURPOSES:
        raise InvalidMessage(f"purpose must be one of {', '.join(EVALUATION_PURPOSES)}")
    actor = kwargs.get("actor") or "unknown"
    if not isinstance(actor, str) or len(actor) > 128:
        raise InvalidMessage("actor must be a string of at most 128 characters")
    dataset = kwargs.get("dataset")
    if not isinstance(dataset, str):
        raise InvalidMessage(f"dataset must be a dataset's name, got {dataset!r}")
    return EvaluationRequest(
        job_id=check_job_id(kwargs.get("job_id")),
        model=parse_model_ref(kwargs.get("model")),
        dataset=check_model_name(dataset),
        purpose=str(purpose),
        actor=actor,
    )


def promotion_evidence(
    *,
    dataset: str,
    candidate: Mapping[str, Any],
    champion: Mapping[str, Any] | None,
    forced: bool = False,
) -> dict[str, Any]:
    """What an alias move with ``--require-better`` was judged on: the candidate's and
    the current version's evaluations on ``dataset`` (each with its
    ``average_precision``), whether the candidate passed (its average precision at
    least the current one's; nothing to beat passes), and whether the move was forced
    past a failed check."""
    passed = champion is None or (
        float(candidate["average_precision"]) >= float(champion["average_precision"])
    )
    return {
        "dataset": dataset,
        "rule": "candidate average_precision >= current average_precision",
        "passed": passed,
        "forced": forced and not passed,
        "candidate": dict(candidate),
        "current": dict(champion) if champion is not None else None,
    }
