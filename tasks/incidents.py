"""``pynomaly.incidents.*``: incident upkeep on the ``notifications`` queue.

``fold`` is asked for by the workers after they settle jobs that found anomalies (at
most once per ``PYNOMALY_INCIDENT_FOLD_SECONDS`` per process: :class:`FoldRequests`) and
by beat as a backstop; ``resolve_idle`` by beat. Each makes the first attempt at the
notifications its transaction queued once it has committed (retries are
``pynomaly.notifications.deliver`` messages); a notification whose attempt or message is
lost is sent by the sweep (``pynomaly.notifications.sweep``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict
from typing import Any

from celery import Celery, Task

from pynomaly_workers.adapters.priority import run_niced
from pynomaly_workers.bootstrap import get_adapters
from pynomaly_workers.client import publish
from pynomaly_workers.contract import (
    FOLD_INCIDENTS_TASK,
    RESOLVE_IDLE_TASK,
)
from pynomaly_workers.domain.ports import FoldReport
from pynomaly_workers.metrics import get_metrics
from pynomaly_workers.services import incidents
from pynomaly_workers.settings import Settings
from pynomaly_workers.tasks.alerting import request_sync
from pynomaly_workers.tasks.base import retry_options
from pynomaly_workers.tasks.notifications import deliver_here

log = logging.getLogger(__name__)


def after_commit(app: Celery, report: FoldReport, *, settings: Settings) -> None:
    """Send what an incident transaction queued: its notifications (first attempt here,
    retries published), and an Alertmanager sync (when one is configured) when
    incidents opened, grew or resolved."""
    counter = get_metrics().incidents
    for event, count in (
        ("opened", report.opened),
        ("grown", report.grown),
        ("resolved", report.resolved),
    ):
        if count:
            counter.labels(event=event).inc(count)
    deliver_here(app, report.notifications, settings=settings)
    if report.opened or report.grown or report.resolved:
        request_sync(app, settings)


class FoldRequests:
    """Asks for a fold at most once per ``interval`` seconds from this process: the first
    request of a quiet period at once, later ones folded into one sent when the period
    ends. A failed request is only logged: detection never fails for incident upkeep,
    and beat's backstop fold picks the jobs up."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next = 0.0  # monotonic time from which a request may go out at once
        self._lock = threading.Lock()

    def __call__(self, app: Celery) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next - self.interval:
                return  # a delayed request already covers this one
            countdown = max(0.0, self._next - now)
            self._next = max(now, self._next) + self.interval
        try:
            options = {"countdown": countdown} if countdown > 0 else {}
            publish(app, FOLD_INCIDENTS_TASK, kwargs={}, **options)
        except Exception as exc:  # detection must not fail for incident upkeep
            log.warning("could not ask for incident upkeep (beat will): %s", exc)


_requests: dict[float, FoldRequests] = {}


def request_fold(app: Celery, settings: Settings) -> None:
    """Ask for incident upkeep after settling jobs that found anomalies."""
    interval = settings.incident_fold_seconds
    requests = _requests.get(interval) or _requests.setdefault(interval, FoldRequests(interval))
    requests(app)


def register(app: Celery, settings: Settings) -> None:
    """Define the incident tasks on ``app``."""
    options: dict[str, Any] = retry_options(settings)

    @app.task(name=FOLD_INCIDENTS_TASK, **options)
    def fold(self: Task) -> dict[str, Any]:  # type: ignore[type-arg]
        """Fold the anomalies of settled jobs into incidents."""
        report = run_niced(lambda: incidents.fold_pending(get_adapters()), nice=settings.bulk_nice)
        after_commit(self.app, report, settings=settings)
        if report.more:
            publish(self.app, FOLD_INCIDENTS_TASK, kwargs={})
        return _summary(report)

    @app.task(name=RESOLVE_IDLE_TASK, **options)
    def resolve_idle(self: Task) -> dict[str, Any]:  # type: ignore[type-arg]
        """Resolve incidents without a new anomaly for the resolve-after setting."""
        report = run_niced(lambda: incidents.resolve_idle(get_adapters()), nice=settings.bulk_nice)
        after_commit(self.app, report, settings=settings)
        return _summary(report)


def _summary(report: FoldReport) -> dict[str, Any]:
    out = asdict(report)
    out.update(notifications=len(report.notifications))
    return out
