"""End to end: a real worker delivers incident notifications through the broker, retrying
a receiver that answers 500 first with the same webhook-id until it answers 200."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from typing import cast

import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from pynomaly_workers.adapters.stores.sql import SqlStore
from pynomaly_workers.adapters.stores.sql.notifications import queue_notifications
from pynomaly_workers.adapters.stores.tables import NotificationRow
from pynomaly_workers.demo import WorkerProcess, wait_for
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.services.notifications import add_subscription, dispatch
from pynomaly_workers.tasks.notifications import delivery_sender
from tests.webhooks import WebhookReceiver, fail_first, register_model, seed_incident

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def e2e_env(e2e_env: dict[str, str]) -> dict[str, str]:
    """The shared worker settings, with webhook retries a fraction of a second apart."""
    return {
        **e2e_env,
        "PYNOMALY_WEBHOOK_RETRY_BASE_SECONDS": "0.2",
        "PYNOMALY_WEBHOOK_RETRY_MAX_SECONDS": "1",
        "PYNOMALY_WEBHOOK_TIMEOUT_SECONDS": "5",
    }


@pytest.fixture
def receiver(e2e_adapters: Adapters) -> Iterator[WebhookReceiver]:
    with WebhookReceiver("whsec_" + "A" * 32, answer=fail_first(500)) as server:
        yield server
    # the session's database outlives this module: tell nobody else's incidents to it
    store = cast(SqlStore, e2e_adapters.store)
    if any(s.name == "e2e-hook" for s in store.list_subscriptions()):
        store.remove_subscription("e2e-hook")


def test_the_worker_retries_through_the_broker_until_the_receiver_accepts(
    worker: WorkerProcess,
    e2e_app: Celery,
    e2e_adapters: Adapters,
    e2e_env: dict[str, str],
    receiver: WebhookReceiver,
) -> None:
    # Given a subscription, and two incidents (opened, and opened then resolved)
    store = cast(SqlStore, e2e_adapters.store)
    _, secret = add_subscription(e2e_adapters, name="e2e-hook", url=receiver.url)
    receiver.secret = str(secret)
    version = register_model(store, "e2e-notify")
    first = seed_incident(store.engine, version, severities=[0.7, 0.9], entity="a")
    second = seed_incident(store.engine, version, severities=[0.8], entity="b")
    now = e2e_adapters.clock.now()
    with store.engine.begin() as conn:
        ids = [
            *queue_notifications(
                conn, incident_id=first, kind="opened", before_max=None, after_max=0.9, now=now
            ),
            *queue_notifications(
                conn, incident_id=second, kind="opened", before_max=None, after_max=0.8, now=now
            ),
        ]
        ids += queue_notifications(
            conn, incident_id=second, kind="resolved", before_max=None, after_max=0.8, now=now
        )
    assert len(ids) == 3

    # When incident upkeep would dispatch them after its commit
    dispatch(delivery_sender(e2e_app), ids)

    # Then each arrives once accepted, after one 500, always under its own webhook-id
    assert receiver.wait_until(lambda rs: sum(r.accepted for r in rs) == 3, timeout=60), (
        receiver.requests
    )
    assert all(r.verified for r in receiver.requests)
    per_id: dict[str, list[int]] = {}
    for request in receiver.requests:
        per_id.setdefault(request.webhook_id, []).append(request.status)
    assert sorted(per_id.values()) == [[500, 200]] * 3
    types = sorted(r.payload["type"] for r in receiver.requests if r.accepted)
    assert types == [
        "com.pynomaly.incident.opened",
        "com.pynomaly.incident.opened",
        "com.pynomaly.incident.resolved",
    ]
    # and the worker recorded both attempts of each, each notification delivered
    assert wait_for(lambda: _statuses(store, ids) == ["delivered"] * 3, timeout=10)
    notifications = e2e_adapters.notifications
    assert notifications is not None
    for notification_id in ids:
        recorded = notifications.attempts_of(notification_id)
        assert [(a["attempt"], a["status_code"]) for a in recorded] == [(1, 500), (2, 200)]
    # and the worker's /metrics counts every attempt by event and outcome
    port = e2e_env["PYNOMALY_METRICS_PORT"]
    expected = {
        ("opened", "retried"): 2.0,
        ("opened", "delivered"): 2.0,
        ("resolved", "retried"): 1.0,
        ("resolved", "delivered"): 1.0,
    }
    assert wait_for(lambda: _counted(port) == expected, timeout=10), _counted(port)


def _counted(port: str) -> dict[tuple[str, str], float]:
    """pynomaly_notifications_total by (event, outcome), from the worker's /metrics (the
    series still at 0, exported from the start, left out)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "pynomaly_notifications_total" and sample.value:
                found[(sample.labels["event"], sample.labels["outcome"])] = sample.value
    return found


def _statuses(store: SqlStore, ids: list[int]) -> list[str]:
    with store.engine.connect() as conn:
        return list(
            conn.scalars(
                select(NotificationRow.status)
                .where(NotificationRow.id.in_(ids))
                .order_by(NotificationRow.id)
            )
        )
