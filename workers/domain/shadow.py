"""Shadow scoring: a sample of a champion's records also scored by the challenger, and
how the two compare. Pure: numpy only."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt


def shadow_sample(
    job_id: str, offset: int, n_rows: int, *, fraction: float
) -> npt.NDArray[np.int64]:
    """Row positions (within a chunk at ``offset``) chosen for shadow scoring: the same
    rows every time the job runs, so a redelivered job shadows the same records."""
    if fraction <= 0 or n_rows == 0:
        return np.empty(0, dtype=np.int64)
    seed = int.from_bytes(hashlib.blake2b(f"{job_id}:{offset}".encode(), digest_size=8).digest())
    chosen = np.random.default_rng(seed).random(n_rows) < fraction
    return np.flatnonzero(chosen).astype(np.int64)


@dataclass(slots=True)
class ShadowTally:
    """How a champion and a challenger scored the same records: flag counts and the
    sums a score correlation needs."""

    n_records: int = 0
    champion_flags: int = 0
    challenger_flags: int = 0
    both_flags: int = 0
    sums: list[float] = field(default_factory=lambda: [0.0] * 5)  # x, y, xx, yy, xy

    @classmethod
    def of(
        cls,
        champion: npt.NDArray[np.float64],
        challenger: npt.NDArray[np.float64],
        *,
        champion_flags: npt.NDArray[np.bool_],
        challenger_flags: npt.NDArray[np.bool_],
    ) -> ShadowTally:
        x, y = champion, challenger
        return cls(
            n_records=len(x),
            champion_flags=int(champion_flags.sum()),
            challenger_flags=int(challenger_flags.sum()),
            both_flags=int((champion_flags & challenger_flags).sum()),
            sums=[
                float(v) for v in (x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum())
            ],
        )

    def add(self, other: ShadowTally) -> None:
        self.n_records += other.n_records
        self.champion_flags += other.champion_flags
        self.challenger_flags += other.challenger_flags
        self.both_flags += other.both_flags
        self.sums = [a + b for a, b in zip(self.sums, other.sums, strict=True)]

    def comparison(self) -> dict[str, Any]:
        """Agreement of the flags and correlation of the scores."""
        n = self.n_records
        either = self.champion_flags + self.challenger_flags - self.both_flags
        disagree = either - self.both_flags
        return {
            "n_records": n,
            "champion_flags": self.champion_flags,
            "challenger_flags": self.challenger_flags,
            "both_flags": self.both_flags,
            "agreement": (n - disagree) / n if n else None,
            "jaccard": self.both_flags / either if either else None,
            "score_correlation": self._correlation(),
        }

    def _correlation(self) -> float | None:
        n = self.n_records
        if n < 2:
            return None
        sx, sy, sxx, syy, sxy = self.sums
        vx, vy = sxx - sx * sx / n, syy - sy * sy / n
        if vx <= 0 or vy <= 0:
            return None
        return float((sxy - sx * sy / n) / np.sqrt(vx * vy))
