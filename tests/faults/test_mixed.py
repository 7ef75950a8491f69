"""Mixed traffic under each fault: a fanned-out bulk job (a source file of several
chunks) runs together with a stream of one-record ``pynomaly.detect`` jobs while (1) a
pool process running a chunk is killed with SIGKILL, (2) the worker gets SIGTERM mid-chunk
and a new worker takes over, (3) the broker restarts mid-chunk.

"Mid-chunk" is a condition, never a sleep: some but not all of the bulk job's
``detection_chunks`` rows exist, and the worker itself reports a ``pynomaly.detect.chunk``
task running (remote control ``active``), whichever queue it came from. Nothing here reads
a queue by name.

What must hold: every job ends ``succeeded`` with one job row; the bulk job has one chunk
row per planned chunk, their records add up to the file's, and its anomalies are, record
by record, those of the same file scored afterwards by a job with no fault; each
one-record job wrote its one anomaly once. Chunk executions are counted from the worker
logs (Celery's ``succeeded`` line per task id) and reported, with the figures of the
other scenarios.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import text

from pynomaly_workers.client import submit_detection
from pynomaly_workers.contract import DETECT_CHUNK_TASK
from pynomaly_workers.demo import WorkerProcess, wait_for
from tests.e2e.test_crash import pool_children, wait_until_gone
from tests.factories import engine_of, rows_with_outliers, train, write_csv
from tests.faults.conftest import (
    FaultStack,
    JobCounts,
    RedisServer,
    report_outcome,
    wait_settled,
)
from tests.faults.load import Producer

pytestmark = pytest.mark.e2e

CHUNK_ROWS = 50_000
BULK_ROWS = 400_000  # 8 chunks
BULK_OUTLIERS = tuple(range(7, BULK_ROWS, 9_973))  # a few in every chunk
SMALL_RECORD = [[8.0, 8.0, 8.0, 8.0]]  # far out: each small job stores one anomaly
SMALL_RATE = 20.0  # one-record jobs per second


@pytest.fixture(scope="module")
def bulk_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CSV of ``BULK_ROWS`` rows with outliers spread over every chunk."""
    rows = rows_with_outliers(n=BULK_ROWS, outliers=BULK_OUTLIERS, seed=11)
    return write_csv(tmp_path_factory.mktemp("mixed") / "bulk.csv", rows)


@dataclass(frozen=True)
class Bulk:
    """The bulk job of a scenario: its id, model and source file."""

    job_id: str
    model: str
    source: Path

    def submit(self, stack: FaultStack, job_id: str | None = None) -> None:
        """Publish the source job (``job_id`` for a second job of the same file)."""
        submit_detection(
            model=self.model, source=str(self.source), job_id=job_id or self.job_id, app=stack.app
        )


@pytest.fixture
def bulk(fault_stack: FaultStack, bulk_source: Path, request: pytest.FixtureRequest) -> Bulk:
    """Workers of this scenario split the file into chunks of ``CHUNK_ROWS``; the model
    every job of the scenario is scored by."""
    fault_stack.env["PYNOMALY_CHUNK_ROWS"] = str(CHUNK_ROWS)
    name = request.node.name.split("[")[0].removeprefix("test_")[:40]
    model = train(fault_stack.adapters, model=f"mixed-{name}").label
    return Bulk(job_id=f"bulk-{name}", model=model, source=bulk_source)


def small_stream(stack: FaultStack, model: str, prefix: str, n: int) -> Producer:
    """``n`` one-record jobs, published at ``SMALL_RATE`` per second from now on."""
    job_ids = [f"{prefix}-{i}" for i in range(n)]
    return Producer(
        stack.settings, model=model, rows=SMALL_RECORD, job_ids=job_ids, rate=SMALL_RATE
    ).start()


# -- what the database holds -----------------------------------------------------------


