"""Webhook subscriptions, notifications and delivery attempts on SQL.

A delivery never holds a transaction open across its HTTP call: it *claims* the
notification (one UPDATE that counts the attempt and pushes ``next_attempt_at`` past the
call's longest duration, guarded by ``status = 'pending' AND next_attempt_at <= now``, so
two deliveries of the same message cannot both POST), posts, then records the attempt
and its outcome in one short transaction.

:func:`queue_notifications` runs inside incident upkeep's own transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import Connection, Table, delete, desc, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from pynomaly_workers.adapters.stores.sql.base import SqlBase
from pynomaly_workers.adapters.stores.tables import (
    AnomalyRow,
    DeliveryAttemptRow,
    IncidentRow,
    NotificationRow,
    SubscriptionRow,
)
from pynomaly_workers.domain.notifications import (
    CANCELLED,
    DELIVERED,
    FAILED,
    PENDING,
    TOP_ANOMALIES,
    AnomalyFacts,
    Claim,
    Decision,
    Delivery,
    IncidentFacts,
    PostResult,
    Subscription,
    SubscriptionError,
    incident_event,
    recipients,
    serialise,
)

_NOT_DELIVERED = (FAILED, CANCELLED)
ANOMALIES = cast(Table, AnomalyRow.__table__)
ATTEMPTS = cast(Table, DeliveryAttemptRow.__table__)
INCIDENTS = cast(Table, IncidentRow.__table__)
NOTIFICATIONS = cast(Table, NotificationRow.__table__)
SUBSCRIPTIONS = cast(Table, SubscriptionRow.__table__)


def new_webhook_id() -> str:
    """A fresh ``webhook-id`` (the CloudEvent id too)."""
    return f"msg_{uuid.uuid4().hex}"


def _subscription(row: Any) -> Subscription:
    return Subscription(
        id=row.id,
        name=row.name,
        url=row.url,
        model=row.model,
        min_severity=row.min_severity,
        enabled=row.enabled,
        secret=row.secret,
        created_at=row.created_at,
        disabled_reason=row.disabled_reason,
        disabled_at=row.disabled_at,
    )


def _incident(row: Any) -> IncidentFacts:
    return IncidentFacts(
        id=row.id,
        model_name=row.model_name,
        model_version=row.model_version,
        entity=row.entity,
        status=row.status,
        first_ts=row.first_ts,
        last_ts=row.last_ts,
        anomaly_count=row.anomaly_count,
        max_severity=row.max_severity,
        feature_weights={str(k): float(v) for k, v in (row.feature_weights or {}).items()},
    )


def _anomaly(row: Any) -> AnomalyFacts:
    return AnomalyFacts(
        id=row.id,
        job_id=row.job_id,
        record_index=row.record_index,
        record_id=row.record_id,
        timestamp=row.timestamp,
        score=row.score,
        severity=row.severity,
        explanation=row.explanation,
    )


def _dialect_insert(conn: Connection, table: Any) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table)
    return insert(table)


def incident_anomalies(conn: Connection, incident: Any, *, limit: int) -> list[AnomalyFacts]:
    """An incident's most severe anomalies: same model version, same entity (NULL-safe),
    a timestamp in [first_ts, last_ts]."""
    table = ANOMALIES
    query = (
        select(table)
        .where(
            table.c.model_id == incident.model_id,
            table.c.entity.is_not_distinct_from(incident.entity),
            table.c.timestamp >= incident.first_ts,
            table.c.timestamp <= incident.last_ts,
        )
        .order_by(desc(table.c.severity), table.c.timestamp, table.c.id)
        .limit(limit)
    )
    return [_anomaly(row) for row in conn.execute(query)]


def _notified(conn: Connection, incident_id: int) -> dict[int, set[str]]:
    table = NOTIFICATIONS
    found: dict[int, set[str]] = {}
    query = select(table.c.subscription_id, table.c.event).where(table.c.incident_id == incident_id)
    for subscription_id, event in conn.execute(query):
        found.setdefault(subscription_id, set()).add(event)
    return found


def enabled_subscriptions(conn: Connection) -> list[Subscription]:
    """The enabled subscriptions (incident upkeep reads them once per transaction)."""
    return [
        _subscription(row)
        for row in conn.execute(select(SUBSCRIPTIONS).where(SUBSCRIPTIONS.c.enabled))
    ]


def queue_notifications(
    conn: Connection,
    *,
    incident_id: int,
    kind: Literal["opened", "grew", "resolved"],
    before_max: float | None,
    after_max: float,
    now: datetime,
    subscriptions: Sequence[Subscription] | None = None,
    model_name: str | None = None,
) -> list[int]:
    """Insert the notifications an incident event calls for (ON CONFLICT (subscription_id,
    incident_id, event) DO NOTHING: the unique key makes a repeated event notify once)
    with their CloudEvent bodies built from the incident row and its top anomalies;
    return the ids inserted (to dispatch after commit).

    ``subscriptions`` (the enabled ones) and ``model_name`` (the incident's) spare the
    queries for them when the caller has them: an incident that grew without crossing
    any subscription's minimum then costs no query at all."""
    if subscriptions is None:
        subscriptions = enabled_subscriptions(conn)
    if not subscriptions:
        return []
    if kind == "grew" and model_name is not None:
        possible = recipients(
            kind,
            subscriptions,
            model_name=model_name,
            before_max=before_max,
            after_max=after_max,
            notified={},
        )
        if not possible:
            return []
    incident = conn.execute(select(INCIDENTS).where(INCIDENTS.c.id == incident_id)).one_or_none()
    if incident is None:
        return []
    chosen = recipients(
        kind,
        subscriptions,
        model_name=incident.model_name,
        before_max=before_max,
        after_max=after_max,
        # a new incident has no notification yet
        notified={} if kind == "opened" else _notified(conn, incident_id),
    )
    if not chosen:
        return []
    facts = _incident(incident)
    anomalies = incident_anomalies(conn, incident, limit=TOP_ANOMALIES)
    inserted = []
    for subscription, event in chosen:
        webhook_id = new_webhook_id()
        body = serialise(
            incident_event(
                webhook_id=webhook_id, event=event, incident=facts, anomalies=anomalies, time=now
            )
        )
        statement = (
            _dialect_insert(conn, NOTIFICATIONS)
            .values(
                webhook_id=webhook_id,
                subscription_id=subscription.id,
                incident_id=incident_id,
                event=event,
                body=body,
                status=PENDING,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
            .on_conflict_do_nothing(index_elements=["subscription_id", "incident_id", "event"])
            .returning(NOTIFICATIONS.c.id)
        )
        new_id = conn.execute(statement).scalar_one_or_none()
        if new_id is not None:
            inserted.append(int(new_id))
    return inserted


class SqlNotificationStore(SqlBase):
    """:class:`~pynomaly_workers.domain.ports.NotificationStore` on SQL."""

    # -- subscriptions -----------------------------------------------------------------

    def add_subscription(
        self,
        *,
        name: str,
        url: str,
        model: str | None,
        min_severity: float,
        secret: str,
        now: datetime,
    ) -> Subscription:
        values = {
            "name": name,
            "url": url,
            "model": model,
            "min_severity": min_severity,
            "secret": secret,
            "enabled": True,
            "created_at": now,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(SUBSCRIPTIONS).values(**values))
        except IntegrityError:
            raise SubscriptionError(
                f"a subscription called {name!r} exists: choose another name, or "
                f"'subscriptions remove {name}' first"
            ) from None
        return self.get_subscription(name)

    def list_subscriptions(self) -> list[Subscription]:
        table = SUBSCRIPTIONS
        with self.engine.connect() as conn:
            return [_subscription(r) for r in conn.execute(select(table).order_by(table.c.name))]

    def get_subscription(self, name: str) -> Subscription:
        with self.engine.connect() as conn:
            return self._subscription_named(conn, name)

    def _subscription_named(self, conn: Connection, name: str) -> Subscription:
        table = SUBSCRIPTIONS
        row = conn.execute(select(table).where(table.c.name == name)).one_or_none()
        if row is None:
            known = [r for (r,) in conn.execute(select(table.c.name).order_by(table.c.name))]
            listed = ", ".join(known) if known else "none yet"
            raise SubscriptionError(
                f"no subscription called {name!r} (known: {listed}); "
                "'subscriptions list' shows them"
            )
        return _subscription(row)

    def remove_subscription(self, name: str) -> Subscription:
        notifications, attempts = NOTIFICATIONS, ATTEMPTS
        with self.engine.begin() as conn:
            found = self._subscription_named(conn, name)
            ids = select(notifications.c.id).where(notifications.c.subscription_id == found.id)
            conn.execute(delete(attempts).where(attempts.c.notification_id.in_(ids)))
            conn.execute(delete(notifications).where(notifications.c.subscription_id == found.id))
            conn.execute(delete(SUBSCRIPTIONS).where(SUBSCRIPTIONS.c.id == found.id))
        return found

    # -- one delivery attempt -----------------------------------------------------------

    def claim_notifications(
        self, notification_ids: Sequence[int], *, now: datetime, lease_seconds: float
    ) -> list[Claim]:
        if not notification_ids:
            return []
        table, subscriptions = NOTIFICATIONS, SUBSCRIPTIONS
        claim = (
            update(table)
            .where(
                table.c.id.in_(sorted(set(notification_ids))),
                table.c.status == PENDING,
                table.c.next_attempt_at <= now,
            )
            .values(
                attempts=table.c.attempts + 1,
                next_attempt_at=now + timedelta(seconds=lease_seconds),
            )
            .returning(
                table.c.id,
                table.c.webhook_id,
                table.c.event,
                table.c.body,
                table.c.attempts,
                table.c.subscription_id,
            )
        )
        with self.engine.begin() as conn:
            rows = conn.execute(claim).all()
            if not rows:
                return []
            targets = {
                target.id: target
                for target in conn.execute(
                    select(subscriptions.c.id, subscriptions.c.url, subscriptions.c.secret).where(
                        subscriptions.c.id.in_({row.subscription_id for row in rows})
                    )
                )
            }
        return [
            Claim(
                notification_id=row.id,
                webhook_id=row.webhook_id,
                event=row.event,
                body=row.body,
                attempt=row.attempts,
                subscription_id=row.subscription_id,
                url=targets[row.subscription_id].url,
                secret=targets[row.subscription_id].secret,
            )
            for row in sorted(rows, key=lambda row: row.id)
        ]

    def record_attempts(
        self, outcomes: Sequence[tuple[Claim, PostResult, Decision]], *, now: datetime
    ) -> list[bool]:
        if not outcomes:
            return []
        table = NOTIFICATIONS
        applied: list[bool] = []
        with self.engine.begin() as conn:
            conn.execute(
                insert(ATTEMPTS),
                [
                    {
                        "notification_id": claim.notification_id,
                        "attempt": claim.attempt,
                        "at": now,
                        "status_code": result.status_code,
                        "error": result.error or decision.error,
                        "duration_ms": result.duration_s * 1000.0,
                    }
                    for claim, result, decision in outcomes
                ],
            )
            for claim, _result, decision in outcomes:
                retry_at = (
                    now + timedelta(seconds=decision.retry_in)
                    if decision.retry_in is not None
                    else None
                )
                count = conn.execute(
                    update(table)
                    .where(
                        table.c.id == claim.notification_id,
                        table.c.status == PENDING,
                        table.c.attempts == claim.attempt,
                    )
                    .values(
                        status=decision.status,
                        next_attempt_at=retry_at,
                        last_error=decision.error,
                        delivered_at=now if decision.status == DELIVERED else None,
                    )
                ).rowcount
                applied.append(bool(count))
            for claim, _result, decision in outcomes:
                if decision.outcome == "disabled":
                    self._disable(conn, claim.subscription_id, reason=decision.error or "", now=now)
        return applied

    def _disable(
        self, conn: Connection, subscription_id: int, *, reason: str, now: datetime
    ) -> None:
        """Disable a subscription and cancel what it still had pending."""
        subscriptions, notifications = SUBSCRIPTIONS, NOTIFICATIONS
        conn.execute(
            update(subscriptions)
            .where(subscriptions.c.id == subscription_id, subscriptions.c.enabled)
            .values(enabled=False, disabled_reason=reason, disabled_at=now)
        )
        conn.execute(
            update(notifications)
            .where(
                notifications.c.subscription_id == subscription_id,
                notifications.c.status == PENDING,
            )
            .values(
                status=CANCELLED,
                next_attempt_at=None,
                last_error=f"subscription disabled: {reason}",
            )
        )

    # -- listing, replay, sweep ---------------------------------------------------------

    def _deliveries(self, conn: Connection, where: Sequence[Any], *, limit: int) -> list[Delivery]:
        notifications, subscriptions = NOTIFICATIONS, SUBSCRIPTIONS
        query = (
            select(notifications, subscriptions.c.name.label("subscription"))
            .join(subscriptions, subscriptions.c.id == notifications.c.subscription_id)
            .where(*where)
            .order_by(desc(notifications.c.id))
            .limit(limit)
        )
        return [
            Delivery(
                id=row.id,
                webhook_id=row.webhook_id,
                subscription=row.subscription,
                incident_id=row.incident_id,
                event=row.event,
                status=row.status,
                attempts=row.attempts,
                next_attempt_at=row.next_attempt_at,
                last_error=row.last_error,
                created_at=row.created_at,
                delivered_at=row.delivered_at,
            )
            for row in conn.execute(query)
        ]

    def deliveries(self, *, failed: bool = False, limit: int = 50) -> list[Delivery]:
        table = NOTIFICATIONS
        where = [table.c.status.in_(_NOT_DELIVERED)] if failed else []
        with self.engine.connect() as conn:
            return self._deliveries(conn, where, limit=limit)

    def attempts_of(self, notification_id: int) -> list[dict[str, Any]]:
        table = ATTEMPTS
        query = (
            select(table)
            .where(table.c.notification_id == notification_id)
            .order_by(table.c.attempt, table.c.id)
        )
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def replay_notification(self, notification_id: int, *, now: datetime) -> Delivery:
        table = NOTIFICATIONS
        with self.engine.begin() as conn:
            found = self._deliveries(conn, [table.c.id == notification_id], limit=1)
            if not found:
                raise SubscriptionError(
                    f"no notification {notification_id}: 'deliveries' lists them with their ids"
                )
            if found[0].status not in _NOT_DELIVERED:
                raise SubscriptionError(
                    f"notification {notification_id} is {found[0].status}: only failed or "
                    "cancelled ones are replayed ('deliveries --failed' lists them)"
                )
            target = self._subscription_named(conn, found[0].subscription)
            if not target.enabled:
                raise SubscriptionError(
                    f"subscription {target.name!r} is disabled ({target.disabled_reason}): "
                    f"'subscriptions remove {target.name}' and add it again once the "
                    "receiver accepts notifications"
                )
            conn.execute(
                update(table)
                .where(table.c.id == notification_id, table.c.status.in_(_NOT_DELIVERED))
                .values(status=PENDING, next_attempt_at=now)
            )
            return self._deliveries(conn, [table.c.id == notification_id], limit=1)[0]

    def overdue_notifications(self, *, before: datetime, now: datetime, limit: int) -> list[int]:
        table = NOTIFICATIONS
        with self.engine.begin() as conn:
            ids = [
                int(i)
                for (i,) in conn.execute(
                    select(table.c.id)
                    .where(table.c.status == PENDING, table.c.next_attempt_at < before)
                    .order_by(table.c.next_attempt_at)
                    .limit(limit)
                )
            ]
            if ids:
                conn.execute(
                    update(table)
                    .where(
                        table.c.id.in_(ids),
                        table.c.status == PENDING,
                        table.c.next_attempt_at < before,  # not claimed meanwhile
                    )
                    .values(next_attempt_at=now)
                )
        return ids
