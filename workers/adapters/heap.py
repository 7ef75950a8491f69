"""Giving freed memory back to the operating system after a large piece of work.

glibc's malloc keeps what Python, NumPy and scikit-learn free inside its heap and
arenas, and pyarrow's allocator keeps its own pages, for reuse; neither shrinks on its
own. After a model load (calibration scores 2,048-row batches on every backend) or a
100,000-row chunk, a pool process would hold 20-60 MB it no longer uses until it exits.
Releasing costs about a millisecond, so it is done after those, never per small job.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import lru_cache
from typing import Any


def release_free_memory() -> None:
    """Return the free pages of pyarrow's pool and of glibc's heap to the system."""
    pyarrow: Any = sys.modules.get("pyarrow")
    if pyarrow is not None:  # never import it just for this
        pyarrow.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or None on another C library (musl, macOS)."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    return getattr(ctypes.CDLL(name), "malloc_trim", None)
