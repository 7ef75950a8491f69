"""Scenario 7: the same job_id submitted at once by several producers: one job row, one
set of anomalies, one final status."""

from __future__ import annotations

import threading
import time

import pytest

from pynomaly_workers.client import client_app, close_app, submit_detection
from pynomaly_workers.contract import QUEUES
from pynomaly_workers.demo import wait_for
from tests.factories import rows_with_outliers, train
from tests.faults.conftest import (
    BROKERS,
    FaultBroker,
    FaultStack,
    count_jobs,
    report_outcome,
    wait_settled,
)
from tests.rabbitmq import RabbitVhost

pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("broker", BROKERS, indirect=True)]

PRODUCERS = 8
SENDS_EACH = 3
OUTLIERS = (3, 50, 120)


@pytest.mark.timeout(180)
def test_one_job_id_from_many_producers_is_one_job(
    fault_stack: FaultStack, broker: FaultBroker
) -> None:
    # Given a worker with two processes and eight producers, each with its own connection
    model = train(fault_stack.adapters, model="concurrent").label
    fault_stack.start_worker()
    rows = rows_with_outliers(outliers=OUTLIERS)
    job_ids = [f"concurrent-{n}" for n in range(5)]
    start = threading.Barrier(PRODUCERS)
    errors: list[BaseException] = []

    def produce() -> None:
        app = client_app(fault_stack.settings)
        try:
            start.wait()
            for _ in range(SENDS_EACH):
                for job_id in job_ids:
                    submit_detection(model=model, records=rows, job_id=job_id, app=app)
        except BaseException as exc:
            errors.append(exc)
        finally:
            close_app(app)

    # When all of them send the same five job ids three times, at the same moment
    sent_at = time.monotonic()
    threads = [threading.Thread(target=produce) for _ in range(PRODUCERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors

    # Then each job id is one succeeded row with one anomaly row per anomaly
    counts = wait_settled(fault_stack.adapters, job_ids, timeout=90)
    report_outcome(
        f"concurrent_job_id_{broker.kind}",
        job_ids,
        counts,
        recovery_seconds=None,
        extra={
            "messages_sent": PRODUCERS * SENDS_EACH * len(job_ids),
            "seconds": round(time.monotonic() - sent_at, 1),
        },
    )
    assert counts.succeeded() == set(job_ids), fault_stack.log_text()
    # ... also once every duplicate delivery has run and been acknowledged
    assert wait_for(broker.drained, timeout=60)
    counts = count_jobs(fault_stack.adapters, job_ids)
    assert counts.succeeded() == set(job_ids)
    assert counts.rows == dict.fromkeys(job_ids, 1)
    assert counts.duplicated() == set()
    found = fault_stack.adapters.store.list_anomalies(job_id=job_ids[0], limit=1000)
    assert set(OUTLIERS) <= {a.record_index for a in found}
    assert len(found) == len({a.record_index for a in found})
    if isinstance(broker, RabbitVhost):  # ... on the durable quorum queues the worker declared
        declared = broker.queues()
        assert {(declared[q]["type"], declared[q]["durable"]) for q in QUEUES} == {
            ("quorum", "true")
        }, declared
