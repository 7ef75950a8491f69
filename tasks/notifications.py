"""``pynomaly.notifications.deliver`` and ``pynomaly.notifications.sweep``.

A delivery makes one attempt (``services/notifications.py``); a retry is the same task
re-published with a countdown, for the same notification row and so the same
``webhook-id``. Late acks: a worker that dies mid-POST has its message delivered again,
and the claim (the attempt counted, the notification leased) keeps the two from posting
together; the sweep sends whatever message was lost.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from celery import Celery, Task

from pynomaly_workers.adapters.priority import run_niced
from pynomaly_workers.bootstrap import get_adapters
from pynomaly_workers.client import publish
from pynomaly_workers.contract import DELIVER_TASK, NOTIFICATIONS_QUEUE, SWEEP_NOTIFICATIONS_TASK
from pynomaly_workers.metrics import get_metrics
from pynomaly_workers.services.notifications import (
    Attempted,
    DeliverySender,
    deliver_many,
    dispatch,
    sweep,
)
from pynomaly_workers.settings import Settings
from pynomaly_workers.tasks.base import retry_options

log = logging.getLogger(__name__)


def delivery_sender(app: Celery) -> DeliverySender:
    """Publishes ``pynomaly.notifications.deliver`` on ``app``'s broker (incident upkeep
    passes this to ``services.notifications.dispatch`` after its commit)."""

    def send(notification_ids: Sequence[int], countdown: float) -> None:
        options: dict[str, Any] = {"queue": NOTIFICATIONS_QUEUE}
        if countdown > 0:
            options["countdown"] = countdown
        kwargs = {"notification_ids": [int(i) for i in notification_ids]}
        publish(app, DELIVER_TASK, kwargs=kwargs, **options)

    return send


def _observe(attempted: Attempted) -> None:
    metrics = get_metrics()
    metrics.notifications.labels(event=attempted.event, outcome=attempted.outcome).inc()
    metrics.webhook_seconds.observe(attempted.duration_s)


def deliver_here(app: Celery, ids: Sequence[int], *, settings: Settings) -> None:
    """Make the first attempt at the notifications in this process, at the bulk nice
    value (one-record jobs win the CPU), and publish each retry with its backoff delay.

    Incident upkeep calls this right after its commit instead of publishing a delivery:
    a second pool process would otherwise sit waiting on the receivers' answers while
    the small lane had one process fewer. If the attempt cannot even start (the
    database is gone), the delivery is published instead and runs where it can."""
    if not ids:
        return
    try:
        attempts = run_niced(lambda: deliver_many(get_adapters(), ids), nice=settings.bulk_nice)
    except Exception as exc:  # the message carries them to a later attempt, or the sweep
        log.warning("could not deliver %d notifications here (%s); publishing them", len(ids), exc)
        dispatch(delivery_sender(app), ids)
        return
    send = delivery_sender(app)
    for attempted in attempts:
        _observe(attempted)
        log.info(
            "notification %d (%s) attempt %d: %s%s",
            attempted.notification_id,
            attempted.event,
            attempted.attempt,
            attempted.outcome,
            f" ({attempted.error})" if attempted.error else "",
        )
        if attempted.retry_in is not None:
            try:
                send([attempted.notification_id], attempted.retry_in)
            except Exception as exc:  # the sweep sends it once it is overdue
                log.warning(
                    "could not schedule the retry of notification %d (%s); the sweep will",
                    attempted.notification_id,
                    exc,
                )


def register(app: Celery, settings: Settings) -> None:
    """Define the notification tasks on ``app``."""
    options: dict[str, Any] = {**retry_options(settings), "ignore_result": True}

    @app.task(name=DELIVER_TASK, **options)
    def deliver_notifications(
        self: Task,  # type: ignore[type-arg]
        notification_ids: Sequence[int] = (),
        notification_id: int | None = None,
    ) -> None:
        """One attempt to POST each of the notifications (``notification_id``: one, as
        messages published before batches name it); each that may still succeed is
        re-published alone with its own backoff delay."""
        ids = [int(i) for i in notification_ids]
        if notification_id is not None:
            ids.append(int(notification_id))
        deliver_here(self.app, ids, settings=settings)

    @app.task(name=SWEEP_NOTIFICATIONS_TASK, **options)
    def sweep_notifications(self: Task) -> None:  # type: ignore[type-arg]
        """Publish again the pending notifications whose message was lost."""
        ids = sweep(get_adapters(), delivery_sender(self.app))
        if ids:
            log.warning("re-sent %d overdue notifications", len(ids))
