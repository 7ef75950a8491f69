"""Incidents as Alertmanager alerts (its v2 API's JSON). Pure: the caller passes ``now``.

An incident is one alert, identified by its labels: ``alertname`` (always
``PynomalyIncident``), ``model``, ``model_version``, ``entity`` (absent when the
incident has none), ``severity`` (the band of its maximum severity, see
:func:`~pynomaly_workers.domain.incidents.severity_band`) and ``incident_id``.
Teams route, group and silence on these; grouping by ``alertname, model, entity``
collects the incidents of one model and entity.

A live incident (open or acknowledged) is posted with ``endsAt`` four resend intervals
ahead, as Prometheus does: the workers post it again every interval, and if they stop
(the workers are gone), Alertmanager resolves it by itself instead of firing forever.
**An acknowledged incident keeps firing**: acknowledging is triage inside Pynomaly, and
muting belongs to Alertmanager, with a silence on ``incident_id`` (or any label); the
status is an annotation, so acknowledging does not change the alert's identity. A
resolved incident is posted once more with ``endsAt`` = when it was resolved, which
resolves the alert (receivers with ``send_resolved`` are told).

Labels are the alert's identity, and the severity band rises when an incident
escalates; the band last posted is stored with the incident, and the alert of that band
is ended in the same post that starts the new one, so no stale alert lingers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

from pynomaly_workers.domain.incidents import (
    LIVE_STATUSES,
    TOP_FEATURES,
    IncidentStatus,
    severity_band,
)

ALERTNAME: Final = "PynomalyIncident"
RESEND_PERIODS: Final = 4
"""An alert posted now ends this many resend intervals later unless posted again."""

Alert = dict[str, Any]
"""One alert as Alertmanager's ``POST /api/v2/alerts`` takes it."""


class AlertmanagerUnavailable(Exception):
    """Alertmanager did not answer, or answered with a server error: try again later."""


class AlertmanagerRejected(Exception):
    """Alertmanager refused the alerts (a 4xx answer): sending them again will not help."""


class AlertSink(Protocol):
    """Where alerts go: Alertmanager's v2 API."""

    def post(self, alerts: Sequence[Alert]) -> None:
        """Post the alerts in one request; raise :class:`AlertmanagerUnavailable` or
        :class:`AlertmanagerRejected` if they were not accepted."""


@dataclass(frozen=True, slots=True)
class AlertedIncident:
    """What an alert needs of a stored incident. ``alert_severity`` is the band it was
    last posted with (None: never posted)."""

    id: int
    model_name: str
    model_version: int
    entity: str | None
    status: IncidentStatus
    first_ts: datetime
    last_ts: datetime
    anomaly_count: int
    max_severity: float
    feature_weights: Mapping[str, float]
    opened_at: datetime
    resolved_at: datetime | None
    alert_severity: str | None

    @property
    def live(self) -> bool:
        return self.status in LIVE_STATUSES

    @property
    def band(self) -> str:
        return severity_band(self.max_severity)


@dataclass(frozen=True, slots=True)
class AlertPlan:
    """The alerts to post for some incidents, and what to record once they are accepted:
    per incident, the band now firing (``sent``), or that its alert was ended
    (``ended``)."""

    alerts: list[Alert]
    sent: dict[int, str]
    ended: list[int]


def timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC, as Alertmanager reads it."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alert_labels(incident: AlertedIncident, *, band: str) -> dict[str, str]:
    """The alert's identity for ``band``."""
    found = {
        "alertname": ALERTNAME,
        "model": incident.model_name,
        "model_version": str(incident.model_version),
        "severity": band,
        "incident_id": str(incident.id),
    }
    if incident.entity:
        found["entity"] = incident.entity
    return found


def alert_annotations(incident: AlertedIncident) -> dict[str, str]:
    """What a person reads: a one-line summary and the incident's figures."""
    where = f" entity {incident.entity}" if incident.entity else ""
    features = ", ".join(
        f"{name} ({weight:.3g})"
        for name, weight in sorted(
            incident.feature_weights.items(), key=lambda item: (-item[1], item[0])
        )[:TOP_FEATURES]
    )
    description = (
        f"{incident.anomaly_count} anomalies with record timestamps from "
        f"{timestamp(incident.first_ts)} to {timestamp(incident.last_ts)}; "
        f"max severity {incident.max_severity:.3f} ({incident.band})"
    )
    if features:
        description += f"; top features: {features}"
    return {
        "summary": f"{incident.band} incident {incident.id} on model "
        f"{incident.model_name}@{incident.model_version}{where}",
        "description": description,
        "status": incident.status,
        "anomaly_count": str(incident.anomaly_count),
        "max_severity": f"{incident.max_severity:.6f}",
        "first_ts": timestamp(incident.first_ts),
        "last_ts": timestamp(incident.last_ts),
    }


def _alert(incident: AlertedIncident, *, band: str, ends: datetime) -> Alert:
    # Alertmanager refuses an alert that ends before it starts.
    starts = min(incident.opened_at, ends)
    return {
        "labels": alert_labels(incident, band=band),
        "annotations": alert_annotations(incident),
        "startsAt": timestamp(starts),
        "endsAt": timestamp(ends),
    }


def alerts_for(incident: AlertedIncident, *, now: datetime, resend_seconds: float) -> list[Alert]:
    """The alerts that bring Alertmanager up to date with ``incident``: a live one fires
    until four resend intervals from ``now`` (and ends the alert of a band it left); a
    resolved one ends the alert last posted."""
    if not incident.live:
        ends = incident.resolved_at if incident.resolved_at is not None else now
        return [_alert(incident, band=incident.alert_severity or incident.band, ends=ends)]
    firing = _alert(
        incident,
        band=incident.band,
        ends=now + timedelta(seconds=RESEND_PERIODS * resend_seconds),
    )
    if incident.alert_severity is None or incident.alert_severity == incident.band:
        return [firing]
    return [firing, _alert(incident, band=incident.alert_severity, ends=now)]


def plan_alerts(
    incidents: Sequence[AlertedIncident], *, now: datetime, resend_seconds: float
) -> AlertPlan:
    """The alerts for ``incidents`` in one post, and what to record after it."""
    alerts: list[Alert] = []
    sent: dict[int, str] = {}
    ended: list[int] = []
    for incident in incidents:
        alerts.extend(alerts_for(incident, now=now, resend_seconds=resend_seconds))
        if incident.live:
            sent[incident.id] = incident.band
        else:
            ended.append(incident.id)
    return AlertPlan(alerts=alerts, sent=sent, ended=ended)
