"""``pynomaly.maintenance.*``: database upkeep driven by beat (or the CLI)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery, Task

from pynomaly_workers.bootstrap import get_adapters
from pynomaly_workers.contract import maintenance_task
from pynomaly_workers.services.drift import check_drift
from pynomaly_workers.settings import Settings
from pynomaly_workers.tasks.base import retry_options


def register(app: Celery, settings: Settings) -> None:
    """Define the maintenance tasks on ``app``."""
    options = retry_options(settings)

    @app.task(name=maintenance_task("refresh_views"), **options)
    def refresh_views(self: Task) -> dict[str, Any]:  # type: ignore[type-arg]
        """Refresh the materialized views concurrently."""
        return get_adapters().maintenance.refresh_views()

    @app.task(name=maintenance_task("vacuum_analyze"), **options)
    def vacuum_analyze(self: Task) -> dict[str, Any]:  # type: ignore[type-arg]
        """VACUUM (ANALYZE) the tables."""
        return get_adapters().maintenance.vacuum_analyze()

    @app.task(name=maintenance_task("drift"), **options)
    def drift(self: Task, model: str | None = None) -> dict[str, Any]:  # type: ignore[type-arg]
        """Compare each model version's recent data with its training profile."""
        reports = check_drift(get_adapters(), model=model)
        return {"checked": len(reports), "drifted": [r["model"] for r in reports if r["drifted"]]}

    @app.task(name=maintenance_task("retention"), **options)
    def retention(self: Task, days: int | None = None) -> dict[str, Any]:  # type: ignore[type-arg]
        """Delete anomalies and finished jobs older than ``days`` (default: the setting)."""
        adapters = get_adapters()
        keep = days if days is not None else adapters.settings.retention_days
        cutoff = adapters.clock.now() - timedelta(days=keep)
        return adapters.maintenance.retention(cutoff=cutoff)
