"""Why a record is anomalous: per-feature contributions, and the top features kept with
each stored anomaly. Pure: the attributions themselves are computed by the scoring
adapters, each faithful to its model; this module shapes them for the contract."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class Attribution:
    """Contributions of each feature (columns) to each record's anomaly (rows).

    ``exact`` says the contributions of a row add up to ``total`` (the quantity the
    method splits, e.g. "squared Mahalanobis distance"); approximate methods rank
    features without such an identity."""

    contributions: npt.NDArray[np.float64]
    method: str
    exact: bool
    total: str


def explanations(
    attribution: Attribution, *, feature_names: Sequence[str] | None, top_k: int
) -> list[dict[str, Any]]:
    """One JSON-ready explanation per row: the ``top_k`` features by contribution,
    largest first (a feature is named by its column, or its index when unnamed)."""
    values = attribution.contributions
    k = min(top_k, values.shape[1])
    order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    out = []
    for row, columns in zip(values.tolist(), order.tolist(), strict=True):
        top = [
            {
                "feature": feature_names[j] if feature_names is not None else j,
                "contribution": float(row[j]),
            }
            for j in columns
        ]
        out.append({"method": attribution.method, "exact": attribution.exact, "top": top})
    return out
