"""Incidents: the anomalies of one model version (and entity) that belong together.

Pure. Anomalies of one key (model version, entity) whose record timestamps lie within
``gap`` of each other form one incident; an incident covers [first_ts, last_ts] and the
incidents of one key never overlap, so an incident's anomalies are those of its key with
a timestamp in its range. :func:`fold` adds newly stored anomalies to the incidents of
their key and says what happened (opened, grew, escalated, merged); the store applies it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Final, Literal

IncidentStatus = Literal["open", "acknowledged", "resolved"]
INCIDENT_STATUSES: Final = ("open", "acknowledged", "resolved")
LIVE_STATUSES: Final = ("open", "acknowledged")
Label = Literal["anomaly", "not_anomaly", "expected"]
LABELS: Final = ("anomaly", "not_anomaly", "expected")
IncidentEventKind = Literal["opened", "escalated", "acknowledged", "resolved", "labelled"]

BANDS: Final = (("critical", 0.95), ("high", 0.8), ("medium", 0.5), ("low", 0.0))
"""Severity bands, highest first: a severity belongs to the first band it reaches."""

TOP_FEATURES: Final = 5


def severity_band(severity: float) -> str:
    """``low`` / ``medium`` / ``high`` / ``critical`` (Alertmanager's ``severity`` label)."""
    for name, floor in BANDS:
        if severity >= floor:
            return name
    return "low"


@dataclass(frozen=True, slots=True)
class AnomalyPoint:
    """What incident upkeep needs of one stored anomaly."""

    model_id: int
    entity: str | None
    timestamp: datetime
    severity: float
    explanation: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Incident:
    """An incident as stored. ``id`` is None until the store inserts it."""

    id: int | None
    model_id: int
    entity: str | None
    status: IncidentStatus
    first_ts: datetime
    last_ts: datetime
    anomaly_count: int
    max_severity: float
    feature_weights: Mapping[str, float] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        return self.status in LIVE_STATUSES

    def top_features(self, k: int = TOP_FEATURES) -> list[tuple[str, float]]:
        """The features that explain it most: largest summed contribution first."""
        ranked = sorted(self.feature_weights.items(), key=lambda item: (-item[1], item[0]))
        return ranked[:k]


@dataclass(frozen=True, slots=True)
class Change:
    """What a fold did to one incident. ``before`` is None for an incident it opened;
    ``merged_into`` is the id of the incident that absorbed this one (bridged by new
    anomalies), which is then resolved."""

    incident: Incident
    before: Incident | None
    added: int
    merged_into: int | None = None

    @property
    def opened(self) -> bool:
        return self.before is None

    @property
    def escalated(self) -> bool:
        """The incident's severity band rose (a change of band, not every new maximum)."""
        return self.before is not None and _band_rank(self.incident.max_severity) < _band_rank(
            self.before.max_severity
        )


@dataclass(frozen=True, slots=True)
class Fold:
    changes: list[Change]


def _band_rank(severity: float) -> int:
    return next(i for i, (_, floor) in enumerate(BANDS) if severity >= floor)


def feature_weights(points: Iterable[AnomalyPoint]) -> dict[str, float]:
    """Summed contribution per feature over the points' stored explanations."""
    weights: dict[str, float] = {}
    for point in points:
        top = (point.explanation or {}).get("top") or ()
        for item in top:
            name = str(item.get("feature"))
            weights[name] = weights.get(name, 0.0) + float(item.get("contribution", 0.0))
    return weights


def _merge_weights(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
    out = dict(a)
    for name, value in b.items():
        out[name] = out.get(name, 0.0) + value
    return out


def _grow(incident: Incident, points: Sequence[AnomalyPoint]) -> Incident:
    return replace(
        incident,
        first_ts=min(incident.first_ts, points[0].timestamp),
        last_ts=max(incident.last_ts, points[-1].timestamp),
        anomaly_count=incident.anomaly_count + len(points),
        max_severity=max(incident.max_severity, *(p.severity for p in points)),
        feature_weights=_merge_weights(incident.feature_weights, feature_weights(points)),
    )


def _absorb(survivor: Incident, other: Incident) -> Incident:
    return replace(
        survivor,
        first_ts=min(survivor.first_ts, other.first_ts),
        last_ts=max(survivor.last_ts, other.last_ts),
        anomaly_count=survivor.anomaly_count + other.anomaly_count,
        max_severity=max(survivor.max_severity, other.max_severity),
        feature_weights=_merge_weights(survivor.feature_weights, other.feature_weights),
    )


def clusters(points: Sequence[AnomalyPoint], gap: timedelta) -> list[list[AnomalyPoint]]:
    """Split time-sorted points wherever two neighbours lie more than ``gap`` apart."""
    out: list[list[AnomalyPoint]] = []
    for point in points:
        if out and point.timestamp - out[-1][-1].timestamp <= gap:
            out[-1].append(point)
        else:
            out.append([point])
    return out


def fold(existing: Sequence[Incident], points: Sequence[AnomalyPoint], *, gap: timedelta) -> Fold:
    """Add the points (all of one key) to that key's incidents.

    ``existing`` are the key's incidents that could be touched: every incident whose
    range lies within ``gap`` of the points' span. Points inside a resolved incident's
    range count towards it without reopening it; others join a live incident within
    ``gap`` (merging live incidents they bridge into the earliest) or open a new one.
    """
    folder = _Folder(existing, gap)
    loose = [p for p in sorted(points, key=lambda p: p.timestamp) if not folder.settle(p)]
    for cluster in clusters(loose, gap):
        folder.place(cluster)
    return folder.result()


class _Folder:
    """The incidents of one key while a fold runs, by position (new ones appended)."""

    def __init__(self, existing: Sequence[Incident], gap: timedelta) -> None:
        self.incidents = sorted(existing, key=lambda i: i.first_ts)
        self.gap = gap
        self.state: dict[int, Incident] = {}
        self.before: dict[int, Incident | None] = {}
        self.added: dict[int, int] = {}
        self.merged_into: dict[int, int] = {}

    def current(self, i: int) -> Incident:
        return self.state.get(i, self.incidents[i])

    def touch(self, i: int, grown: Incident, n: int) -> None:
        self.before.setdefault(i, self.incidents[i])
        self.state[i] = grown
        self.added[i] = self.added.get(i, 0) + n

    def settle(self, point: AnomalyPoint) -> bool:
        """Count a point inside a resolved incident's range towards it."""
        for i, incident in enumerate(self.incidents):
            if not incident.live and incident.first_ts <= point.timestamp <= incident.last_ts:
                self.touch(i, _grow(self.current(i), [point]), 1)
                return True
        return False

    def place(self, cluster: list[AnomalyPoint]) -> None:
        lo, hi = cluster[0].timestamp, cluster[-1].timestamp
        near = [
            i
            for i in range(len(self.incidents))
            if i not in self.merged_into
            and self.current(i).live
            and self.current(i).first_ts - self.gap <= hi
            and self.current(i).last_ts + self.gap >= lo
        ]
        if not near:
            opened = _grow(
                Incident(
                    id=None,
                    model_id=cluster[0].model_id,
                    entity=cluster[0].entity,
                    status="open",
                    first_ts=lo,
                    last_ts=hi,
                    anomaly_count=0,
                    max_severity=0.0,
                ),
                cluster,
            )
            self.incidents.append(opened)
            i = len(self.incidents) - 1
            self.before[i] = None
            self.state[i] = opened
            self.added[i] = len(cluster)
            return
        survivor = min(near, key=lambda i: self.current(i).first_ts)
        grown = _grow(self.current(survivor), cluster)
        for other in near:
            if other != survivor:
                grown = _absorb(grown, self.current(other))
                self.merged_into[other] = survivor
                self.touch(other, replace(self.current(other), status="resolved"), 0)
        self.touch(survivor, grown, len(cluster))

    def result(self) -> Fold:
        return Fold(
            [
                Change(
                    incident=self.state[i],
                    before=self.before[i],
                    added=self.added.get(i, 0),
                    merged_into=(
                        self.incidents[self.merged_into[i]].id if i in self.merged_into else None
                    ),
                )
                for i in sorted(self.state)
            ]
        )


def check_label(value: str) -> Label:
    """A label someone typed, or a message listing the labels there are."""
    if value not in LABELS:
        raise ValueError(f"unknown label {value!r}: use one of {', '.join(LABELS)}")
    return value  # type: ignore[return-value]


def crossed(before: float | None, after: float, threshold: float) -> bool:
    """Whether a maximum severity that was ``before`` (None: nothing yet) reached
    ``threshold`` with ``after``: a subscription's cue to be told."""
    return after >= threshold and (before is None or before < threshold)
