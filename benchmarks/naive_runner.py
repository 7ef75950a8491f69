"""Starting the per-record baseline's worker and timing it over N records."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import text

from benchmarks import naive
from benchmarks.config import NAIVE_DB, ROOT
from benchmarks.stack import Stack
from benchmarks.stats import rate

BOOT_TIMEOUT = 60.0


def naive_config(stack: Stack) -> naive.NaiveConfig:
    """The baseline's own Redis database for broker and cache, the suite's schema."""
    url = stack.endpoints.redis_db(NAIVE_DB)
    return naive.NaiveConfig(broker_url=url, cache_url=url, database_url=stack.database_url)


@contextmanager
def naive_worker(stack: Stack, config: naive.NaiveConfig) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m celery -A benchmarks.naive worker -c N``, always stopped afterwards
    (``-c 0``: Celery's default, one process per core)."""
    env = {
        **os.environ,
        "BENCH_NAIVE_BROKER_URL": config.broker_url,
        "BENCH_NAIVE_CACHE_URL": config.cache_url,
        "BENCH_NAIVE_DATABASE_URL": config.database_url,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "celery", "-A", "benchmarks.naive", "worker"]
    command += ["-c", str(stack.sizes.worker_concurrency), "-Q", naive.QUEUE]
    command += ["-n", "naive@%h", "--loglevel", "WARNING"]
    log_path = stack.folder / "logs" / "naive-worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield process
        finally:
            _stop(process)


def _stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def send_records(
    config: naive.NaiveConfig, *, job_id: str, model: str, records: Sequence[list[float]]
) -> None:
    """One task per record, as the guide does."""
    app = naive.create_app(config)
    try:
        with app.producer_or_acquire() as producer:
            for index, record in enumerate(records):
                app.send_task(
                    naive.TASK_NAME,
                    kwargs={
                        "job_id": job_id,
                        "model": model,
                        "record_index": index,
                        "record": record,
                    },
                    queue=naive.QUEUE,
                    producer=producer,
                )
    finally:
        app.close()


def wait_done(stack: Stack, expected: int, *, timeout: float) -> int:
    """Poll the baseline's done counter until it reaches ``expected``."""
    deadline = time.monotonic() + timeout
    with stack.redis(NAIVE_DB) as client:
        done = int(client.get(naive.DONE_KEY) or 0)
        while done < expected and time.monotonic() < deadline:
            time.sleep(0.01)
            done = int(client.get(naive.DONE_KEY) or 0)
    return done


def count_anomalies(stack: Stack, job_id: str) -> int:
    """Anomalies the baseline wrote for ``job_id``."""
    with stack.engine.connect() as conn:
        query = text("SELECT count(*) FROM anomalies WHERE job_id = :job_id")
        return int(conn.execute(query, {"job_id": job_id}).scalar_one())


def run_naive(
    stack: Stack,
    config: naive.NaiveConfig,
    *,
    model: str,
    records: Sequence[list[float]],
    warmup: Sequence[list[float]],
) -> dict[str, Any]:
    """Warm the running baseline up, then time ``records``, one task each."""
    send_records(config, job_id="naive-warmup", model=model, records=warmup)
    if wait_done(stack, len(warmup), timeout=BOOT_TIMEOUT) < len(warmup):
        raise RuntimeError("the naive baseline's worker did not answer; see its log")
    with stack.redis(NAIVE_DB) as client:
        client.delete(naive.DONE_KEY)
    job_id = f"naive-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    send_records(config, job_id=job_id, model=model, records=records)
    done = wait_done(stack, len(records), timeout=stack.sizes.patience(len(records) / 20))
    seconds = time.perf_counter() - started
    return {
        "records": done,
        "sent": len(records),
        "seconds": round(seconds, 3),
        "records_per_s": rate(done, seconds),
        "anomalies": count_anomalies(stack, job_id),
        "pattern": "one task per record, pickle GET/SET per item, ORM insert+commit per anomaly",
    }
