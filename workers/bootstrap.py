"""The one place that wires adapters together from the settings.

Resources are per process: Celery's prefork pool forks the worker, and neither database
connections nor Redis sockets nor ONNX sessions survive a fork, so they are built lazily
on first use and dropped in each child by :func:`reset_services`.
"""

from __future__ import annotations

import os
from threading import Lock

from pynomaly_workers.adapters.scorers.loader import ModelLoader
from pynomaly_workers.adapters.sources import ArrowSourceReader
from pynomaly_workers.adapters.stores.engine import build_engine
from pynomaly_workers.adapters.stores.maintenance import SqlMaintenance
from pynomaly_workers.adapters.stores.reads import SqlReads
from pynomaly_workers.adapters.stores.sql import SqlStore
from pynomaly_workers.domain.ports import PredictionCache
from pynomaly_workers.services.context import Services, SystemClock
from pynomaly_workers.settings import Settings, get_settings

_lock = Lock()
_services: Services | None = None


def bootstrap(settings: Settings) -> Services:
    """Build the services for ``settings``: store, model loader, sources, cache."""
    engine = build_engine(settings.resolved_database_url)
    store = SqlStore(engine)
    return Services(
        settings=settings,
        store=store,
        models=ModelLoader(
            store,
            capacity=settings.model_cache_size,
            onnx_threads=onnx_threads(settings),
            ref_ttl_seconds=settings.model_ref_ttl_seconds,
        ),
        sources=ArrowSourceReader(allowed_roots=settings.source_roots),
        cache=build_cache(settings),
        clock=SystemClock(),
        maintenance=SqlMaintenance(engine),
        reads=SqlReads(engine),
    )


def build_cache(settings: Settings) -> PredictionCache | None:
    """The prediction cache, or None when ``PYNOMALY_CACHE_URL`` is empty."""
    if not settings.cache_url:
        return None
    from pynomaly_workers.adapters.caches.redis import RedisPredictionCache

    return RedisPredictionCache.from_url(settings.cache_url, ttl_seconds=settings.cache_ttl_seconds)


def onnx_threads(settings: Settings) -> int:
    """ONNX Runtime threads per process: the cores divided among the pool's processes."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    processes = settings.worker_concurrency or (cores or 1)
    return max(1, (cores or 1) // processes)


def get_services() -> Services:
    """This process's services, built on first use."""
    global _services  # noqa: PLW0603 - one set of resources per process, by design
    with _lock:
        if _services is None:
            _services = bootstrap(get_settings())
        return _services


def reset_services() -> None:
    """Forget this process's services (after a fork, or in tests)."""
    global _services  # noqa: PLW0603
    with _lock:
        if _services is not None:
            _services.maintenance.engine.dispose(close=False)
        _services = None
