"""``pynomaly.maintenance.*``: database and cache upkeep driven by beat (or the CLI).

Each task is one call to :func:`run_maintenance`, which takes the task's advisory lock
(a second copy records ``skipped`` and returns at once) and records the run.
"""

from __future__ import annotations

from typing import Any

from celery import Task

from pynomaly_workers.bootstrap import get_services
from pynomaly_workers.celery_app import app
from pynomaly_workers.services.maintenance import TASKS, run_maintenance
from pynomaly_workers.tasks.base import retry_options

MAINTENANCE_TASKS = tuple(TASKS)
# Maintenance on a 10M-row table outlives the detection time limits (VACUUM, REINDEX).
_LONG: dict[str, Any] = {
    **retry_options(),
    "soft_time_limit": 3 * 3600,
    "time_limit": 3 * 3600 + 300,
}


def _run(name: str, **options: Any) -> dict[str, Any]:
    return run_maintenance(get_services(), name, **options).to_dict()


@app.task(name="pynomaly.maintenance.refresh_views", **_LONG)
def refresh_views(self: Task) -> dict[str, Any]:  # type: ignore[type-arg]
    """Refresh the materialized views concurrently."""
    return _run("refresh_views")


@app.task(name="pynomaly.maintenance.vacuum_analyze", **_LONG)
def vacuum_analyze(self: Task) -> dict[str, Any]:  # type: ignore[type-arg]
    """VACUUM (ANALYZE) the tables."""
    return _run("vacuum_analyze")


@app.task(name="pynomaly.maintenance.reindex", **_LONG)
def reindex(self: Task) -> dict[str, Any]:  # type: ignore[type-arg]
    """REINDEX CONCURRENTLY the indexes whose measured bloat passes the threshold."""
    return _run("reindex")


@app.task(name="pynomaly.maintenance.retention", **_LONG)
def retention(self: Task, days: int | None = None) -> dict[str, Any]:  # type: ignore[type-arg]
    """Delete what was detected more than ``days`` ago (default: the setting)."""
    return _run("retention", days=days)


@app.task(name="pynomaly.maintenance.slow_queries", **retry_options())
def slow_queries(self: Task) -> dict[str, Any]:  # type: ignore[type-arg]
    """Store the slowest statements from pg_stat_statements in ``metrics``."""
    return _run("slow_queries")


@app.task(name="pynomaly.maintenance.cache_stats", **retry_options())
def cache_stats(self: Task) -> dict[str, Any]:  # type: ignore[type-arg]
    """Store the prediction cache's memory, evictions and hit ratio in ``metrics``."""
    return _run("cache_stats")


@app.task(name="pynomaly.maintenance.sweep_stale_jobs", **retry_options())
def sweep_stale_jobs(self: Task) -> dict[str, Any]:  # type: ignore[type-arg]
    """Requeue (or fail) detection jobs left running past the hard time limit."""
    return _run("sweep_stale_jobs")
