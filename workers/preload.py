"""Heavy libraries imported once in the worker's main process, before the pool forks.

Each prefork pool process would otherwise import scikit-learn, SciPy and pyarrow on its
first job, and keep its own private copy of every module object they create (about 65 MB
of heap per process, besides the shared library pages). Imported in
the parent, those pages are shared copy-on-write by every pool process, including those
Celery starts later to replace one. ``gc.freeze()`` keeps the collector from writing to
(and so un-sharing) the parent's objects in the children.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import sys
import time
from typing import Any

log = logging.getLogger(__name__)

PRELOADED_MODULES = (
    "numpy",
    "scipy.special",
    "scipy.stats",
    "sklearn.ensemble",
    "sklearn.neighbors",
    "sklearn.svm",
    "sklearn.covariance",
    "pyarrow.csv",
    "pyarrow.parquet",
)
"""What every pool process imports to score and read sources. Not here: the exporter
(skl2onnx), needed only while training, which runs in a short-lived child; and ONNX
Runtime (~22 MB PSS: 14 MB of library pages, 8 MB of heap), imported only by a process
that keeps a session, i.e. for a version whose calibration picks ONNX for batches on
which it saves at least ``loader.BUILD_MIN_SAVING_S`` over the memory-mapped forest (the
measuring itself runs in a short-lived child). One-record jobs to the benchmark's
IsolationForest never build one; its files' chunks do."""


ALLOCATOR_OPTIONS = {"MIMALLOC_ARENA_EAGER_COMMIT": "0"}
"""pyarrow's allocator (mimalloc) otherwise commits a 1 GiB arena on a process's first
Arrow allocation and keeps 15-20 MB of it resident for good, whatever
``release_unused`` asks: each pool process that ever read a CSV. Without the eager
arena, freed pages go back to the system (measured on a 1M-row job: reads as fast,
about 15 MB less per pool process once idle). Set before pyarrow loads, which reads
them once; an operator's own setting wins."""


def preload_for_fork(**_: Any) -> None:
    """``worker_init``: import :data:`PRELOADED_MODULES`, then freeze what exists so the
    pool processes share it."""
    started = time.perf_counter()
    if "pyarrow" in sys.modules:
        log.debug("pyarrow was loaded before the preload: allocator options not applied")
    for key, value in ALLOCATOR_OPTIONS.items():
        os.environ.setdefault(key, value)
    for name in PRELOADED_MODULES:
        importlib.import_module(name)
    gc.collect()
    gc.freeze()
    log.info(
        "preloaded %d libraries for the pool in %.1fs",
        len(PRELOADED_MODULES),
        time.perf_counter() - started,
    )
