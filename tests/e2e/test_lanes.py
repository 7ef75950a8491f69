"""Mixed traffic on one default worker: small jobs never queue behind bulk work, bulk
work uses every core but one process, and a small file sent after a large one is not
served after all of it."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import Engine, text

from pynomaly_workers.adapters.stores.engine import build_engine
from pynomaly_workers.client import submit_detection
from pynomaly_workers.contract import DETECT_CHUNK_TASK, NOTIFICATIONS_QUEUE, PING_TASK
from pynomaly_workers.demo import WorkerProcess
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.settings import Settings
from tests.e2e.conftest import start_worker
from tests.e2e.test_worker import wait_job
from tests.factories import rows_with_outliers, train, write_csv

pytestmark = pytest.mark.e2e

CORES = len(os.sched_getaffinity(0))
ROWS_PER_CHUNK = 20_000
LARGE_CHUNKS = 30  # ~0.1-0.2 s each: seconds of bulk work queued ahead of what follows


@pytest.fixture(scope="module")
def e2e_env(e2e_env: dict[str, str]) -> dict[str, str]:
    """Chunks large enough that a FIFO queue would hold a small job for seconds."""
    return {**e2e_env, "PYNOMALY_CHUNK_ROWS": str(ROWS_PER_CHUNK)}


@pytest.fixture(scope="module")
def default_worker(
    e2e_env: dict[str, str], e2e_adapters: Adapters, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """A worker with the default pool (concurrency 0: one process per core plus one)."""
    process = start_worker(e2e_env, e2e_adapters, tmp_path_factory, concurrency=0)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def chunk_rows(e2e_settings: Settings) -> Iterator[Engine]:
    engine = build_engine(e2e_settings.database_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def lane_model(default_worker: WorkerProcess, e2e_adapters: Adapters, e2e_app: Celery) -> str:
    """A model every pool process has loaded (bursts of small jobs reach each one)."""
    label = train(e2e_adapters, model="lanes").label
    for _ in range(3):
        sent = [submit_detection(model=label, records=[[0.1] * 4], app=e2e_app) for _ in range(30)]
        for submission in sent:
            e2e_app.AsyncResult(submission.task_id).get(timeout=60)
    return label


@pytest.fixture(scope="module")
def large_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = rows_with_outliers(n=LARGE_CHUNKS * ROWS_PER_CHUNK, outliers=(5,), seed=7)
    return write_csv(tmp_path_factory.mktemp("lanes") / "large.csv", rows, ids=True)


@pytest.fixture(scope="module")
def small_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = rows_with_outliers(n=3 * ROWS_PER_CHUNK, outliers=(5,), seed=8)
    return write_csv(tmp_path_factory.mktemp("lanes") / "small.csv", rows, ids=True)


def chunks_started(engine: Engine, job_id: str, *, timeout: float = 30) -> None:
    """Wait until the job fanned out and its first chunks finished: the rest wait in
    the bulk queue."""
    deadline = time.monotonic() + timeout
    query = text("SELECT count(*) FROM detection_chunks WHERE job_id = :job")
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            if connection.execute(query, {"job": job_id}).scalar_one() >= 2:
                return
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not start its chunks in {timeout}s")


def test_a_one_record_job_never_waits_behind_a_files_chunks(
    lane_model: str,
    large_source: Path,
    e2e_app: Celery,
    e2e_adapters: Adapters,
    chunk_rows: Engine,
) -> None:
    # Given a file job whose chunks are queued ahead of everything sent next
    submit_detection(model=lane_model, source=str(large_source), job_id="lane-bulk-1", app=e2e_app)
    chunks_started(chunk_rows, "lane-bulk-1")

    # When one-record jobs arrive behind them
    latencies = []
    for _ in range(10):
        sent = time.time()
        submission = submit_detection(model=lane_model, records=[[0.1] * 4], app=e2e_app)
        e2e_app.AsyncResult(submission.task_id).get(timeout=60)
        latencies.append(time.time() - sent)

    # Then each was answered while the file was still being scored, in a fraction of
    # the time of the chunks ahead of it (FIFO made the first wait for all of them)
    assert e2e_adapters.store.get_job("lane-bulk-1").status == "running"  # type: ignore[union-attr]
    assert max(latencies) < 0.5, latencies
    job = wait_job(e2e_adapters, "lane-bulk-1", timeout=120)
    assert job.status == "succeeded"
    assert job.n_records == LARGE_CHUNKS * ROWS_PER_CHUNK


def test_bulk_work_uses_every_core_and_leaves_one_process(
    lane_model: str,
    large_source: Path,
    e2e_app: Celery,
    e2e_adapters: Adapters,
    chunk_rows: Engine,
) -> None:
    # Given a worker with one process per core plus one, and a file job of many chunks
    stats = e2e_app.control.inspect(timeout=2.0).stats() or {}
    assert [s["pool"]["max-concurrency"] for s in stats.values()] == [CORES + 1]
    submit_detection(model=lane_model, source=str(large_source), job_id="lane-bulk-2", app=e2e_app)
    chunks_started(chunk_rows, "lane-bulk-2")

    # When we watch what its pool runs
    seen: list[int] = []
    while e2e_adapters.store.get_job("lane-bulk-2").status == "running":  # type: ignore[union-attr]
        active = e2e_app.control.inspect(timeout=1.0).active() or {}
        running = [t for tasks in active.values() for t in tasks]
        seen.append(sum(1 for t in running if t["name"] == DETECT_CHUNK_TASK))

    # Then chunks ran on as many processes as there are cores, never on more
    assert seen
    assert max(seen) == CORES, seen
    assert wait_job(e2e_adapters, "lane-bulk-2").status == "succeeded"


def test_a_small_file_sent_after_a_large_one_overtakes_its_tail(
    lane_model: str,
    large_source: Path,
    small_source: Path,
    e2e_app: Celery,
    e2e_adapters: Adapters,
    chunk_rows: Engine,
) -> None:
    # Given a large file job already being scored
    submit_detection(model=lane_model, source=str(large_source), job_id="lane-big", app=e2e_app)
    chunks_started(chunk_rows, "lane-big")

    # When a three-chunk file job is sent after it
    submit_detection(model=lane_model, source=str(small_source), job_id="lane-late", app=e2e_app)
    late = wait_job(e2e_adapters, "lane-late", timeout=120)
    big = wait_job(e2e_adapters, "lane-big", timeout=120)

    # Then it finishes while the large one still has chunks to go (FIFO served it last)
    assert late.status == "succeeded"
    assert big.status == "succeeded"
    assert late.finished_at is not None
    assert big.finished_at is not None
    margin = (big.finished_at - late.finished_at).total_seconds()
    assert margin > 1.0, f"the late job finished only {margin:.2f}s before the large one"


def test_a_large_inline_job_is_forwarded_and_scored_once(
    lane_model: str, e2e_app: Celery, e2e_adapters: Adapters
) -> None:
    # Given a job of more inline records than PYNOMALY_SMALL_JOB_MAX_RECORDS (1,000)
    rows = rows_with_outliers(n=1500, outliers=(3, 700), seed=9)
    submission = submit_detection(model=lane_model, records=rows, job_id="lane-inline", app=e2e_app)

    # When the worker forwards it to the bulk lane
    result = e2e_app.AsyncResult(submission.task_id).get(timeout=60)

    # Then it ran there once, under its own task id, and its result reached the caller
    job = wait_job(e2e_adapters, "lane-inline")
    assert job.status == "succeeded"
    assert job.n_records == 1500
    assert result["n_records"] == 1500
    flagged = {a.record_index for a in e2e_adapters.store.list_anomalies(job_id="lane-inline")}
    assert {3, 700} <= flagged


def test_messages_waiting_for_their_eta_leave_the_bulk_slots_free(
    default_worker: WorkerProcess, lane_model: str, e2e_app: Celery, small_source: Path
) -> None:
    # Given more countdown messages on the lane's queues than it has slots (a webhook's
    # backoff, a retry's countdown): each held by the worker until its ETA, a minute away
    for _ in range(CORES + 2):
        e2e_app.send_task(PING_TASK, queue=NOTIFICATIONS_QUEUE, countdown=60)
    time.sleep(1.0)

    # When a file job comes (bulk work, on the same lane)
    started = time.monotonic()
    done = submit_detection(model=lane_model, source=str(small_source), app=e2e_app)
    summary = e2e_app.AsyncResult(done.task_id).get(timeout=40)

    # Then it runs at once, not after the ETAs
    assert summary["status"] == "succeeded"
    assert time.monotonic() - started < 30
