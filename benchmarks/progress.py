"""Progress lines on stderr (stdout carries only the result)."""

from __future__ import annotations

import sys
import time

_STARTED = time.perf_counter()


def say(message: str) -> None:
    """One progress line, stamped with the seconds since the run started."""
    print(f"[bench {time.perf_counter() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)
