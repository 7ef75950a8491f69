"""Issue #21: resending jobs, killing a worker in the middle of incident upkeep and
restarting the broker under load produce no duplicate incident or notification and count
every anomaly once.

Jobs of ten entities, each job one outlier among 19 normal records, all within the
incident gap: exactly one incident per entity must come out, each counting exactly the
anomalies stored for its entity. "Mid-fold" is deterministic: the test holds the
advisory lock incident upkeep takes, so a fold waits inside its transaction (after it
claimed jobs from the inbox) when the pool processes are killed.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from pynomaly_workers.adapters.stores.sql.incidents import _LOCK_KEY
from pynomaly_workers.adapters.stores.tables import AnomalyRow, IncidentInboxRow, IncidentRow
from pynomaly_workers.client import publish, submit_detection
from pynomaly_workers.contract import FOLD_INCIDENTS_TASK
from pynomaly_workers.demo import wait_for
from pynomaly_workers.services.notifications import add_subscription
from tests.e2e.test_crash import pool_children
from tests.factories import engine_of, rows_with_outliers, train
from tests.faults.conftest import FaultStack, RedisServer, report_outcome, wait_settled
from tests.webhooks import WebhookReceiver

pytestmark = pytest.mark.e2e

ENTITIES = [f"pump-{i}" for i in range(10)]
T0 = datetime(2026, 12, 1, 6, tzinfo=UTC)
ROWS = rows_with_outliers(n=20, outliers=(7,))


def send(stack: FaultStack, model: str, indexes: range | list[int]) -> None:
    """Jobs ``inc-<index>``: 20 records of one entity, 20 s of record time apart."""
    for index in indexes:
        stamps = [(T0 + timedelta(seconds=index * 20 + i)).isoformat() for i in range(20)]
        submit_detection(
            model=model,
            job_id=f"inc-{index}",
            app=stack.app,
            records=ROWS,
            timestamps=stamps,
            entities=[ENTITIES[index % 10]] * 20,
        )


@contextmanager
def upkeep_locked(stack: FaultStack) -> Iterator[None]:
    """Hold incident upkeep's advisory lock until the block exits."""
    connection = engine_of(stack.adapters).connect()
    transaction = connection.begin()
    connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    try:
        yield
    finally:
        transaction.rollback()
        connection.close()


def fold_waiting(stack: FaultStack) -> bool:
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND query LIKE '%pg_advisory_xact_lock%' AND application_name = 'pynomaly-workers'"
    )
    with engine_of(stack.adapters).connect() as conn:
        return bool(conn.execute(query).scalar())


def inbox_empty(stack: FaultStack) -> bool:
    with engine_of(stack.adapters).connect() as conn:
        return conn.execute(select(func.count()).select_from(IncidentInboxRow)).scalar() == 0


@pytest.mark.timeout(300)
def test_no_duplicate_incident_under_resends_kills_and_a_broker_restart(
    fault_stack: FaultStack, broker_redis: RedisServer
) -> None:
    stack = fault_stack
    version = train(stack.adapters, model="inc-faults")
    model = version.label
    with WebhookReceiver("whsec_" + "B" * 32) as receiver:
        _, secret = add_subscription(
            stack.adapters, name="inc-faults-hook", url=receiver.url, model="inc-faults"
        )
        receiver.secret = str(secret)
        run_scenario(stack, broker_redis, version.id, model, receiver)


def run_scenario(
    stack: FaultStack,
    broker_redis: RedisServer,
    model_id: int,
    model: str,
    receiver: WebhookReceiver,
) -> None:
    stack.start_worker(name="first")
    started = time.monotonic()

    # Phase 1: 60 jobs, folded as they settle
    send(stack, model, range(60))
    assert wait_settled(stack.adapters, [f"inc-{i}" for i in range(60)], timeout=120)
    assert wait_for(lambda: inbox_empty(stack), timeout=30)

    # Phase 2: a fold waits inside its transaction, and every pool process is killed
    with upkeep_locked(stack):
        send(stack, model, range(60, 90))
        assert wait_for(lambda: fold_waiting(stack), timeout=30), stack.log_text()
        worker = stack.workers[-1]
        for child in pool_children(worker):
            os.kill(child, signal.SIGKILL)

    # Phase 3: Redis restarts while the worker works through 15 new jobs; 15 more are
    # sent after it, and 40 earlier ones are resent
    send(stack, model, range(90, 105))
    broker_redis.restart()
    send(stack, model, range(105, 120))
    send(stack, model, list(range(0, 120, 3)))

    # Then every job succeeds once, and after upkeep (beat's backstop fold, sent here)
    # the inbox is empty
    job_ids = [f"inc-{i}" for i in range(120)]
    counts = wait_settled(stack.adapters, job_ids, timeout=180)
    assert counts.succeeded() == set(job_ids), counts.status
    assert counts.duplicated() == set()
    publish(stack.app, FOLD_INCIDENTS_TASK, kwargs={})
    assert wait_for(lambda: inbox_empty(stack), timeout=60), stack.log_text()

    # And each entity has one incident, counting exactly its stored anomalies
    with engine_of(stack.adapters).connect() as conn:
        incidents = conn.execute(
            select(IncidentRow.entity, IncidentRow.anomaly_count, IncidentRow.status).where(
                IncidentRow.model_id == model_id
            )
        ).all()
        stored = dict(
            conn.execute(
                select(AnomalyRow.entity, func.count())
                .where(AnomalyRow.model_id == model_id)
                .group_by(AnomalyRow.entity)
            ).all()
        )
    by_entity = {entity: count for entity, count, _ in incidents}

    # And the subscriber was told of each incident's opening once: one webhook-id per
    # incident, accepted (a retry of the same id would be the same notification)
    assert receiver.wait_until(
        lambda rs: len({r.webhook_id for r in rs if r.accepted}) >= len(ENTITIES), timeout=60
    ), receiver.requests
    time.sleep(1)  # a duplicate would arrive within this
    accepted = [r for r in receiver.requests if r.accepted]
    ids_per_incident: dict[int, set[str]] = {}
    for request in accepted:
        incident_id = request.payload["data"]["incident"]["id"]
        ids_per_incident.setdefault(incident_id, set()).add(request.webhook_id)
    report_outcome(
        "incidents_resend_kill_restart",
        job_ids,
        counts,
        recovery_seconds=time.monotonic() - started,
        extra={
            "incidents": len(incidents),
            "entities": len(ENTITIES),
            "anomalies": sum(stored.values()),
            "anomalies_in_incidents": sum(by_entity.values()),
            "notifications_accepted": len(accepted),
            "webhook_ids": len({r.webhook_id for r in accepted}),
        },
    )
    assert len(incidents) == len(ENTITIES), incidents
    assert by_entity == stored
    assert {status for _, _, status in incidents} == {"open"}
    assert len(ids_per_incident) == len(ENTITIES)
    assert all(len(ids) == 1 for ids in ids_per_incident.values()), ids_per_incident
    assert {r.payload["type"] for r in accepted} == {"com.pynomaly.incident.opened"}
    assert all(r.verified for r in receiver.requests)
