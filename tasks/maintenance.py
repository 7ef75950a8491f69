"""``pynomaly.maintenance.*``: database and cache upkeep driven by beat (or the CLI).

Each task is one call to :func:`run_maintenance`, which takes the task's advisory lock
(a second copy records ``skipped`` and returns at once) and records the run.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Task

from pynomaly_workers.bootstrap import get_adapters
from pynomaly_workers.contract import maintenance_task
from pynomaly_workers.services.maintenance import run_maintenance
from pynomaly_workers.settings import Settings
from pynomaly_workers.tasks.base import retry_options

# Maintenance on a 10M-row table outlives the detection time limits (VACUUM, REINDEX).
_LONG_LIMITS = {"soft_time_limit": 3 * 3600, "time_limit": 3 * 3600 + 300}


def _run(name: str, **options: Any) -> dict[str, Any]:
    return run_maintenance(get_adapters(), name, **options).to_dict()


def register(app: Celery, settings: Settings) -> None:
    """Define the maintenance tasks on ``app``."""
    options: dict[str, Any] = retry_options(settings)
    long: dict[str, Any] = {**options, **_LONG_LIMITS}

    @app.task(name=maintenance_task("refresh_views"), **long)
    def refresh_views(self: Task) -> dict[str, Any]:  # type: ignore[type-arg]
        """Refresh the materialized views concurrently."""
        return _run("refresh_views")

    @app.task(name=maintenance_task("vacuum_analyze"), **long)
    def vacuum_analyze(self: Task) -> dict[str, Any]:  # type: ignore[type-arg]
        """VACUUM (ANALYZE) the tables."""
        return _run("vacuum_analyze")

    @app.task(name=maintenance_task("reindex"), **long)
    def reindex(self: Task) -> dict[str, Any]:  # type: ignore[type-arg]
        """REINDEX CONCURRENTLY the indexes whose measured bloat passes the threshold."""
        return _run("reindex")

    @app.task(name=maintenance_task("retention"), **long)
    def retention(self: Task, days: int | None = None) -> dict[str, Any]:  # type: ignore[type-arg]
        """Delete what was detected more than ``days`` ago (default: the setting)."""
        return _run("retention", days=days)

    @app.task(name=maintenance_task("drift"), **options)
    def drift(self: Task, model: str | None = None) -> dict[str, Any]:  # type: ignore[type-arg]
        """Compare each model version's recent data with its training profile."""
        return _run("drift", model=model)

    @app.task(name=maintenance_task("slow_queries"), **options)
    def slow_queries(self: Task) -> dict[str, Any]:  # type: ignore[type-arg]
        """Store the slowest statements from pg_stat_statements in ``metrics``."""
        return _run("slow_queries")

    @app.task(name=maintenance_task("cache_stats"), **options)
    def cache_stats(self: Task) -> dict[str, Any]:  # type: ignore[type-arg]
        """Store the prediction cache's memory, evictions and hit ratio in ``metrics``."""
        return _run("cache_stats")

    @app.task(name=maintenance_task("sweep_stale_jobs"), **options)
    def sweep_stale_jobs(self: Task) -> dict[str, Any]:  # type: ignore[type-arg]
        """Requeue (or fail) detection jobs left running past the hard time limit."""
        return _run("sweep_stale_jobs")
