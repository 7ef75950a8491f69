"""Thresholds set by intent: project a threshold from what the workers counted and from
triage's labels, apply it as a recorded and reversible change, roll it back; and the
alert precision of each version (``models compare``, ``/metrics``).

A change puts a threshold in force for one immutable version (``name@version``); the
version stays as registered. Workers read it with the version, so it reaches them within
``PYNOMALY_MODEL_REF_TTL_SECONDS``; loaded models and cached scores stay valid (the
threshold applies to scores, it does not change them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from pynomaly_workers.domain.errors import InvalidInput
from pynomaly_workers.domain.models import ModelVersion, parse_model_ref
from pynomaly_workers.domain.thresholds import (
    SECONDS_PER_DAY,
    AlertPrecision,
    Intent,
    LabelledScores,
    Projection,
    ScoreHistogram,
    ThresholdChange,
    alerts_threshold,
    contamination_threshold,
    precision_threshold,
    project,
    score_edges,
)
from pynomaly_workers.services.context import Adapters


@dataclass(frozen=True, slots=True)
class ThresholdPlan:
    """A threshold chosen for an intent, and what it would have done."""

    version: ModelVersion
    intent: Intent
    threshold: float
    projection: Projection


def exact_version(adapters: Adapters, model: str) -> ModelVersion:
    """The version ``model`` names, which must be ``name@version``: a threshold belongs
    to one immutable version, never to whatever a name or alias points at next."""
    ref = parse_model_ref(model)
    if ref.is_exact:
        return adapters.store.get_model(ref)
    points_at = adapters.store.get_model(ref)
    raise InvalidInput(
        f"a threshold is set on one exact version: {model!r} is version "
        f"{points_at.version} now, so pass '{ref.name}@{points_at.version}' "
        f"('pynomaly-workers models --name {ref.name}' lists its versions)"
    )


def plan_threshold(adapters: Adapters, model: str, intent: Intent, *, days: float) -> ThresholdPlan:
    """The threshold ``intent`` asks for on ``model`` (``name@version``), projected over
    the last ``days``; nothing is changed."""
    version = exact_version(adapters, model)
    history = adapters.store.threshold_history(version.id)
    hist, observed = _histogram(adapters, version, days=days)
    labelled = LabelledScores.of(adapters.store.labelled_scores(version.id))
    threshold = _threshold_for(version, intent, hist, labelled, days_observed=observed)
    projection = _project(
        version, history, hist, labelled, threshold=threshold, days=days, observed=observed
    )
    return ThresholdPlan(version, intent, threshold, projection)


def apply_threshold(
    adapters: Adapters, plan: ThresholdPlan, *, actor: str, reason: str
) -> ThresholdChange:
    """Put the planned threshold in force and record who, when, why, the intent and the
    projection."""
    return adapters.store.set_threshold(
        plan.version.id,
        plan.threshold,
        intent={**plan.intent.to_dict(), "days": plan.projection.days},
        projection=plan.projection.to_dict(),
        actor=actor,
        reason=reason,
        now=adapters.clock.now(),
    )


def rollback_threshold(
    adapters: Adapters, model: str, *, actor: str, reason: str, days: float
) -> ThresholdChange:
    """Put back the threshold in force before the version's last change (a second
    rollback undoes the first), projected like a new one when scores were counted."""
    version = exact_version(adapters, model)
    history = adapters.store.threshold_history(version.id)
    if not history:
        raise InvalidInput(
            f"{version.label} has never had its threshold changed: it uses its trained "
            f"threshold {version.threshold:.6g}, there is nothing to roll back"
        )
    target = history[0].previous_threshold
    try:
        hist, observed = _histogram(adapters, version, days=days)
    except InvalidInput as exc:
        projection: dict[str, Any] = {"unavailable": str(exc)}
    else:
        labelled = LabelledScores.of(adapters.store.labelled_scores(version.id))
        projection = _project(
            version, history, hist, labelled, threshold=target, days=days, observed=observed
        ).to_dict()
    return adapters.store.rollback_threshold(
        version.id,
        last_change_id=history[0].id,
        projection=projection,
        actor=actor,
        reason=reason,
        now=adapters.clock.now(),
    )


def threshold_history(adapters: Adapters, model: str) -> tuple[ModelVersion, list[ThresholdChange]]:
    """The version and every change of its threshold, newest first."""
    version = exact_version(adapters, model)
    return version, adapters.store.threshold_history(version.id)


def alert_precision(adapters: Adapters, *, name: str | None = None) -> list[AlertPrecision]:
    """Per version (of ``name``): labelled anomalies and the share labelled ``anomaly``,
    and the same for its shadow flags as a challenger."""
    return adapters.store.alert_precision(name=name)


def refresh_precision_gauges(adapters: Adapters, *, name: str | None = None) -> int:
    """Report each version's alert precision to telemetry; how many versions."""
    found = alert_precision(adapters, name=name)
    for item in found:
        adapters.telemetry.alert_precision(item)
    return len(found)


