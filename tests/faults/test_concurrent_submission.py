"""Scenario 7: the same job_id submitted at once by several producers: one execution's
result, settled once, with the anomalies a fault-free run of the same records finds.

(One row per job_id and per anomaly record is what the unique keys guarantee; it is not
what this asserts.)"""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import text

from pynomaly_workers.client import client_app, close_app, submit_detection
from pynomaly_workers.contract import QUEUES
from pynomaly_workers.demo import wait_for
from tests.factories import engine_of, rows_with_outliers, train
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


def anomalies_of(stack: FaultStack, job_id: str) -> list[tuple[int, float, float]]:
    """(record index, score, severity) of each anomaly stored for ``job_id``."""
    query = text(
        "SELECT record_index, score, severity FROM anomalies WHERE job_id = :j "
        "ORDER BY record_index"
    )
    with engine_of(stack.adapters).connect() as conn:
        return [(int(r[0]), float(r[1]), float(r[2])) for r in conn.execute(query, {"j": job_id})]


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
    assert not [t for t in threads if t.is_alive()], "a producer still sends after 60 s"
    assert not errors, errors

    # Then each job id succeeds
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
    # ... also once every duplicate delivery has run and been acknowledged: each job was
    # settled by one execution (a later delivery found it final and changed nothing), and
    # holds exactly the anomalies, scores and severities of one fault-free run
    assert wait_for(broker.drained, timeout=60)
    reference = "concurrent-reference"
    submit_detection(model=model, records=rows, job_id=reference, app=fault_stack.app)
    assert wait_settled(fault_stack.adapters, [reference], timeout=60).succeeded() == {reference}
    expected = anomalies_of(fault_stack, reference)
    assert set(OUTLIERS) <= {index for index, _, _ in expected}
    counts = count_jobs(fault_stack.adapters, job_ids)
    assert counts.succeeded() == set(job_ids)
    assert counts.attempts == dict.fromkeys(job_ids, 1)
    assert counts.n_anomalies == dict.fromkeys(job_ids, len(expected))
    assert counts.duplicated() == set()
    for job_id in job_ids:
        found = anomalies_of(fault_stack, job_id)
        assert [a[0] for a in found] == [e[0] for e in expected], job_id
        assert [a[1:] for a in found] == [pytest.approx(e[1:]) for e in expected], job_id
    if isinstance(broker, RabbitVhost):  # ... on the durable quorum queues the worker declared
        declared = broker.queues()
        assert {(declared[q]["type"], declared[q]["durable"]) for q in QUEUES} == {
            ("quorum", "true")
        }, declared
