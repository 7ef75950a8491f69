"""The retry policy for transient faults: exponential backoff with "equal jitter".

Full jitter (a delay anywhere in ``[0, cap]``) spreads retries well but bounds nothing
from below: an unlucky job can spend all of its retries in the first seconds of an
outage and fail although the outage was short. Equal jitter draws the delay from the
upper half, ``[cap / 2, cap]``, which still spreads a herd of retries apart and makes
the outage every job survives a known figure (:func:`outage_tolerance`).
"""

from __future__ import annotations

_MAX_DOUBLINGS = 62  # 2**62 s is forever; keeps the float finite for absurd counts


def backoff_cap(retries: int, *, maximum: float) -> float:
    """The longest wait before retry number ``retries + 1``: 1, 2, 4, ... s, at most
    ``maximum``."""
    return min(maximum, 2.0 ** min(max(retries, 0), _MAX_DOUBLINGS))


def retry_delay(retries: int, *, maximum: float, draw: float) -> float:
    """Seconds to wait before retry number ``retries + 1``, given ``draw`` uniform in
    ``[0, 1)``: in ``[cap / 2, cap]`` with ``cap`` from :func:`backoff_cap`."""
    if not 0.0 <= draw <= 1.0:
        raise ValueError(f"draw must lie in [0, 1], got {draw}")
    cap = backoff_cap(retries, maximum=maximum)
    return cap / 2 + cap / 2 * draw


def outage_tolerance(retry_max: int, *, maximum: float) -> float:
    """Seconds of outage every job outlasts before its ``retry_max`` retries run out:
    the sum of the shortest waits (each attempt's own time comes on top)."""
    return sum(backoff_cap(r, maximum=maximum) / 2 for r in range(retry_max))