@dataclass(frozen=True)
class ChunkRows:
    """The bulk job's planned chunk count and its ``detection_chunks`` rows."""

    planned: int | None
    rows: int
    records: int


def chunk_rows(stack: FaultStack, job_id: str) -> ChunkRows:
    """Chunks planned for ``job_id`` and the chunk rows stored, counted by the database."""
    with engine_of(stack.adapters).connect() as conn:
        planned = conn.execute(
            text("SELECT chunks_total FROM detection_jobs WHERE job_id = :j"), {"j": job_id}
        ).scalar()
        rows, records = conn.execute(
            text(
                "SELECT count(*), coalesce(sum(n_records), 0) FROM detection_chunks "
                "WHERE job_id = :j"
            ),
            {"j": job_id},
        ).one()
    return ChunkRows(planned=planned, rows=int(rows), records=int(records))


def mid_bulk(stack: FaultStack, job_id: str) -> bool:
    """True while some but not all of the job's chunks are stored."""
    state = chunk_rows(stack, job_id)
    return state.planned is not None and 0 < state.rows < state.planned


def anomalies_by_record(stack: FaultStack, job_id: str) -> list[tuple[int, float, float]]:
    """(record index, score, severity) of each anomalous record of ``job_id``."""
    query = text(
        "SELECT record_index, score, severity FROM anomalies WHERE job_id = :j "
        "ORDER BY record_index"
    )
    with engine_of(stack.adapters).connect() as conn:
        return [(int(r[0]), float(r[1]), float(r[2])) for r in conn.execute(query, {"j": job_id})]


def attempts_of(stack: FaultStack, job_ids: list[str]) -> dict[str, int]:
    """How many times each job was claimed or settled (``detection_jobs.attempts``)."""
    query = text("SELECT job_id, attempts FROM detection_jobs WHERE job_id = ANY(:ids)")
    with engine_of(stack.adapters).connect() as conn:
        return {str(r[0]): int(r[1]) for r in conn.execute(query, {"ids": job_ids})}


# -- what the workers report -----------------------------------------------------------


def running_chunks(stack: FaultStack) -> dict[str, int]:
    """Task id -> pool process pid of each chunk task a live worker reports running."""
    live = sum(1 for worker in stack.workers if worker.alive())
    inspect = stack.app.control.inspect(timeout=5, limit=live)
    replies: dict[str, list[Any]] = dict(inspect.active() or {})
    return {
        str(task["id"]): int(task["worker_pid"])
        for tasks in replies.values()
        for task in tasks
        if task.get("name") == DETECT_CHUNK_TASK
    }


def chunk_log(stack: FaultStack, event: str) -> Counter[str]:
    """How often each chunk task id was logged as ``event`` (Celery's ``received`` per
    delivery, ``succeeded`` per finished execution), over every worker log."""
    line = re.compile(rf"Task {re.escape(DETECT_CHUNK_TASK)}\[([0-9a-f-]+)\] {event}")
    found: Counter[str] = Counter()
    for log in stack.logs.glob("*.log"):
        found.update(line.findall(log.read_text()))
    return found


# -- the verdict -----------------------------------------------------------------------


