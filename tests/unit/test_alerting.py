"""Incidents as Alertmanager alerts (pure), the beat entry and the on-request sync."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pynomaly_workers.contract import ALERTMANAGER_TASK, NOTIFICATIONS_QUEUE
from pynomaly_workers.domain.alerting import (
    RESEND_PERIODS,
    AlertedIncident,
    alerts_for,
    plan_alerts,
    timestamp,
)
from pynomaly_workers.schedules import beat_schedule
from pynomaly_workers.settings import Settings
from pynomaly_workers.tasks.alerting import request_sync

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
OPENED = NOW - timedelta(minutes=20)
INCIDENT = AlertedIncident(
    id=42,
    model_name="sensors",
    model_version=3,
    entity="pump-7",
    status="open",
    first_ts=datetime(2026, 12, 2, 11, 0, tzinfo=UTC),
    last_ts=datetime(2026, 12, 2, 11, 30, tzinfo=UTC),
    anomaly_count=17,
    max_severity=0.83,
    feature_weights={"a": 0.5, "b": 3.0, "c": 1.0, "d": 0.1, "e": 0.2, "f": 0.05},
    opened_at=OPENED,
    resolved_at=None,
    alert_severity=None,
)


def parsed(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_an_open_incident_is_one_alert_ending_four_resends_ahead() -> None:
    (alert,) = alerts_for(INCIDENT, now=NOW, resend_seconds=60)
    assert alert["labels"] == {
        "alertname": "PynomalyIncident",
        "model": "sensors",
        "model_version": "3",
        "entity": "pump-7",
        "severity": "high",
        "incident_id": "42",
    }
    assert parsed(alert["startsAt"]) == OPENED
    assert parsed(alert["endsAt"]) == NOW + timedelta(seconds=RESEND_PERIODS * 60)
    assert alert["endsAt"].endswith("Z")


def test_the_description_names_counts_times_and_the_top_five_features() -> None:
    (alert,) = alerts_for(INCIDENT, now=NOW, resend_seconds=60)
    notes = alert["annotations"]
    assert notes["summary"] == "high incident 42 on model sensors@3 entity pump-7"
    assert notes["description"] == (
        "17 anomalies with record timestamps from 2026-12-02T11:00:00.000Z to "
        "2026-12-02T11:30:00.000Z; max severity 0.830 (high); "
        "top features: b (3), c (1), a (0.5), e (0.2), d (0.1)"
    )
    assert notes["status"] == "open"


def test_without_an_entity_the_label_is_absent() -> None:
    (alert,) = alerts_for(replace(INCIDENT, entity=None), now=NOW, resend_seconds=60)
    assert "entity" not in alert["labels"]
    assert "entity" not in alert["annotations"]["summary"]


def test_an_acknowledged_incident_keeps_firing_with_the_same_labels() -> None:
    (open_alert,) = alerts_for(INCIDENT, now=NOW, resend_seconds=60)
    acked = replace(INCIDENT, status="acknowledged")
    (alert,) = alerts_for(acked, now=NOW, resend_seconds=60)
    assert alert["labels"] == open_alert["labels"]
    assert parsed(alert["endsAt"]) > NOW
    assert alert["annotations"]["status"] == "acknowledged"


def test_a_resolved_incident_ends_the_alert_last_posted_when_it_was_resolved() -> None:
    resolved_at = NOW - timedelta(minutes=2)
    escalated_then_resolved = replace(
        INCIDENT,
        status="resolved",
        resolved_at=resolved_at,
        max_severity=0.99,
        alert_severity="high",
    )
    (alert,) = alerts_for(escalated_then_resolved, now=NOW, resend_seconds=60)
    assert alert["labels"]["severity"] == "high"  # the one Alertmanager holds
    assert parsed(alert["endsAt"]) == resolved_at


def test_a_resolved_incident_without_a_resolution_time_ends_now() -> None:
    resolved = replace(INCIDENT, status="resolved", alert_severity="high")
    (alert,) = alerts_for(resolved, now=NOW, resend_seconds=60)
    assert parsed(alert["endsAt"]) == NOW


def test_an_alert_never_ends_before_it_starts() -> None:
    # an incident opened (on another host's clock) after it was resolved on this one's
    odd = replace(INCIDENT, status="resolved", resolved_at=OPENED - timedelta(seconds=5))
    (alert,) = alerts_for(odd, now=NOW, resend_seconds=60)
    assert parsed(alert["startsAt"]) <= parsed(alert["endsAt"])


def test_an_escalation_starts_the_new_band_and_ends_the_old_one() -> None:
    escalated = replace(INCIDENT, max_severity=0.97, alert_severity="high")
    new, old = alerts_for(escalated, now=NOW, resend_seconds=60)
    assert (new["labels"]["severity"], old["labels"]["severity"]) == ("critical", "high")
    assert parsed(new["endsAt"]) > NOW
    assert parsed(old["endsAt"]) == NOW
    assert {k: v for k, v in new["labels"].items() if k != "severity"} == {
        k: v for k, v in old["labels"].items() if k != "severity"
    }


def test_a_plan_records_the_band_posted_and_the_alerts_ended() -> None:
    live = replace(INCIDENT, id=1, max_severity=0.97, alert_severity="high")
    done = replace(INCIDENT, id=2, status="resolved", resolved_at=NOW, alert_severity="low")
    plan = plan_alerts([live, done], now=NOW, resend_seconds=60)
    assert len(plan.alerts) == 3
    assert plan.sent == {1: "critical"}
    assert plan.ended == [2]


def test_timestamps_are_rfc3339_in_utc() -> None:
    moment = datetime(2026, 12, 2, 13, 0, 1, 234567, tzinfo=UTC)
    assert timestamp(moment) == "2026-12-02T13:00:01.234Z"


# -- beat and the on-request sync --------------------------------------------------------
def test_beat_syncs_every_resend_interval_only_with_an_alertmanager(
    make_settings: Callable[..., Settings],
) -> None:
    assert "alertmanager" not in beat_schedule(make_settings())
    entry = beat_schedule(
        make_settings(alertmanager_url="http://am:9093", alertmanager_resend_seconds=30)
    )["alertmanager"]
    assert entry["task"] == ALERTMANAGER_TASK
    assert entry["schedule"] == 30
    assert entry["options"] == {"queue": NOTIFICATIONS_QUEUE, "expires": 27}


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send_task(self, name: str, **options: Any) -> None:
        self.sent.append((name, options))


@pytest.mark.parametrize("url", ["", "http://am:9093"])
def test_a_sync_is_requested_only_with_an_alertmanager(
    make_settings: Callable[..., Settings], url: str
) -> None:
    app = Recorder()
    asked = request_sync(app, make_settings(alertmanager_url=url))  # type: ignore[arg-type]
    assert asked == bool(url)
    expected = [(ALERTMANAGER_TASK, {"queue": NOTIFICATIONS_QUEUE, "expires": 54.0})]
    assert app.sent == (expected if url else [])
