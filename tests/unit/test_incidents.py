"""The incident fold: anomalies of one key within the gap form one incident."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pynomaly_workers.domain.incidents import (
    AnomalyPoint,
    Incident,
    check_label,
    clusters,
    crossed,
    feature_weights,
    fold,
    severity_band,
)

T0 = datetime(2026, 12, 1, tzinfo=UTC)
GAP = timedelta(hours=1)


def point(minutes: float, severity: float = 0.5, **top: float) -> AnomalyPoint:
    explanation = {"top": [{"feature": k, "contribution": v} for k, v in top.items()]}
    return AnomalyPoint(1, "dev-1", T0 + timedelta(minutes=minutes), severity, explanation)


def stored(
    id_: int,
    first: float,
    last: float,
    *,
    status: str = "open",
    count: int = 1,
    severity: float = 0.5,
) -> Incident:
    return Incident(
        id=id_,
        model_id=1,
        entity="dev-1",
        status=status,  # type: ignore[arg-type]
        first_ts=T0 + timedelta(minutes=first),
        last_ts=T0 + timedelta(minutes=last),
        anomaly_count=count,
        max_severity=severity,
    )


def test_points_within_the_gap_open_one_incident_and_apart_two() -> None:
    # Given three anomalies 30 min apart, then one 3 hours later
    points = [point(0), point(30), point(60, 0.9), point(240)]
    # When folded with no incident yet
    changes = fold([], points, gap=GAP).changes
    # Then two incidents open: the first with three anomalies and their maximum severity
    assert [c.opened for c in changes] == [True, True]
    first, second = (c.incident for c in changes)
    assert (first.anomaly_count, first.max_severity) == (3, 0.9)
    assert (first.first_ts, first.last_ts) == (T0, T0 + timedelta(minutes=60))
    assert second.anomaly_count == 1


def test_a_point_within_the_gap_of_a_live_incident_grows_it() -> None:
    existing = stored(7, 0, 10, count=4, severity=0.4)
    changes = fold([existing], [point(50, 0.85)], gap=GAP).changes
    assert len(changes) == 1
    change = changes[0]
    assert change.incident.id == 7
    assert not change.opened
    assert change.incident.anomaly_count == 5
    assert change.incident.last_ts == T0 + timedelta(minutes=50)
    assert change.added == 1
    # 0.4 (low) -> 0.85 (high) is a change of band
    assert change.escalated


def test_a_point_past_the_gap_of_a_resolved_incident_opens_a_new_one() -> None:
    resolved = stored(7, 0, 10, status="resolved")
    changes = fold([resolved], [point(30)], gap=GAP).changes
    assert len(changes) == 1
    assert changes[0].opened


def test_a_late_point_inside_a_resolved_incident_counts_without_reopening_it() -> None:
    resolved = stored(7, 0, 60, status="resolved", count=3)
    changes = fold([resolved], [point(30)], gap=GAP).changes
    assert len(changes) == 1
    assert changes[0].incident.status == "resolved"
    assert changes[0].incident.anomaly_count == 4


def test_points_that_bridge_two_live_incidents_merge_them_into_the_earlier() -> None:
    early, late = stored(1, 0, 0, count=2), stored(2, 150, 150, count=3)
    changes = fold([early, late], [point(50), point(100)], gap=GAP).changes
    by_id = {c.incident.id: c for c in changes}
    assert by_id[1].incident.anomaly_count == 2 + 3 + 2
    assert by_id[1].incident.last_ts == T0 + timedelta(minutes=150)
    assert by_id[2].incident.status == "resolved"
    assert by_id[2].merged_into == 1


def test_feature_weights_sum_contributions_and_rank_the_top_features() -> None:
    weights = feature_weights([point(0, x=2.0, y=1.0), point(1, y=3.0)])
    assert weights == {"x": 2.0, "y": 4.0}
    incident = fold([], [point(0, x=2.0, y=1.0), point(1, y=3.0)], gap=GAP).changes[0].incident
    assert incident.top_features() == [("y", 4.0), ("x", 2.0)]


def test_clusters_split_where_neighbours_are_further_apart_than_the_gap() -> None:
    points = [point(0), point(61), point(200)]
    assert [len(c) for c in clusters(points, GAP)] == [1, 1, 1]
    assert [len(c) for c in clusters(points, timedelta(minutes=61))] == [2, 1]


@pytest.mark.parametrize(
    ("severity", "band"),
    [
        (0.0, "low"),
        (0.49, "low"),
        (0.5, "medium"),
        (0.8, "high"),
        (0.95, "critical"),
        (1.0, "critical"),
    ],
)
def test_severity_bands(severity: float, band: str) -> None:
    assert severity_band(severity) == band


def test_crossed_is_true_once_when_the_maximum_reaches_the_threshold() -> None:
    assert crossed(None, 0.7, 0.5)
    assert crossed(0.4, 0.7, 0.5)
    assert not crossed(0.6, 0.7, 0.5)
    assert not crossed(0.2, 0.4, 0.5)


def test_an_unknown_label_is_refused_with_the_labels_there_are() -> None:
    assert check_label("expected") == "expected"
    with pytest.raises(ValueError, match="anomaly, not_anomaly, expected"):
        check_label("fine")
