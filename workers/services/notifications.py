"""Incident notifications: subscriptions, one delivery attempt, the sweep, dispatching.

Celery stays out: publishing a delivery is a :data:`DeliverySender` the caller passes
(``tasks/notifications.py`` makes one from a Celery app). Incident upkeep inserts the
notifications in its own transaction (``queue_notifications`` in the SQL store) and,
after commit, hands their ids to :func:`dispatch`; a lost message is found by
:func:`sweep`.
"""

from __future__ import annotations

import logging
import random
import secrets
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

from pynomaly_workers.domain.errors import InvalidInput
from pynomaly_workers.domain.models import check_model_name
from pynomaly_workers.domain.notifications import (
    SECRET_BYTES,
    Claim,
    Outcome,
    PostResult,
    Subscription,
    SubscriptionError,
    WebhookSender,
    check_min_severity,
    check_secret,
    check_url,
    decide,
    new_secret,
    ping_event,
    serialise,
)
from pynomaly_workers.domain.ports import NotificationStore
from pynomaly_workers.services.context import Adapters

log = logging.getLogger(__name__)

DeliverySender = Callable[[Sequence[int], float], None]
"""Publishes one delivery of the notifications ``ids`` (one message) to run
``countdown`` seconds from now."""

SWEEP_GRACE_SECONDS = 120.0
"""A pending notification this far past due has lost its message: the sweep sends it."""
SWEEP_BATCH = 500
"""Notifications one sweep re-sends at most."""
CONCURRENT_POSTS = 8
"""Webhook POSTs one delivery task has in flight at once (a slow receiver holds one
thread, not the others' notifications)."""
DELIVERY_BATCH = 100
"""Notifications one delivery message carries at most."""
CLOCK_SKEW_SECONDS = 1.0
"""A delivery also takes a notification due this much later: the worker running it may
read a clock a little behind the host that scheduled it (far less than the lease, so two
deliveries still cannot overlap)."""


@dataclass(frozen=True, slots=True)
class Attempted:
    """What one delivery attempt did. ``retry_in``: seconds until the next attempt (to
    publish with that countdown); ``recorded`` is False if another attempt took over."""

    notification_id: int
    event: str
    attempt: int
    outcome: Outcome
    status_code: int | None
    error: str | None
    duration_s: float
    retry_in: float | None
    recorded: bool


def _ports(adapters: Adapters) -> tuple[NotificationStore, WebhookSender]:
    if adapters.notifications is None or adapters.webhooks is None:
        raise RuntimeError("notifications are not wired: build the adapters with bootstrap()")
    return adapters.notifications, adapters.webhooks


def lease_seconds(adapters: Adapters) -> float:
    """How long a claimed notification is left alone: longer than a POST can take
    (connect, write and read may each take the whole timeout)."""
    return 3 * adapters.settings.webhook_timeout_seconds + 5.0


def deliver(
    adapters: Adapters, notification_id: int, *, draw: Callable[[], float] = random.random
) -> Attempted | None:
    """Make one attempt to deliver a notification (see :func:`deliver_many`); None if it
    was not due."""
    attempted = deliver_many(adapters, [notification_id], draw=draw)
    return attempted[0] if attempted else None


