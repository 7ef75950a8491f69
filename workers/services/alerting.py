"""Keep Alertmanager up to date with the incidents (``PYNOMALY_ALERTMANAGER_URL``).

:func:`sync_alerts` posts every live incident that was never posted, changed since its
last post or was posted more than half a resend interval ago, and ends the alerts of
resolved incidents; then records what Alertmanager accepted. Beat runs it every
``PYNOMALY_ALERTMANAGER_RESEND_SECONDS`` (``pynomaly.notifications.alertmanager``, on the
``notifications`` queue: its own pool, or the bulk lane of a worker that also detects,
never the small lane), and incident upkeep may
ask for a run at once after opening or resolving incidents. Nothing here is on the
detection path: with Alertmanager down, a run logs why and leaves the incidents due, and
the next run posts them. One run at a time holds a lock; a run that finds it taken
returns at once (the running one, or the next tick, sees what changed).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from pynomaly_workers.domain.alerting import (
    AlertmanagerRejected,
    AlertmanagerUnavailable,
    AlertSink,
    plan_alerts,
)
from pynomaly_workers.domain.ports import AlertingStore
from pynomaly_workers.services.context import Adapters

log = logging.getLogger(__name__)

BATCH_INCIDENTS: Final = 500
"""Incidents per post (each is one alert, two while it leaves a severity band)."""
MAX_BATCHES: Final = 200
"""Posts per run at most (100,000 incidents); the rest wait for the next run."""
LOCK_NAME: Final = "alertmanager"


@dataclass(frozen=True, slots=True)
class AlertSync:
    """What one run did: incidents posted firing, alerts ended, posts made, and why it
    stopped early (``error``) or did nothing (``skipped``)."""

    posted: int = 0
    ended: int = 0
    posts: int = 0
    skipped: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the task's result)."""
        return asdict(self)


def sync_alerts(adapters: Adapters, *, now: datetime | None = None) -> AlertSync:
    """Post what Alertmanager has not heard yet; see the module docstring."""
    sink, store = adapters.alertmanager, adapters.alerting
    if sink is None or store is None:
        return AlertSync(skipped="PYNOMALY_ALERTMANAGER_URL is not set")
    with adapters.maintenance.try_lock(LOCK_NAME) as taken:
        if not taken:
            return AlertSync(skipped="another run holds the lock")
        return _sync(
            sink,
            store,
            now=now or adapters.clock.now(),
            resend_seconds=adapters.settings.alertmanager_resend_seconds,
        )


def _sync(
    sink: AlertSink, store: AlertingStore, *, now: datetime, resend_seconds: float
) -> AlertSync:
    # Half an interval: a tick that comes a little early still resends what the last
    # tick posted, so an alert is posted every interval, well within its four.
    resend_before = now - timedelta(seconds=resend_seconds / 2)
    posted = ended = posts = 0
    for _ in range(MAX_BATCHES):
        due = store.incidents_to_alert(resend_before=resend_before, limit=BATCH_INCIDENTS)
        if not due:
            break
        plan = plan_alerts(due, now=now, resend_seconds=resend_seconds)
        try:
            sink.post(plan.alerts)
        except (AlertmanagerUnavailable, AlertmanagerRejected) as exc:
            log.warning("alertmanager: %s; %d incidents left for the next run", exc, len(due))
            return AlertSync(posted=posted, ended=ended, posts=posts, error=str(exc))
        store.mark_alerts_sent(plan.sent, at=now)
        store.mark_alerts_ended(plan.ended, at=now)
        posted, ended, posts = posted + len(plan.sent), ended + len(plan.ended), posts + 1
        if len(due) < BATCH_INCIDENTS:
            break
    return AlertSync(posted=posted, ended=ended, posts=posts)
