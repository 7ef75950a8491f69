"""The beat schedule. Run exactly one beat per deployment (``pynomaly-workers beat``)."""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab

from pynomaly_workers.contract import maintenance_task
from pynomaly_workers.settings import Settings


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Maintenance on a schedule: views every 5 minutes, drift hourly, VACUUM nightly,
    retention daily."""
    del settings  # the intervals become settings when operators ask for them
    return {
        "refresh-views": {
            "task": maintenance_task("refresh_views"),
            "schedule": 300.0,
            "options": {"expires": 290},
        },
        "vacuum-analyze": {
            "task": maintenance_task("vacuum_analyze"),
            "schedule": crontab(hour="3", minute="15"),
        },
        "retention": {
            "task": maintenance_task("retention"),
            "schedule": crontab(hour="2", minute="30"),
        },
        "drift": {
            "task": maintenance_task("drift"),
            "schedule": 3600.0,
            "options": {"expires": 3500},
        },
    }
