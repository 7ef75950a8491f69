"""``pynomaly.maintenance.*``: database upkeep driven by beat (or the CLI)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Task

from pynomaly_workers.bootstrap import get_services
from pynomaly_workers.celery_app import app
from pynomaly_workers.tasks.base import retry_options


@app.task(name="pynomaly.maintenance.refresh_views", **retry_options())
def refresh_views(self: Task) -> dict[str, Any]:  # type: ignore[type-arg]
    """Refresh the materialized views concurrently."""
    return get_services().maintenance.refresh_views()


@app.task(name="pynomaly.maintenance.vacuum_analyze", **retry_options())
def vacuum_analyze(self: Task) -> dict[str, Any]:  # type: ignore[type-arg]
    """VACUUM (ANALYZE) the tables."""
    return get_services().maintenance.vacuum_analyze()


@app.task(name="pynomaly.maintenance.retention", **retry_options())
def retention(self: Task, days: int | None = None) -> dict[str, Any]:  # type: ignore[type-arg]
    """Delete anomalies and finished jobs older than ``days`` (default: the setting)."""
    services = get_services()
    keep = days if days is not None else services.settings.retention_days
    cutoff = services.clock.now() - timedelta(days=keep)
    return services.maintenance.retention(cutoff=cutoff)


MAINTENANCE_TASKS = ("refresh_views", "vacuum_analyze", "retention")
