"""``pynomaly.notifications.alertmanager``: incidents to Alertmanager (beat, or on request).

Beat sends it every ``PYNOMALY_ALERTMANAGER_RESEND_SECONDS`` while
``PYNOMALY_ALERTMANAGER_URL`` is set (``schedules``). Incident upkeep calls
:func:`request_sync` after it opened, escalated or resolved incidents, so Alertmanager
hears at once instead of at the next tick. The task never retries by itself: with
Alertmanager (or the database) down, the next tick does the same work.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Task

from pynomaly_workers.bootstrap import get_adapters
from pynomaly_workers.contract import ALERTMANAGER_TASK, NOTIFICATIONS_QUEUE
from pynomaly_workers.schedules import alertmanager_expiry
from pynomaly_workers.services.alerting import sync_alerts
from pynomaly_workers.settings import Settings


def request_sync(app: Celery, settings: Settings) -> bool:
    """Ask for a sync now (a message on the notifications queue; returns at once).
    Call it after opening, escalating or resolving incidents. Does nothing and returns
    False without ``PYNOMALY_ALERTMANAGER_URL``."""
    if not settings.alertmanager_url:
        return False
    app.send_task(
        ALERTMANAGER_TASK, queue=NOTIFICATIONS_QUEUE, expires=alertmanager_expiry(settings)
    )
    return True


def register(app: Celery, settings: Settings) -> None:
    """Define the Alertmanager sync on ``app``."""
    del settings

    @app.task(name=ALERTMANAGER_TASK, bind=True)
    def alertmanager(self: Task) -> dict[str, Any]:  # type: ignore[type-arg]
        """Post the live incidents to Alertmanager and end the resolved ones."""
        return sync_alerts(get_adapters()).to_dict()