def _histogram(
    adapters: Adapters, version: ModelVersion, *, days: float
) -> tuple[ScoreHistogram, float]:
    """The version's fine score counts over the last ``days``, and the days they cover
    (:func:`_days_counted`)."""
    if version.profile is None:
        raise InvalidInput(
            f"{version.label} was trained before training profiles were kept, so the "
            "workers count no scores for it and nothing can be projected; retrain it"
        )
    now = adapters.clock.now()
    windows = adapters.store.score_windows(version.id, since=now - timedelta(days=days))
    edges = score_edges(version.stats)
    counted = [(start, c.fine) for start, c in windows if c.fine is not None and c.fine.sum()]
    if not counted:
        raise InvalidInput(
            f"the workers counted no scores of {version.label} in the last {days:g} days: "
            "send it traffic (with PYNOMALY_DRIFT_PROFILING on, the default) and wait "
            "PYNOMALY_DRIFT_FLUSH_SECONDS, or look further back with a larger --days"
        )
    if any(len(fine) != len(edges) + 1 for _, fine in counted):
        raise InvalidInput(
            f"the stored score counts of {version.label} do not match its score bins "
            "(counted by another release of the workers); wait for new windows"
        )
    counts = np.sum([fine for _, fine in counted], axis=0)
    return ScoreHistogram(edges, counts), _days_counted(
        [start for start, _ in counted], window=adapters.settings.drift_window_seconds, days=days
    )


def _days_counted(starts: list[datetime], *, window: float, days: float) -> float:
    """The days the counted windows cover, first start to last end, at most ``days``.
    Whole windows, the current one included: a dry run and the change that follows it
    a minute later divide by the same span (now - first start would not), and over a
    week of hourly windows the unfinished hour is a 1/168 part."""
    span = (max(starts) - min(starts)).total_seconds() + window
    return min(span / SECONDS_PER_DAY, days)


def _threshold_for(
    version: ModelVersion,
    intent: Intent,
    hist: ScoreHistogram,
    labelled: LabelledScores,
    *,
    days_observed: float,
) -> float:
    if intent.kind == "alerts_per_day":
        scored = hist.total / days_observed
        if intent.value >= scored:
            raise InvalidInput(
                f"{version.label} scored {scored:.4g} records a day in the counted windows: "
                f"{intent.value:g} alerts a day would flag every one; ask for fewer"
            )
        return alerts_threshold(hist, alerts=intent.value * days_observed)
    if intent.kind == "contamination":
        return contamination_threshold(version.stats, intent.value)
    if not len(labelled):
        raise InvalidInput(
            f"{version.label} has no labelled anomalies, so no precision can be projected: "
            "label some with 'pynomaly-workers anomalies label ID --as anomaly' (or "
            "not_anomaly, expected) or 'pynomaly-workers incidents label', or use "
            "--alerts-per-day"
        )
    try:
        return precision_threshold(labelled, precision=intent.value, edges=hist.edges)
    except InvalidInput as exc:
        raise InvalidInput(
            f"{version.label}: {exc}; ask for a lower --precision, or label more anomalies"
        ) from exc


def _project(
    version: ModelVersion,
    history: list[ThresholdChange],
    hist: ScoreHistogram,
    labelled: LabelledScores,
    *,
    threshold: float,
    days: float,
    observed: float,
) -> Projection:
    trained = version.trained_threshold
    known = [version.threshold, *(c.threshold for c in history)]
    known += [c.previous_threshold for c in history] + ([trained] if trained is not None else [])
    return project(
        hist,
        labelled,
        threshold=threshold,
        current=version.threshold,
        lowest_stored=min(known),
        days=days,
        days_observed=observed,
    )