def settle_mixed(
    stack: FaultStack,
    *,
    name: str,
    bulk: Bulk,
    small: list[str],
    since: float,
    extra: dict[str, Any],
    timeout: float = 120,
) -> JobCounts:
    """Wait for every job, score the file again with no fault, record the figures under
    ``name`` and check that nothing was lost or written twice."""
    everything = [bulk.job_id, *small]
    counts = wait_settled(stack.adapters, everything, timeout=timeout)
    recovery = time.monotonic() - since
    chunks = chunk_rows(stack, bulk.job_id)
    deliveries, executions = chunk_log(stack, "received"), chunk_log(stack, "succeeded")
    attempts = attempts_of(stack, small)
    reference_id = f"{bulk.job_id}-reference"
    bulk.submit(stack, reference_id)
    reference = wait_settled(stack.adapters, [reference_id], timeout=180)
    report_outcome(
        name,
        everything,
        counts,
        recovery_seconds=recovery,
        extra={
            **extra,
            "chunks_planned": chunks.planned,
            "chunk_rows": chunks.rows,
            "bulk_anomalies": counts.anomaly_rows.get(bulk.job_id, 0),
            "reference_anomalies": reference.anomaly_rows.get(reference_id, 0),
            "chunk_deliveries": sum(deliveries.values()),
            "chunk_redeliveries": sum(n - 1 for n in deliveries.values()),
            "chunk_executions_logged": sum(executions.values()),
            "chunk_executions_duplicated": sum(n - 1 for n in executions.values()),
            "small_settles_beyond_first": sum(attempts.values()) - len(attempts),
        },
    )
    missing = [j for j in everything if j not in counts.succeeded()]
    assert not missing, (
        f"{len(missing)} jobs did not succeed: "
        f"{[(j, counts.status.get(j), counts.error.get(j)) for j in missing[:10]]}; "
        f"chunks {chunks}\n{stack.log_text()}"
    )
    assert counts.duplicated() == set()
    assert reference.succeeded() == {reference_id}, stack.log_text()
    # every planned chunk stored once, covering every record of the file once
    assert chunks == ChunkRows(
        planned=BULK_ROWS // CHUNK_ROWS, rows=BULK_ROWS // CHUNK_ROWS, records=BULK_ROWS
    )
    # the same anomalies, scores and severities as the fault-free job, and as many as the
    # job reported (one row per record is the unique key's, not asserted)
    faulted = anomalies_by_record(stack, bulk.job_id)
    expected = anomalies_by_record(stack, reference_id)
    assert [a[0] for a in faulted] == [e[0] for e in expected]
    assert [a[1:] for a in faulted] == [pytest.approx(e[1:]) for e in expected]
    assert set(BULK_OUTLIERS) <= {a[0] for a in faulted}
    # each one-record job stored its one anomaly once, written by one settle
    assert all(counts.anomaly_rows.get(j) == 1 for j in small)
    assert set(attempts.values()) == {1}
    return counts


def waiting_messages(server: RedisServer) -> int:
    """Messages waiting in any queue of the broker (every list in its database 0)."""
    client = redis.Redis(port=server.port)
    try:
        return sum(int(client.llen(key)) for key in client.scan_iter(_type="list"))
    finally:
        client.close()


def chunk_running_mid_bulk(stack: FaultStack, job_id: str) -> dict[str, int]:
    """Wait until the bulk job is mid-way and a worker reports chunk tasks running;
    their task ids and pool pids."""
    running: dict[str, int] = {}

    def seen() -> bool:
        running.clear()
        if mid_bulk(stack, job_id):
            running.update(running_chunks(stack))
        return bool(running)

    assert wait_for(seen, timeout=90, interval=0.05), stack.log_text()
    return running


def kill_a_running_chunk(
    stack: FaultStack, worker: WorkerProcess, job_id: str
) -> tuple[str, float]:
    """SIGKILL the pool process of a chunk task the worker reports running, mid-bulk;
    again if that chunk had finished in the meantime. The killed task id, and when."""
    for _attempt in range(5):
        task_id, pid = next(iter(chunk_running_mid_bulk(stack, job_id).items()))
        assert pid in pool_children(worker)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_until_gone([pid])
        if not chunk_log(stack, "succeeded")[task_id]:
            return task_id, killed_at
    raise AssertionError(f"every chunk finished before its process was killed\n{stack.log_text()}")


