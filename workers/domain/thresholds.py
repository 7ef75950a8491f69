"""Thresholds set by intent: pure projection math over score histograms and labels.

A model version's threshold may be changed after registration (the version itself stays
as registered; the change is recorded, see ``threshold_changes``). The operator states an
intent and this module turns it into a threshold and projects what it would have done:

* ``alerts_per_day``: the threshold that would have raised about that many alerts a day
  over the look-back period, chosen among the version's fine score-bin edges
  (:func:`score_edges`): at an edge the count above it is exact for the traffic the
  workers counted, so the projection matches a replay of that traffic;
* ``contamination``: the training-score quantile at ``1 - contamination``, the threshold
  the version would have had if trained with that contamination;
* ``precision``: the lowest threshold whose labelled anomalies above it are at least that
  share ``anomaly`` (the newest label of each counts).

Workers count every scored record into per-window bins (``DriftCounts.fine``) on edges
fixed by the version's training score statistics, so windows of one version add up.
The edges are dense in the upper tail, where thresholds live: from the 75th percentile of
the training scores each half percent of them is split into 4 bins, from the 95th into
8 and from the 99th into 32; beyond the largest training score (where outliers fall)
they go in geometric steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from pynomaly_workers.domain.errors import InvalidInput
from pynomaly_workers.domain.models import ModelVersion
from pynomaly_workers.domain.scoring import QUANTILE_LEVELS, ScoreStats

IntentKind = Literal["alerts_per_day", "precision", "contamination"]
INTENTS: Final = ("alerts_per_day", "precision", "contamination")
ThresholdAction = Literal["set", "rollback"]

BODY_STEP: Final = 10
"""Below the tail, one edge every this many training quantiles (5 % of the scores)."""
TAIL_FROM: Final = 150
"""Index in :data:`~pynomaly_workers.domain.scoring.QUANTILE_LEVELS` (the 75th
percentile) from which every quantile interval (half a percent of the training scores)
is split into several bins: see :data:`TAIL_SPLITS`."""
TAIL_SPLITS: Final = ((150, 4), (190, 8), (198, 32))
"""(first quantile index, bins per interval): 4 from the 75th percentile, 8 from the
95th, 32 from the 99th, where the training scores thin out and an interval spans a wide
range of scores that traffic (with its outliers) may fill."""
BEYOND: Final = tuple(2.0 ** (k / 4.0) for k in range(-28, 25))
"""Edges past the largest training score: that score plus these multiples of the score
scale (1/128 to 64 scales, 19 % apart)."""
SECONDS_PER_DAY: Final = 86_400.0


def score_edges(stats: ScoreStats) -> npt.NDArray[np.float64]:
    """The fine score-bin edges of a version, increasing, from its training statistics
    only (quantiles, largest score, scale): never from its threshold, which may change."""
    quantiles = np.asarray(stats.quantiles, dtype=np.float64)
    parts = [quantiles[:TAIL_FROM:BODY_STEP]]
    ends = [start for start, _ in TAIL_SPLITS[1:]] + [len(quantiles) - 1]
    for (start, split), end in zip(TAIL_SPLITS, ends, strict=True):
        lower, upper = quantiles[start:end], quantiles[start + 1 : end + 1]
        steps = np.linspace(0.0, 1.0, split, endpoint=False)
        parts.append((lower[:, None] + (upper - lower)[:, None] * steps[None, :]).ravel())
    parts += [np.asarray([stats.max_score]), stats.max_score + stats.scale * np.asarray(BEYOND)]
    edges = np.unique(np.concatenate(parts))
    finite: npt.NDArray[np.float64] = edges[np.isfinite(edges)]
    return finite


def effective_stats(stats: ScoreStats, threshold: float) -> ScoreStats:
    """The version's statistics with ``threshold`` in force. Severity stays calibrated to
    the training scores and keeps its meaning, "above 0.5 = anomaly", at the new threshold
    (its scale is the trained one); the contamination becomes the share of training
    scores above the new threshold (what the drift check expects to see flagged)."""
    above = 1.0 - float(np.interp(threshold, stats.quantiles, QUANTILE_LEVELS))
    floor = 1.0 / (stats.n + 1)
    return replace(stats, threshold=threshold, contamination=min(max(above, floor), 1.0))


def with_threshold(version: ModelVersion, threshold: float) -> ModelVersion:
    """``version`` with ``threshold`` in force (see :func:`effective_stats`)."""
    if threshold == version.threshold:
        return version
    trained = version.trained_threshold
    return replace(
        version,
        stats=effective_stats(version.stats, threshold),
        trained_threshold=version.stats.threshold if trained is None else trained,
    )


@dataclass(frozen=True, slots=True)
class Intent:
    """What the operator asked for: a kind and its value."""

    kind: IntentKind
    value: float

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value}


def check_intent(kind: str, value: float) -> Intent:
    """Return the intent if its value makes sense for its kind, else raise."""
    if kind == "alerts_per_day" and not (math.isfinite(value) and value >= 0):
        raise InvalidInput(f"--alerts-per-day must be 0 or more, got {value}")
    if kind == "precision" and not 0.0 < value <= 1.0:
        raise InvalidInput(f"--precision is a share of labelled anomalies in (0, 1], got {value}")
    if kind == "contamination" and not 0.0 < value < 0.5:
        raise InvalidInput(
            f"--contamination is the share of training scores above the threshold, in "
            f"(0, 0.5) as at training, got {value}"
        )
    if kind not in INTENTS:
        raise InvalidInput(f"unknown intent {kind!r}: use one of {', '.join(INTENTS)}")
    return Intent(kind, value)  # type: ignore[arg-type]


class ScoreHistogram:
    """Counts of scores on fixed inner edges: bin i holds ``edges[i-1] < s <= edges[i]``,
    the first and last bins open-ended (as ``domain.profile.Histogram``)."""

    __slots__ = ("counts", "edges")

    def __init__(self, edges: npt.NDArray[np.float64], counts: npt.NDArray[np.int64]) -> None:
        if len(counts) != len(edges) + 1:
            raise ValueError(f"{len(counts)} counts for {len(edges)} edges: need edges + 1")
        self.edges = np.asarray(edges, dtype=np.float64)
        self.counts = np.asarray(counts, dtype=np.int64)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def above_edges(self) -> npt.NDArray[np.int64]:
        """How many scores lie above each edge (exact)."""
        return np.cumsum(self.counts[::-1])[::-1][1:]

    def above(self, threshold: float) -> tuple[float, bool]:
        """How many scores lie above ``threshold``, and whether that is exact: it is at
        an edge; inside a bin the bin's share above the threshold is interpolated
        linearly, and in an open-ended bin all of it is counted above (an upper bound)."""
        i = int(np.searchsorted(self.edges, threshold, side="left"))
        beyond = float(self.counts[i + 1 :].sum())
        inside = float(self.counts[i])
        if i < len(self.edges) and self.edges[i] == threshold:
            return beyond, True
        if inside == 0:
            return beyond, True
        if i == 0 or i == len(self.edges):
            return beyond + inside, False
        low, high = self.edges[i - 1], self.edges[i]
        return beyond + inside * float((high - threshold) / (high - low)), False


def alerts_threshold(hist: ScoreHistogram, *, alerts: float) -> float:
    """The edge whose count above it is nearest ``alerts``; among edges with that count
    (a run of empty bins) the middle one, so new scores near either end move it least."""
    above = hist.above_edges()
    gap = np.abs(above - alerts)
    best = np.flatnonzero(gap == gap.min())
    # ties with the same count form one run (counts above fall as edges rise)
    run = best[above[best] == above[best[-1]]]
    return float(hist.edges[run[len(run) // 2]])


def contamination_threshold(stats: ScoreStats, contamination: float) -> float:
    """The training-score quantile at ``1 - contamination`` (as training computes it,
    from the kept quantiles)."""
    return float(np.interp(1.0 - contamination, QUANTILE_LEVELS, stats.quantiles))


@dataclass(frozen=True, slots=True)
class LabelledScores:
    """The scores of a version's labelled anomalies and whether each one's newest label
    is ``anomaly``."""

    scores: npt.NDArray[np.float64]
    positive: npt.NDArray[np.bool_]

    @classmethod
    def of(cls, pairs: Sequence[tuple[float, str]]) -> LabelledScores:
        return cls(
            np.asarray([s for s, _ in pairs], dtype=np.float64),
            np.asarray([label == "anomaly" for _, label in pairs], dtype=bool),
        )

    def __len__(self) -> int:
        return len(self.scores)

    def at(self, threshold: float) -> tuple[int, int]:
        """Labelled anomalies above ``threshold``, and how many of them are ``anomaly``."""
        above = self.scores > threshold
        return int(above.sum()), int((above & self.positive).sum())


def precision_threshold(
    labelled: LabelledScores, *, precision: float, edges: npt.NDArray[np.float64]
) -> float:
    """The threshold that keeps the most labelled anomalies while at least ``precision``
    of those kept are ``anomaly``: the top k by score for the largest such k, the
    threshold placed at the highest score-bin edge below the k-th score that still keeps
    the (k+1)-th out (else at the (k+1)-th score), so the alert projection is exact when
    it can be. Raises :class:`InvalidInput` when no k reaches ``precision``."""
    if not len(labelled):
        raise InvalidInput("no labelled anomalies")
    order = np.argsort(-labelled.scores, kind="stable")
    scores, positive = labelled.scores[order], labelled.positive[order]
    kept = np.arange(1, len(scores) + 1)
    shares = np.cumsum(positive) / kept
    # top-k must be a cut between different scores: equal scores are kept together
    cuts = np.append(scores[1:] < scores[:-1], True)
    reach = np.flatnonzero((shares >= precision - 1e-12) & cuts)
    if not reach.size:
        best = float(shares[cuts].max())
        raise InvalidInput(
            f"no threshold reaches precision {precision:g} on the {len(scores)} labelled "
            f"anomalies (the best is {best:.3f})"
        )
    k = int(reach[-1])
    lowest_kept = scores[k]
    below = edges[edges < lowest_kept]
    if k + 1 < len(scores):
        below = below[below >= scores[k + 1]]
        fallback = float(scores[k + 1])
    else:
        fallback = float(np.nextafter(lowest_kept, -np.inf))
    return float(below[-1]) if below.size else fallback


@dataclass(frozen=True, slots=True)
class Projection:
    """What a threshold would have done over the look-back period: the alerts the
    counted traffic would have raised, and its precision on the labelled anomalies."""

    threshold: float
    current_threshold: float
    days: float
    days_observed: float
    records: int
    alerts: float
    alerts_exact: bool
    current_alerts: float
    labelled: int
    confirmed: int
    notes: tuple[str, ...] = field(default=())

    @property
    def alerts_per_day(self) -> float:
        return self.alerts / self.days_observed if self.days_observed > 0 else 0.0

    @property
    def current_alerts_per_day(self) -> float:
        return self.current_alerts / self.days_observed if self.days_observed > 0 else 0.0

    @property
    def precision(self) -> float | None:
        return self.confirmed / self.labelled if self.labelled else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "current_threshold": self.current_threshold,
            "days": self.days,
            "days_observed": self.days_observed,
            "records": self.records,
            "alerts": self.alerts,
            "alerts_exact": self.alerts_exact,
            "alerts_per_day": self.alerts_per_day,
            "current_alerts": self.current_alerts,
            "current_alerts_per_day": self.current_alerts_per_day,
            "labelled": self.labelled,
            "confirmed": self.confirmed,
            "precision": self.precision,
            "notes": list(self.notes),
        }


def project(
    hist: ScoreHistogram,
    labelled: LabelledScores,
    *,
    threshold: float,
    current: float,
    lowest_stored: float,
    days: float,
    days_observed: float,
) -> Projection:
    """The projection of ``threshold`` against the one in force (``current``).
    ``lowest_stored`` is the lowest threshold the version ever had: records scoring
    below it were never stored, so none of them is labelled."""
    alerts, exact = hist.above(threshold)
    now_alerts, _ = hist.above(current)
    n_labelled, n_confirmed = labelled.at(threshold)
    notes = []
    if threshold < lowest_stored:
        notes.append(
            f"records scoring between {threshold:.6g} and {lowest_stored:.6g} were never "
            "stored, so none was labelled: the precision covers only the labelled "
            f"anomalies above {lowest_stored:.6g}"
        )
    if days_observed < days:
        notes.append(
            f"the workers counted scores for {days_observed:.3g} of the {days:g} days asked "
            "for: alerts per day are over those"
        )
    if not exact:
        notes.append("the threshold falls inside a score bin: its alert count is interpolated")
    return Projection(
        threshold=threshold,
        current_threshold=current,
        days=days,
        days_observed=days_observed,
        records=hist.total,
        alerts=alerts,
        alerts_exact=exact,
        current_alerts=now_alerts,
        labelled=n_labelled,
        confirmed=n_confirmed,
        notes=tuple(notes),
    )


@dataclass(frozen=True, slots=True)
class ThresholdChange:
    """One recorded change of a version's threshold: what it became, what it was, why."""

    id: int
    model: str
    version: int
    threshold: float
    previous_threshold: float
    action: ThresholdAction
    intent: dict[str, Any]
    projection: dict[str, Any]
    actor: str
    reason: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class AlertPrecision:
    """Triage's verdict on one version's alerts: of its stored anomalies, how many are
    labelled and how many of those ``anomaly``; the same for the records it flagged while
    shadowing a champion as challenger (a shadow flag is labelled when the champion
    stored the same record, same job and record index, as an anomaly that was labelled:
    the label is about the record, whichever version flagged it)."""

    model: str
    version: int
    labelled: int
    confirmed: int
    shadow_flags: int
    shadow_labelled: int
    shadow_confirmed: int

    @property
    def precision(self) -> float | None:
        return self.confirmed / self.labelled if self.labelled else None

    @property
    def shadow_precision(self) -> float | None:
        return self.shadow_confirmed / self.shadow_labelled if self.shadow_labelled else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "labelled": self.labelled,
            "confirmed": self.confirmed,
            "precision": self.precision,
            "shadow_flags": self.shadow_flags,
            "shadow_labelled": self.shadow_labelled,
            "shadow_confirmed": self.shadow_confirmed,
            "shadow_precision": self.shadow_precision,
        }
