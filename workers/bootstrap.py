"""The one place that wires adapters together from the settings.

Resources are per process: Celery's prefork pool forks the worker, and neither database
connections nor Redis sockets nor ONNX sessions survive a fork, so they are built lazily
on first use and dropped in each child by :func:`reset_adapters`.
"""

from __future__ import annotations

import os
from threading import Lock

from pynomaly_workers.adapters.alertmanager import AlertmanagerClient
from pynomaly_workers.adapters.isolation import ForkedIsolation
from pynomaly_workers.adapters.joblog import LoggingJobLog
from pynomaly_workers.adapters.scorers.host_cache import HostModelCache
from pynomaly_workers.adapters.scorers.loader import ModelLoader
from pynomaly_workers.adapters.scorers.trainer import SklearnTrainer
from pynomaly_workers.adapters.sources import ArrowSourceReader
from pynomaly_workers.adapters.sources.blobs import S3Options
from pynomaly_workers.adapters.stores.engine import SqlProbe, build_engine
from pynomaly_workers.adapters.stores.maintenance import SqlMaintenance
from pynomaly_workers.adapters.stores.reads import SqlReads
from pynomaly_workers.adapters.stores.registry_watch import PgRegistryWatch
from pynomaly_workers.adapters.stores.sql import SqlStore
from pynomaly_workers.adapters.suppressions import CachedSuppressions
from pynomaly_workers.adapters.telemetry import PrometheusTelemetry
from pynomaly_workers.adapters.webhooks import HttpWebhookSender
from pynomaly_workers.domain.ports import PredictionCache
from pynomaly_workers.services.context import Adapters, NullJobLog, SystemClock
from pynomaly_workers.services.drift import DriftProfiler
from pynomaly_workers.settings import Settings, get_settings

_lock = Lock()
_adapters: Adapters | None = None


def bootstrap(settings: Settings) -> Adapters:
    """Wire the adapters for ``settings``: store, model loader, trainer, sources, cache."""
    engine = build_engine(
        settings.resolved_database_url,
        idle_in_transaction_timeout=settings.database_idle_in_transaction_timeout_seconds,
    )
    store = SqlStore(engine)
    cache = build_cache(settings)
    # PostgreSQL tells of registry changes (LISTEN); SQLite cannot: re-read after the TTL.
    listen = settings.registry_listen and engine.dialect.name == "postgresql"
    watch = PgRegistryWatch(engine) if listen else None

    def close() -> None:
        engine.dispose()
        if watch is not None:
            watch.close()
        if cache is not None:
            cache.close()

    telemetry = PrometheusTelemetry()
    # A forked child drops the inherited connections and closes its own when done.
    isolation = ForkedIsolation(
        after_fork=lambda: engine.dispose(close=False), before_exit=engine.dispose
    )

    return Adapters(
        settings=settings,
        store=store,
        models=ModelLoader(
            store,
            capacity=settings.model_cache_size,
            capacity_bytes=round(settings.model_cache_mb * 1_000_000),
            host=HostModelCache(settings.home / "model-cache"),
            telemetry=telemetry,
            onnx_threads=onnx_threads(settings),
            ref_ttl_seconds=settings.model_ref_ttl_seconds,
            isolation=isolation,
            watch=watch,
        ),
        trainer=SklearnTrainer(),
        sources=ArrowSourceReader(
            allowed_roots=settings.resolved_source_roots, s3=s3_options(settings)
        ),
        cache=cache,
        clock=SystemClock(),
        maintenance=SqlMaintenance(engine),
        reads=SqlReads(engine),
        database=SqlProbe(engine),
        drift=build_drift_profiler(settings, store),
        close=close,
        forget_after_fork=lambda: engine.dispose(close=False),
        telemetry=telemetry,
        isolation=isolation,
        job_log=LoggingJobLog() if settings.job_log else NullJobLog(),
        alerting=store,
        alertmanager=(
            AlertmanagerClient(settings.alertmanager_url) if settings.alertmanager_url else None
        ),
        notifications=store,
        webhooks=HttpWebhookSender(timeout=settings.webhook_timeout_seconds),
        suppressions=CachedSuppressions(store, ttl_seconds=settings.suppression_ttl_seconds),
    )


def s3_options(settings: Settings) -> S3Options:
    """Where ``s3://`` sources live, and the credentials to read them."""
    return S3Options(
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=settings.s3_secret_access_key.get_secret_value(),
    )


def build_drift_profiler(settings: Settings, store: SqlStore) -> DriftProfiler | None:
    """Drift counting while scoring, unless ``PYNOMALY_DRIFT_PROFILING`` is off."""
    if not settings.drift_profiling:
        return None
    return DriftProfiler(
        store,
        window_seconds=settings.drift_window_seconds,
        flush_seconds=settings.drift_flush_seconds,
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


def get_adapters() -> Adapters:
    """This process's adapters, built on first use."""
    global _adapters  # noqa: PLW0603 - one set of resources per process, by design
    with _lock:
        if _adapters is None:
            _adapters = bootstrap(get_settings())
        return _adapters


def flush_adapters() -> None:
    """Store what this process counted but has not stored yet (at process exit); does
    nothing if the process never built its adapters."""
    with _lock:
        adapters = _adapters
    if adapters is not None and adapters.drift is not None:
        adapters.drift.flush(now=adapters.clock.now())


def reset_adapters() -> None:
    """Forget this process's adapters (after a fork, or in tests)."""
    global _adapters  # noqa: PLW0603
    with _lock:
        if _adapters is not None:
            _adapters.forget_after_fork()
        _adapters = None
