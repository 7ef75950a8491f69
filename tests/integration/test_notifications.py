"""Incident notifications against a real HTTP receiver, on SQLite and PostgreSQL.

Every request the receiver gets is verified with ``standardwebhooks.Webhook(secret)
.verify``; deliveries run through the service (one attempt per call, as the task does),
with the retry delays drawn as zero so the tests do not wait.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from sqlalchemy import Engine, delete, func, select, update

from pynomaly_workers.adapters.stores.sql import SqlStore
from pynomaly_workers.adapters.stores.sql.notifications import queue_notifications
from pynomaly_workers.adapters.stores.tables import (
    DeliveryAttemptRow,
    NotificationRow,
    SubscriptionRow,
)
from pynomaly_workers.bootstrap import bootstrap
from pynomaly_workers.domain.notifications import Subscription, SubscriptionError
from pynomaly_workers.domain.ports import NotificationStore
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.services.notifications import (
    SWEEP_GRACE_SECONDS,
    Attempted,
    add_subscription,
    deliver,
    deliver_many,
    send_test,
    sweep,
)
from pynomaly_workers.settings import Settings
from tests.webhooks import (
    WebhookReceiver,
    always,
    fail_first,
    register_model,
    seed_incident,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def notify(store_url: str, make_settings: Callable[..., Settings]) -> Iterator[Adapters]:
    """Adapters with quick webhook settings; subscriptions and notifications removed after."""
    adapters = bootstrap(
        make_settings(
            database_url=store_url,
            webhook_timeout_seconds=0.5,
            webhook_max_attempts=4,
            webhook_retry_base_seconds=0.01,
            webhook_retry_max_seconds=0.05,
        )
    )
    yield adapters
    with engine_of(adapters).begin() as conn:
        for table in (DeliveryAttemptRow, NotificationRow, SubscriptionRow):
            conn.execute(delete(table))
    adapters.close()


def engine_of(adapters: Adapters) -> Engine:
    return cast(SqlStore, adapters.store).engine


def store_of(adapters: Adapters) -> NotificationStore:
    assert adapters.notifications is not None
    return adapters.notifications


def queue(
    adapters: Adapters,
    incident_id: int,
    kind: Any = "opened",
    *,
    before_max: float | None = None,
    after_max: float = 0.9,
) -> list[int]:
    with engine_of(adapters).begin() as conn:
        return queue_notifications(
            conn,
            incident_id=incident_id,
            kind=kind,
            before_max=before_max,
            after_max=after_max,
            now=datetime.now(UTC),
        )


def deliver_until_settled(adapters: Adapters, notification_id: int) -> list[Attempted]:
    """Attempt until the notification is no longer retried (as the task's re-publishing
    would, without its waits)."""
    attempts = []
    for _ in range(20):
        attempted = deliver(adapters, notification_id, draw=lambda: 0.0)
        if attempted is None:
            break
        attempts.append(attempted)
        if attempted.retry_in is None:
            break
    return attempts


def subscribe(adapters: Adapters, url: str, **kwargs: Any) -> Subscription:
    stored, secret = add_subscription(adapters, name=kwargs.pop("name", "ops"), url=url, **kwargs)
    assert secret is not None
    assert secret == stored.secret
    return stored


def notification(adapters: Adapters, notification_id: int) -> Any:
    with engine_of(adapters).connect() as conn:
        return conn.execute(
            select(NotificationRow.__table__).where(NotificationRow.id == notification_id)
        ).one()


def attempts(adapters: Adapters, notification_id: int) -> list[tuple[int, int | None]]:
    return [
        (a["attempt"], a["status_code"]) for a in store_of(adapters).attempts_of(notification_id)
    ]


def test_500_then_200_delivers_one_signed_notification_under_one_webhook_id(
    notify: Adapters,
) -> None:
    # Given a subscription whose receiver answers 500 to the first attempt, 200 after
    version = register_model(notify.store)
    incident = seed_incident(engine_of(notify), version, severities=[0.6, 0.9, 0.7])
    with WebhookReceiver("whsec_" + "A" * 32, answer=fail_first(500)) as receiver:
        # (the receiver learns the secret the subscription was given)
        receiver.secret = subscribe(notify, receiver.url, min_severity=0.5).secret

        # When the incident's opening is queued and delivered
        ids = queue(notify, incident)
        assert len(ids) == 1
        done = deliver_until_settled(notify, ids[0])

    # Then two attempts reached the receiver, both verified, under one webhook-id
    assert [(a.outcome, a.status_code) for a in done] == [("retried", 500), ("delivered", 200)]
    assert [r.status for r in receiver.requests] == [500, 200]
    assert all(r.verified for r in receiver.requests)
    row = notification(notify, ids[0])
    assert {r.webhook_id for r in receiver.requests} == {row.webhook_id}
    assert len({r.body for r in receiver.requests}) == 1  # the same bytes every time
    # and the body is the CloudEvent of the incident with its own anomalies only
    event = receiver.requests[-1].payload
    assert (event["type"], event["id"], event["subject"]) == (
        "com.pynomaly.incident.opened",
        row.webhook_id,
        f"incidents/{incident}",
    )
    assert [a["severity"] for a in event["data"]["top_anomalies"]] == [0.9, 0.7, 0.6]
    assert event["data"]["incident"]["severity_band"] == "high"
    # and both attempts are recorded, the notification delivered
    assert attempts(notify, ids[0]) == [(1, 500), (2, 200)]
    assert (row.status, row.attempts, row.last_error) == ("delivered", 2, None)
    assert row.delivered_at is not None
    # and a further delivery of the same message does nothing
    assert deliver(notify, ids[0]) is None
    assert len(receiver.requests) == 2


def test_the_same_incident_event_queued_twice_notifies_once(notify: Adapters) -> None:
    version = register_model(notify.store)
    incident = seed_incident(engine_of(notify), version, severities=[0.9])
    subscribe(notify, "http://127.0.0.1:9/never", name="a")
    subscribe(notify, "http://127.0.0.1:9/never", name="b", model="other")

    first = queue(notify, incident)
    second = queue(notify, incident)

    assert len(first) == 1
    assert second == []
    with engine_of(notify).connect() as conn:
        assert conn.execute(select(func.count()).select_from(NotificationRow)).scalar_one() == 1


def test_escalation_and_resolution_go_to_the_right_subscriptions(notify: Adapters) -> None:
    # Given one subscription from 0.5 and one from 0.95, and an incident opened at 0.6
    version = register_model(notify.store)
    incident = seed_incident(engine_of(notify), version, severities=[0.6], entity=None)
    low = subscribe(notify, "http://127.0.0.1:9/a", name="low", min_severity=0.5)
    high = subscribe(notify, "http://127.0.0.1:9/b", name="high", min_severity=0.95)
    subscribe(notify, "http://127.0.0.1:9/c", name="elsewhere", model="other")
    opened = queue(notify, incident, after_max=0.6)

    # When it grows to 0.97, then resolves
    escalated = queue(notify, incident, "grew", before_max=0.6, after_max=0.97)
    resolved = queue(notify, incident, "resolved", after_max=0.97)

    # Then low heard of the opening, high of the escalation, and both of the end
    def events(ids: list[int]) -> set[tuple[int, str]]:
        return {
            (notification(notify, i).subscription_id, notification(notify, i).event) for i in ids
        }

    assert events(opened) == {(low.id, "opened")}
    # (its anomalies are those without an entity: NULL matched NULL-safely, not the other)
    body = json.loads(notification(notify, opened[0]).body)
    assert [a["severity"] for a in body["data"]["top_anomalies"]] == [0.6]
    assert events(escalated) == {(high.id, "escalated")}
    assert events(resolved) == {(low.id, "resolved"), (high.id, "resolved")}


def test_410_disables_the_subscription_and_cancels_its_pending_notifications(
    notify: Adapters,
) -> None:
    version = register_model(notify.store)
    first = seed_incident(engine_of(notify), version, severities=[0.9], entity="a")
    second = seed_incident(engine_of(notify), version, severities=[0.9], entity="b")
    with WebhookReceiver("whsec_" + "A" * 32, answer=always(410)) as receiver:
        stored = subscribe(notify, receiver.url)
        receiver.secret = stored.secret
        [one], [two] = queue(notify, first), queue(notify, second)

        done = deliver_until_settled(notify, one)

        assert [a.outcome for a in done] == ["disabled"]
        assert deliver(notify, two) is None  # cancelled: never sent
    assert len(receiver.requests) == 1
    found = store_of(notify).get_subscription("ops")
    assert not found.enabled
    assert found.disabled_reason is not None
    assert "410" in found.disabled_reason
    assert (notification(notify, one).status, notification(notify, two).status) == (
        "cancelled",
        "cancelled",
    )
    # and a disabled subscription is told of nothing new
    third = seed_incident(engine_of(notify), version, severities=[0.9], entity="c")
    assert queue(notify, third) == []


def test_a_4xx_fails_at_once_and_says_why(notify: Adapters) -> None:
    version = register_model(notify.store)
    incident = seed_incident(engine_of(notify), version, severities=[0.9])
    with WebhookReceiver("whsec_" + "A" * 32, answer=always(422)) as receiver:
        receiver.secret = subscribe(notify, receiver.url).secret
        [nid] = queue(notify, incident)

        done = deliver_until_settled(notify, nid)

    assert [(a.outcome, a.status_code) for a in done] == [("failed", 422)]
    row = notification(notify, nid)
    assert (row.status, row.attempts) == ("failed", 1)
    assert "HTTP 422" in row.last_error
    assert "not retried" in row.last_error
    assert [d.id for d in store_of(notify).deliveries(failed=True)] == [nid]


def test_a_timeout_is_retried(notify: Adapters) -> None:
    # Given a receiver slower than the 0.5 s timeout on the first request only
    version = register_model(notify.store)
    incident = seed_incident(engine_of(notify), version, severities=[0.9])
    slow_first = lambda _id, seen: 1.5 if seen == 0 else 0.0  # noqa: E731
    with WebhookReceiver("whsec_" + "A" * 32, delay=slow_first) as receiver:
        receiver.secret = subscribe(notify, receiver.url).secret
        [nid] = queue(notify, incident)

        done = deliver_until_settled(notify, nid)

        assert receiver.wait_until(lambda rs: len(rs) == 2, timeout=10)
    assert [a.outcome for a in done] == ["retried", "delivered"]
    assert done[0].status_code is None
    assert "timeout" in str(done[0].error)
    assert attempts(notify, nid) == [(1, None), (2, 200)]
    assert len({r.webhook_id for r in receiver.requests}) == 1


def test_giving_up_after_the_last_attempt_then_replay_sends_the_same_webhook_id(
    notify: Adapters,
) -> None:
    version = register_model(notify.store)
    incident = seed_incident(engine_of(notify), version, severities=[0.9])
    with WebhookReceiver("whsec_" + "A" * 32, answer=fail_first(503, times=4)) as receiver:
        receiver.secret = subscribe(notify, receiver.url).secret
        [nid] = queue(notify, incident)

        done = deliver_until_settled(notify, nid)
        assert [a.outcome for a in done] == ["retried"] * 3 + ["failed"]
        assert "gave up after 4 attempts" in notification(notify, nid).last_error

        # When an operator replays it
        replayed = store_of(notify).replay_notification(nid, now=datetime.now(UTC))
        again = deliver_until_settled(notify, nid)

    # Then it is sent once more, with the same id and body, and delivered
    assert replayed.status == "pending"
    assert replayed.attempts == 4
    assert [a.outcome for a in again] == ["delivered"]
    assert len({r.webhook_id for r in receiver.requests}) == 1
    assert len({r.body for r in receiver.requests}) == 1
    assert [r.status for r in receiver.requests] == [503] * 4 + [200]
    with pytest.raises(SubscriptionError, match="only failed or cancelled ones are replayed"):
        store_of(notify).replay_notification(nid, now=datetime.now(UTC))


def test_two_deliveries_of_one_message_post_once(notify: Adapters) -> None:
    # Given a receiver that holds each request for a while
    version = register_model(notify.store)
    incident = seed_incident(engine_of(notify), version, severities=[0.9])
    with WebhookReceiver("whsec_" + "A" * 32, delay=lambda _i, _s: 0.3) as receiver:
        receiver.secret = subscribe(notify, receiver.url).secret
        [nid] = queue(notify, incident)

        # When two workers run the same message at once
        results: list[Attempted | None] = []
        threads = [
            threading.Thread(target=lambda: results.append(deliver(notify, nid))) for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    # Then one posted and the other found it claimed
    assert sorted(r is None for r in results) == [False, True]
    assert len(receiver.requests) == 1


def test_one_delivery_of_many_notifications_posts_them_together_once_each(
    notify: Adapters,
) -> None:
    # Given three incidents for two subscriptions (six notifications), one of them
    # already delivered, and a receiver that answers the others only once all five are
    # in (so posting one after another would break its barrier after ten seconds)
    version = register_model(notify.store)
    incidents = [
        seed_incident(engine_of(notify), version, severities=[0.9], entity=e) for e in "abc"
    ]
    gate: list[threading.Barrier] = []
    broken: list[str] = []

    def wait_for_the_others(webhook_id: str, _seen: int) -> float:
        try:
            if gate:
                gate[0].wait()
        except threading.BrokenBarrierError:
            broken.append(webhook_id)
        return 0.0

    with WebhookReceiver("whsec_" + "A" * 32, delay=wait_for_the_others) as receiver:
        receiver.secret = subscribe(notify, receiver.url, name="ops").secret
        add_subscription(notify, name="oncall", url=receiver.url, secret=receiver.secret)
        ids = [nid for incident in incidents for nid in queue(notify, incident)]
        assert len(ids) == 6
        [first] = deliver_many(notify, ids[:1], draw=lambda: 0.0)
        gate.append(threading.Barrier(5, timeout=10))

        # When one delivery takes all six (the delivered one among them), and again
        done = deliver_many(notify, ids, draw=lambda: 0.0)
        again = deliver_many(notify, ids, draw=lambda: 0.0)

    # Then the five pending ones were in flight together, each posted once
    assert first.outcome == "delivered"
    assert sorted(a.notification_id for a in done) == sorted(ids[1:])
    assert {a.outcome for a in done} == {"delivered"}
    assert again == []
    assert broken == []
    assert len(receiver.requests) == 6
    assert len({r.webhook_id for r in receiver.requests}) == 6
    assert all(r.verified for r in receiver.requests)
    for nid in ids:
        assert notification(notify, nid).status == "delivered"
        assert len(attempts(notify, nid)) == 1


def test_the_sweep_resends_what_is_overdue_and_leaves_the_rest(notify: Adapters) -> None:
    version = register_model(notify.store)
    incidents = [
        seed_incident(engine_of(notify), version, severities=[0.9], entity=e) for e in "abc"
    ]
    subscribe(notify, "http://127.0.0.1:9/never")
    lost, due, later = (queue(notify, i)[0] for i in incidents)
    now = datetime.now(UTC)
    with engine_of(notify).begin() as conn:
        for nid, when in (
            (lost, now - timedelta(seconds=SWEEP_GRACE_SECONDS + 60)),
            (due, now - timedelta(seconds=1)),
            (later, now + timedelta(seconds=60)),
        ):
            conn.execute(
                update(NotificationRow)
                .where(NotificationRow.id == nid)
                .values(next_attempt_at=when)
            )
    sent: list[tuple[list[int], float]] = []

    swept = sweep(notify, lambda ids, countdown: sent.append((list(ids), countdown)))

    assert swept == [lost]
    assert sent == [([lost], 0.0)]
    assert sweep(notify, lambda ids, countdown: sent.append((list(ids), countdown))) == []


def test_subscription_errors_say_what_to_do(notify: Adapters) -> None:
    subscribe(notify, "https://example.test/hook")
    with pytest.raises(SubscriptionError, match="'subscriptions remove ops' first"):
        add_subscription(notify, name="ops", url="https://example.test/hook")
    with pytest.raises(SubscriptionError, match="no subscription called 'nope' \\(known: ops\\)"):
        store_of(notify).get_subscription("nope")
    with pytest.raises(SubscriptionError, match="scheme 'ftp'"):
        add_subscription(notify, name="x", url="ftp://example.test/")
    with pytest.raises(SubscriptionError, match="leave --secret out"):
        add_subscription(notify, name="x", url="https://example.test/", secret="whsec_abc")
    given = "whsec_" + "B" * 32
    stored, generated = add_subscription(notify, name="given", url="https://e.test/", secret=given)
    assert generated is None
    assert stored.secret == given
    assert [s.name for s in store_of(notify).list_subscriptions()] == ["given", "ops"]
    store_of(notify).remove_subscription("given")
    assert [s.name for s in store_of(notify).list_subscriptions()] == ["ops"]


def test_the_test_event_is_signed_and_answered(notify: Adapters) -> None:
    with WebhookReceiver("whsec_" + "A" * 32) as receiver:
        receiver.secret = subscribe(notify, receiver.url).secret

        webhook_id, result = send_test(notify, "ops")

    assert result.status_code == 200
    [request] = receiver.requests
    assert request.verified
    assert request.webhook_id == webhook_id
    assert request.payload["type"] == "com.pynomaly.test"
