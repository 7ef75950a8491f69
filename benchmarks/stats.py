"""Small numeric helpers shared by the measurements."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p95 and p99 of ``values`` (None when there are none)."""
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    ordered = sorted(values)
    return {f"p{q}": round(_quantile(ordered, q / 100), 3) for q in (50, 95, 99)}


def _quantile(ordered: Sequence[float], level: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    position = level * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    """The median of a non-empty sequence."""
    return float(statistics.median(values))


def rate(count: float, seconds: float) -> float | None:
    """``count / seconds`` rounded, or None when no time elapsed."""
    return round(count / seconds, 1) if seconds > 0 else None


def ratio(numerator: float | None, denominator: float | None, digits: int = 3) -> float | None:
    """``numerator / denominator`` rounded, or None when either is missing or zero."""
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, digits)


def median_at(runs: Sequence[Mapping[str, Any]], *path: str) -> float:
    """The median, over the runs, of the figure at ``path`` in each (``"result_latency_ms",
    "p50"``), rounded to two decimals."""
    values = []
    for figures in runs:
        node: Any = figures
        for key in path:
            node = node[key]
        values.append(float(node))
    return round(statistics.median(values), 2)