def deliver_many(
    adapters: Adapters,
    notification_ids: Sequence[int],
    *,
    draw: Callable[[], float] = random.random,
) -> list[Attempted]:
    """Make one attempt to deliver each notification: claim them (one transaction), sign
    and POST their bodies (at most :data:`CONCURRENT_POSTS` at once), record the attempts
    and decide what follows (one transaction). The ones not due (delivered, failed,
    cancelled, removed, or taken by another attempt) are left out of the answer."""
    store, sender = _ports(adapters)
    settings = adapters.settings
    claims = store.claim_notifications(
        notification_ids,
        now=adapters.clock.now() + timedelta(seconds=CLOCK_SKEW_SECONDS),
        lease_seconds=lease_seconds(adapters),
    )
    if not claims:
        return []

    def post(claim: Claim) -> PostResult:
        return sender.post(
            claim.url,
            secret=claim.secret,
            webhook_id=claim.webhook_id,
            body=claim.body,
            timestamp=adapters.clock.now(),
        )

    if len(claims) == 1:
        results = [post(claims[0])]
    else:
        with ThreadPoolExecutor(
            max_workers=min(CONCURRENT_POSTS, len(claims)), thread_name_prefix="webhook"
        ) as pool:
            results = list(pool.map(post, claims))
    decisions = [
        decide(
            result,
            attempt=claim.attempt,
            max_attempts=settings.webhook_max_attempts,
            base=settings.webhook_retry_base_seconds,
            maximum=settings.webhook_retry_max_seconds,
            draw=draw,
        )
        for claim, result in zip(claims, results, strict=True)
    ]
    recorded = store.record_attempts(
        list(zip(claims, results, decisions, strict=True)), now=adapters.clock.now()
    )
    return [
        Attempted(
            notification_id=claim.notification_id,
            event=claim.event,
            attempt=claim.attempt,
            outcome=decision.outcome,
            status_code=result.status_code,
            error=decision.error,
            duration_s=result.duration_s,
            retry_in=decision.retry_in if kept else None,
            recorded=kept,
        )
        for claim, result, decision, kept in zip(claims, results, decisions, recorded, strict=True)
    ]


def dispatch(send: DeliverySender, ids: Iterable[int]) -> int:
    """Publish the delivery of the notifications now, :data:`DELIVERY_BATCH` to a
    message; how many were published.

    Called after the notifications were committed, so a publish that fails (the broker
    is down) fails nothing: it is logged, the rest are left pending too, and the sweep
    publishes them once they are overdue."""
    pending = list(ids)
    for start in range(0, len(pending), DELIVERY_BATCH):
        try:
            send(pending[start : start + DELIVERY_BATCH], 0.0)
        except Exception as exc:  # any publish failure: the sweep resends
            log.warning(
                "could not publish the delivery of %d notifications (%s); the sweep will",
                len(pending) - start,
                exc,
            )
            return start
    return len(pending)


def sweep(adapters: Adapters, send: DeliverySender) -> list[int]:
    """Publish again the pending notifications whose message was lost (overdue by
    :data:`SWEEP_GRACE_SECONDS`); their ids."""
    store, _ = _ports(adapters)
    now = adapters.clock.now()
    ids = store.overdue_notifications(
        before=now - timedelta(seconds=SWEEP_GRACE_SECONDS), now=now, limit=SWEEP_BATCH
    )
    dispatch(send, ids)
    return ids


def add_subscription(
    adapters: Adapters,
    *,
    name: str,
    url: str,
    model: str | None = None,
    min_severity: float = 0.0,
    secret: str | None = None,
) -> tuple[Subscription, str | None]:
    """Validate and store a subscription; the secret generated for it (to show once),
    or None if one was given."""
    store, _ = _ports(adapters)
    try:
        check_model_name(name)
        if model is not None:
            check_model_name(model)
    except InvalidInput as exc:
        raise SubscriptionError(str(exc)) from None
    check_url(url)
    check_min_severity(min_severity)
    generated = None if secret is not None else new_secret(secrets.token_bytes(SECRET_BYTES))
    stored = store.add_subscription(
        name=name,
        url=url,
        model=model,
        min_severity=min_severity,
        secret=check_secret(secret) if secret is not None else str(generated),
        now=adapters.clock.now(),
    )
    return stored, generated


def send_test(adapters: Adapters, name: str) -> tuple[str, PostResult]:
    """POST one signed ``com.pynomaly.test`` event to subscription ``name`` now (nothing
    recorded); its webhook id and the answer."""
    store, sender = _ports(adapters)
    subscription = store.get_subscription(name)
    webhook_id = f"msg_{uuid.uuid4().hex}"
    now = adapters.clock.now()
    body = serialise(ping_event(webhook_id=webhook_id, subscription=name, time=now))
    result = sender.post(
        subscription.url,
        secret=subscription.secret,
        webhook_id=webhook_id,
        body=body,
        timestamp=now,
    )
    return webhook_id, result
