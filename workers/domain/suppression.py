"""Suppression rules: anomalies of a model (optionally of one entity, optionally with one
feature in [low, high]) detected before a rule's ``until`` are stored but marked with the
rule that suppressed them, never notified and left out of incidents. Pure: which rule
matches which anomaly, whether a rule may be added, and when it ends.

A rule names a feature as the model knows it: by its training column name, or by its
position (``"0"``, ``"1"``, ...) for a model trained on unnamed records. Records are
scored by position, so a rule's feature is the record's value at that position.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np

from pynomaly_workers.domain.errors import InvalidInput
from pynomaly_workers.domain.records import Matrix

RuleState = Literal["live", "expired", "removed"]
REASON_MAX = 2_000
ACTOR_MAX = 128
ENTITY_MAX = 256
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}


class SuppressionError(InvalidInput):
    """A rule that cannot be added or removed as asked; the message says what to do."""

    code = "invalid_suppression"


@dataclass(frozen=True, slots=True)
class SuppressionRule:
    """One rule, as stored: what it matches, until when, who added it and why, whether
    (and by whom) it was removed, and how many anomalies it suppressed."""

    id: int
    model_name: str
    until: datetime
    reason: str
    actor: str
    created_at: datetime
    entity: str | None = None
    feature: str | None = None
    low: float | None = None
    high: float | None = None
    removed_at: datetime | None = None
    removed_by: str | None = None
    suppressed_count: int = 0

    def live(self, at: datetime) -> bool:
        """True while it suppresses: not removed, and ``at`` is before ``until``."""
        return self.removed_at is None and at < self.until

    def state(self, at: datetime) -> RuleState:
        """``live``, ``expired`` (its ``until`` passed) or ``removed``."""
        if self.removed_at is not None:
            return "removed"
        return "live" if at < self.until else "expired"

    def to_dict(self, *, at: datetime) -> dict[str, Any]:
        """JSON-ready (datetimes left as they are), with its state at ``at``."""
        return {
            "id": self.id,
            "model": self.model_name,
            "entity": self.entity,
            "feature": self.feature,
            "low": self.low,
            "high": self.high,
            "until": self.until,
            "reason": self.reason,
            "actor": self.actor,
            "created_at": self.created_at,
            "removed_at": self.removed_at,
            "removed_by": self.removed_by,
            "suppressed_count": self.suppressed_count,
            "state": self.state(at),
        }


@dataclass(frozen=True, slots=True)
class RuleDraft:
    """A rule to add, checked by :func:`check_draft`; the store assigns its id."""

    model_name: str
    until: datetime
    reason: str
    actor: str
    entity: str | None = None
    feature: str | None = None
    low: float | None = None
    high: float | None = None


def model_features(names: Sequence[str] | None, n_features: int) -> tuple[str, ...]:
    """The features of a model version as rules name them: its training column names,
    or positions ``"0"``..``"n-1"`` when it was trained on unnamed records."""
    if names is not None and len(names) == n_features:
        return tuple(names)
    return tuple(str(i) for i in range(n_features))


def parse_until(text: str, *, now: datetime) -> datetime:
    """``until`` from ISO-8601 (a time without offset is UTC) or a duration from ``now``
    (``90m``, ``2h``, ``3d``, ``1w``); a time not after ``now`` is refused."""
    match = _DURATION.match(text)
    if match:
        amount, unit = float(match.group(1)), match.group(2)
        if amount <= 0:
            raise SuppressionError(f"--until {text!r} is no time at all: give e.g. 2h or 3d")
        until = now + timedelta(seconds=amount * _UNIT_SECONDS[unit])
    else:
        try:
            parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise SuppressionError(
                f"--until {text!r} is neither an ISO-8601 time (2026-12-24T18:00:00Z) nor a "
                "duration (30m, 2h, 3d, 1w)"
            ) from None
        until = parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    if until <= now:
        raise SuppressionError(
            f"--until {until.isoformat()} is not in the future (now is {now.isoformat()}): "
            "give a later time or a duration such as 2h"
        )
    return until.astimezone(UTC)


def check_draft(draft: RuleDraft, *, now: datetime, features: Sequence[str]) -> RuleDraft:
    """Return ``draft`` if it can be stored for a model with ``features``, else raise
    :class:`SuppressionError` saying what to change."""
    if draft.until <= now:
        raise SuppressionError(
            f"until {draft.until.isoformat()} is not in the future: give a later time"
        )
    if not draft.reason.strip():
        raise SuppressionError("--reason is empty: say why these anomalies are expected")
    if len(draft.reason) > REASON_MAX:
        raise SuppressionError(f"--reason is longer than {REASON_MAX} characters: shorten it")
    if not draft.actor.strip() or len(draft.actor) > ACTOR_MAX:
        raise SuppressionError(f"who adds the rule must be 1-{ACTOR_MAX} characters")
    if draft.entity is not None and not 0 < len(draft.entity) <= ENTITY_MAX:
        raise SuppressionError(f"--entity must be 1-{ENTITY_MAX} characters")
    _check_range(draft, features)
    return draft


def _check_range(draft: RuleDraft, features: Sequence[str]) -> None:
    given = [draft.feature is not None, draft.low is not None, draft.high is not None]
    if not any(given):
        return
    if not all(given):
        raise SuppressionError("--feature and --between LO HI go together: give both or neither")
    assert draft.low is not None
    assert draft.high is not None
    if not (math.isfinite(draft.low) and math.isfinite(draft.high)):
        raise SuppressionError("--between takes two finite numbers")
    if draft.low > draft.high:
        raise SuppressionError(
            f"--between {draft.low:g} {draft.high:g}: LO is above HI; give the lower bound first"
        )
    if draft.feature not in features:
        shown = ", ".join(features[:20]) + (", ..." if len(features) > 20 else "")
        raise SuppressionError(
            f"model {draft.model_name!r} has no feature {draft.feature!r}; its features "
            f"are: {shown}"
        )


ROWWISE_MAX = 64
"""Up to this many anomalies are matched row by row in Python: a few numpy operations per
rule cost more than the whole loop on a one-record job's single anomaly."""


