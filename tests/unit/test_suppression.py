"""Suppression rules, pure: which rule matches which anomaly, what may be added, when a
rule ends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from pynomaly_workers.domain.suppression import (
    ROWWISE_MAX,
    RuleDraft,
    SuppressionError,
    SuppressionRule,
    check_draft,
    matching_rules,
    model_features,
    parse_until,
)

NOW = datetime(2026, 12, 3, 8, tzinfo=UTC)
FEATURES = ("temp", "rpm", "load")


def rule(rule_id: int, **fields: Any) -> SuppressionRule:
    values: dict[str, Any] = {
        "id": rule_id,
        "model_name": "pumps",
        "until": NOW + timedelta(hours=1),
        "reason": "maintenance",
        "actor": "ana",
        "created_at": NOW - timedelta(hours=1),
    }
    return SuppressionRule(**(values | fields))


ROWS = np.array(
    [
        [10.0, 1.0, 0.0],  # pump-1, temp 10
        [50.0, 2.0, 0.0],  # pump-2, temp 50
        [90.0, 3.0, 0.0],  # pump-1, temp 90
        [50.0, 4.0, 0.0],  # no entity, temp 50
    ]
)
ENTITIES = ["pump-1", "pump-2", "pump-1", None]


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        ([], None),
        ([rule(1)], [1, 1, 1, 1]),
        ([rule(1, entity="pump-1")], [1, None, 1, None]),
        ([rule(1, entity="pump-9")], None),
        ([rule(1, feature="temp", low=40.0, high=60.0)], [None, 1, None, 1]),
        # bounds are inclusive
        ([rule(1, feature="temp", low=50.0, high=50.0)], [None, 1, None, 1]),
        ([rule(1, entity="pump-1", feature="temp", low=0.0, high=20.0)], [1, None, None, None]),
        # the oldest matching rule (lowest id) is the one recorded, whatever the order given
        ([rule(7, entity="pump-1"), rule(3, feature="temp", low=80, high=95)], [7, None, 3, None]),
        # an expired, a removed, another model's rule: none suppresses
        ([rule(1, until=NOW)], None),
        ([rule(1, until=NOW - timedelta(seconds=1))], None),
        ([rule(1, removed_at=NOW - timedelta(minutes=1), removed_by="bo")], None),
        ([rule(1, model_name="fans")], None),
        # a feature this version does not have matches nothing of it
        ([rule(1, feature="voltage", low=0.0, high=1e9)], None),
        ([rule(1, until=NOW), rule(2, entity="pump-2")], [None, 2, None, None]),
    ],
)
@pytest.mark.parametrize("copies", [1, ROWWISE_MAX], ids=["row-by-row", "vectorised"])
def test_each_anomaly_is_marked_with_the_first_live_rule_that_matches_it(
    rules: list[SuppressionRule], expected: list[int | None] | None, copies: int
) -> None:
    # the same anomalies once (matched row by row) and many times (matched per rule)
    rows = np.tile(ROWS, (copies, 1))
    assert (len(rows) <= ROWWISE_MAX) == (copies == 1)

    found = matching_rules(
        rules, model_name="pumps", at=NOW, rows=rows, entities=ENTITIES * copies, features=FEATURES
    )

    assert found == (expected * copies if expected is not None else None)


@pytest.mark.parametrize("copies", [1, ROWWISE_MAX], ids=["row-by-row", "vectorised"])
def test_an_entity_rule_matches_nothing_of_a_job_without_entities(copies: int) -> None:
    found = matching_rules(
        [rule(1, entity="pump-1"), rule(2, feature="temp", low=80.0, high=95.0)],
        model_name="pumps",
        at=NOW,
        rows=np.tile(ROWS, (copies, 1)),
        entities=None,
        features=FEATURES,
    )

    assert found == [None, None, 2, None] * copies


def test_no_rows_no_marks() -> None:
    found = matching_rules(
        [rule(1)], model_name="pumps", at=NOW, rows=ROWS[:0], entities=[], features=FEATURES
    )

    assert found is None


def test_a_rule_stops_at_its_until() -> None:
    r = rule(1, until=NOW)

    assert r.live(NOW - timedelta(microseconds=1))
    assert not r.live(NOW)
    assert r.state(NOW) == "expired"
    assert rule(1, removed_at=NOW, removed_by="bo").state(NOW - timedelta(days=1)) == "removed"


@pytest.mark.parametrize(
    ("names", "n", "expected"),
    [
        (("a", "b"), 2, ("a", "b")),
        (None, 3, ("0", "1", "2")),
        (("a",), 2, ("0", "1")),  # names that do not fit the version are not its names
    ],
)
def test_features_are_named_by_column_or_by_position(
    names: tuple[str, ...] | None, n: int, expected: tuple[str, ...]
) -> None:
    assert model_features(names, n) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2h", NOW + timedelta(hours=2)),
        ("3d", NOW + timedelta(days=3)),
        ("90m", NOW + timedelta(minutes=90)),
        ("1.5h", NOW + timedelta(minutes=90)),
        ("1w", NOW + timedelta(days=7)),
        ("45s", NOW + timedelta(seconds=45)),
        ("2026-12-24T18:00:00Z", datetime(2026, 12, 24, 18, tzinfo=UTC)),
        ("2026-12-24T19:00:00+01:00", datetime(2026, 12, 24, 18, tzinfo=UTC)),
        ("2026-12-24T18:00:00", datetime(2026, 12, 24, 18, tzinfo=UTC)),  # no offset: UTC
    ],
)
def test_until_is_a_time_or_a_duration_from_now(text: str, expected: datetime) -> None:
    assert parse_until(text, now=NOW) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("2026-12-01T00:00:00Z", "not in the future"),
        (NOW.isoformat(), "not in the future"),
        ("0h", "no time at all"),
        ("tomorrow", "neither an ISO-8601 time"),
        ("2x", "neither an ISO-8601 time"),
    ],
)
def test_until_in_the_past_or_unreadable_is_refused(text: str, says: str) -> None:
    with pytest.raises(SuppressionError, match=says):
        parse_until(text, now=NOW)


def draft(**fields: Any) -> RuleDraft:
    values: dict[str, Any] = {
        "model_name": "pumps",
        "until": NOW + timedelta(hours=2),
        "reason": "maintenance",
        "actor": "ana",
    }
    return RuleDraft(**(values | fields))


def test_a_valid_draft_passes() -> None:
    d = draft(entity="pump-1", feature="temp", low=1.0, high=2.0)

    assert check_draft(d, now=NOW, features=FEATURES) is d


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"feature": "temp", "low": 5.0, "high": 1.0}, "LO is above HI"),
        ({"feature": "voltage", "low": 1.0, "high": 2.0}, "no feature 'voltage'.*temp, rpm, load"),
        ({"feature": "temp"}, "go together"),
        ({"low": 1.0, "high": 2.0}, "go together"),
        ({"feature": "temp", "low": float("nan"), "high": 2.0}, "finite"),
        ({"until": NOW}, "not in the future"),
        ({"reason": "  "}, "--reason is empty"),
        ({"entity": ""}, "--entity"),
    ],
)
def test_a_bad_draft_is_refused_with_what_to_do(fields: dict[str, Any], says: str) -> None:
    with pytest.raises(SuppressionError, match=says):
        check_draft(draft(**fields), now=NOW, features=FEATURES)