# -- the scenarios ---------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_killing_the_pool_process_running_a_chunk_loses_and_duplicates_nothing(
    fault_stack: FaultStack, bulk: Bulk
) -> None:
    # Given a worker scoring a bulk file while one-record jobs stream in
    worker = fault_stack.start_worker(name="killed-pool")
    stream = small_stream(fault_stack, bulk.model, "kill-small", 100)
    bulk.submit(fault_stack)

    # When the pool process running one of its chunks is killed with SIGKILL, mid-chunk
    killed, killed_at = kill_a_running_chunk(fault_stack, worker, bulk.job_id)
    stream.join(60)

    # Then the chunk runs again on a new process, and every job succeeds once
    settle_mixed(
        fault_stack,
        name="mixed_kill_pool_process_redis",
        bulk=bulk,
        small=stream.job_ids,
        since=killed_at,
        extra={"killed_chunk_deliveries": chunk_log(fault_stack, "received")[killed]},
    )
    # the killed chunk was delivered again and finished once, by another process
    assert chunk_log(fault_stack, "received")[killed] == 2
    assert chunk_log(fault_stack, "succeeded")[killed] == 1
    assert worker.alive()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_warm_shutdown_mid_chunk_then_a_new_worker_loses_and_duplicates_nothing(
    fault_stack: FaultStack, bulk: Bulk
) -> None:
    # Given a worker scoring a bulk file while one-record jobs stream in
    worker = fault_stack.start_worker(name="stopping")
    stream = small_stream(fault_stack, bulk.model, "sigterm-small", 200)
    bulk.submit(fault_stack)

    # When its main process gets SIGTERM while it runs a chunk
    chunk_running_mid_bulk(fault_stack, bulk.job_id)
    os.kill(worker.process.pid, signal.SIGTERM)
    assert wait_for(lambda: "Warm shutdown" in worker.log_path.read_text(), timeout=30)
    assert wait_for(lambda: not worker.alive(), timeout=120), fault_stack.log_text()
    stopped_at = time.monotonic()
    left = chunk_rows(fault_stack, bulk.job_id)
    assert left.planned is not None
    assert left.rows < left.planned  # chunks are left for the new worker

    # Then a new worker completes the bulk job and every small job, each once
    fault_stack.start_worker(name="replacement")
    stream.join(60)
    settle_mixed(
        fault_stack,
        name="mixed_warm_shutdown_redis",
        bulk=bulk,
        small=stream.job_ids,
        since=stopped_at,
        extra={"chunks_before_stop": left.rows},
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_broker_restart_mid_chunk_loses_and_duplicates_nothing(
    fault_stack: FaultStack, broker_redis: RedisServer, bulk: Bulk
) -> None:
    # Given a worker scoring a bulk file, one-record jobs sent around it
    fault_stack.start_worker(name="restart")
    before = small_stream(fault_stack, bulk.model, "restart-small-a", 40)
    before.join(10)
    bulk.submit(fault_stack)

    # When the broker restarts mid-chunk, once the worker holds every message (a BRPOP
    # answer on the wire as the server stops is lost, README; with the bulk lane taking
    # one chunk per slot, that is while its last chunks run), and jobs keep coming
    def held_mid_bulk() -> bool:
        return mid_bulk(fault_stack, bulk.job_id) and waiting_messages(broker_redis) == 0

    assert wait_for(held_mid_bulk, timeout=90, interval=0.02), fault_stack.log_text()
    during = chunk_rows(fault_stack, bulk.job_id).rows
    broker_redis.restart()
    back_at = time.monotonic()
    after = small_stream(fault_stack, bulk.model, "restart-small-b", 40)

    # Then consumption resumes and every job succeeds once
    after.join(60)
    counts = settle_mixed(
        fault_stack,
        name="mixed_broker_restart_redis",
        bulk=bulk,
        small=[*before.job_ids, *after.job_ids],
        since=back_at,
        extra={
            "chunks_before_restart": during,
        },
        # reconnect back-off (2, 4, 6 ... s) and the rest of the bulk job, well within;
        # far short of the visibility timeout that would hide a stranded delivery
        timeout=90,
    )
    assert set(broker_redis.unacked_job_ids()) <= counts.succeeded()
    assert all(w.alive() for w in fault_stack.workers)