def matching_rules(
    rules: Sequence[SuppressionRule],
    *,
    model_name: str,
    at: datetime,
    rows: Matrix,
    entities: Sequence[str | None] | None,
    features: Sequence[str],
) -> list[int | None] | None:
    """For each of ``rows`` (anomalies of a version of ``model_name``, detected ``at``,
    with their ``entities``), the id of the first rule, oldest first, that is live at
    ``at`` and matches it; None when no rule matches any row (no list is built).

    A rule naming a feature the version does not have (another version's column) matches
    nothing of this version; a rule naming an entity matches no record without one."""
    live = sorted((r for r in rules if r.model_name == model_name and r.live(at)), key=_id)
    if not live or len(rows) == 0:
        return None
    positions = {name: j for j, name in enumerate(features)}
    usable = [r for r in live if r.feature is None or r.feature in positions]
    if len(rows) <= ROWWISE_MAX:
        found = _rowwise(usable, rows=rows, entities=entities, positions=positions)
    else:
        found = _vectorised(usable, rows=rows, entities=entities, positions=positions)
    return found if any(v is not None for v in found) else None


def _id(rule: SuppressionRule) -> int:
    return rule.id


def _rowwise(
    rules: Sequence[SuppressionRule],
    *,
    rows: Matrix,
    entities: Sequence[str | None] | None,
    positions: dict[str, int],
) -> list[int | None]:
    """:func:`matching_rules` for a few rows, one row at a time."""
    found: list[int | None] = []
    for index, values in enumerate(rows.tolist()):
        entity = entities[index] if entities is not None else None
        found.append(next((r.id for r in rules if _covers(r, values, entity, positions)), None))
    return found


def _covers(
    rule: SuppressionRule, values: list[float], entity: str | None, positions: dict[str, int]
) -> bool:
    if rule.entity is not None and rule.entity != entity:
        return False
    if rule.feature is None or rule.low is None or rule.high is None:
        return True
    return rule.low <= values[positions[rule.feature]] <= rule.high


def _vectorised(
    rules: Sequence[SuppressionRule],
    *,
    rows: Matrix,
    entities: Sequence[str | None] | None,
    positions: dict[str, int],
) -> list[int | None]:
    """:func:`matching_rules` for many rows, one rule at a time over all of them."""
    found = np.zeros(len(rows), dtype=np.int64)  # rule ids start at 1; 0 = none yet
    names = np.asarray(entities, dtype=object) if entities is not None else None
    for rule in rules:
        hit = np.ones(len(rows), dtype=bool)
        if rule.entity is not None:
            if names is None:
                continue
            hit &= names == rule.entity
        if rule.feature is not None and rule.low is not None and rule.high is not None:
            column = rows[:, positions[rule.feature]]
            hit &= (column >= rule.low) & (column <= rule.high)
        found[hit & (found == 0)] = rule.id
    return [int(v) if v else None for v in found.tolist()]
