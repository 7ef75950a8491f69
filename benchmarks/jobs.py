"""Publishing jobs and reading back when they finished."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery
from kombu import Queue
from sqlalchemy import Engine, text

from pynomaly_workers.client import client_app, submit_detection
from pynomaly_workers.contract import FAILED, FINAL_STATUSES, QUEUES, ROUTES, SUCCEEDED
from pynomaly_workers.domain.ports import JobRecord
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.settings import Settings

FINISHED = FINAL_STATUSES


@dataclass(frozen=True, slots=True)
class Sent:
    """One published job: its id and the wall-clock time just before ``send_task``."""

    job_id: str
    task_id: str
    sent_at: float


@dataclass(frozen=True, slots=True)
class Finished:
    """When a job started and finished, per the ``detection_jobs`` row."""

    status: str
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: float | None


@contextmanager
def publisher(settings: Settings) -> Iterator[Celery]:
    """The project's client, publishing the way an upstream service in another language
    does: it neither subscribes to each task's result nor sends a ``task-sent`` event
    (the worker still stores every result and sends its own events). Both cost the
    publisher a Redis command per task on the same two cores as the workers."""
    app = client_app(settings)
    app.conf.update(result_backend="disabled", task_send_sent_event=False)
    try:
        yield app
    finally:
        app.close()


@contextmanager
def result_client(settings: Settings) -> Iterator[Celery]:
    """The project's own client, with the result backend (for ``AsyncResult.get``)."""
    app = client_app(settings)
    try:
        yield app
    finally:
        gc.collect()  # finalise AsyncResults now: they unsubscribe through the backend
        backend: Any = app.backend
        pubsub = getattr(backend.result_consumer, "_pubsub", None)
        if pubsub is not None:
            pubsub.close()
        backend.client.close()
        app.close()


def send_detection(app: Celery, *, job_id: str, model: str, **inputs: Any) -> Sent:
    """Publish ``pynomaly.detect`` through the project's client helper."""
    sent_at = time.time()
    submission = submit_detection(model=model, job_id=job_id, app=app, **inputs)
    return Sent(job_id=submission.job_id, task_id=submission.task_id, sent_at=sent_at)


def wait_job(adapters: Adapters, job_id: str, *, timeout: float) -> JobRecord:
    """Poll the job record until it succeeded or failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = adapters.store.get_job(job_id)
        if job is not None and job.status in FINISHED:
            return job
        time.sleep(0.02)
    raise JobTimeout(f"job {job_id} did not finish within {timeout:.0f}s")


def finished_count(engine: Engine, prefix: str) -> int:
    """How many jobs whose id starts with ``prefix`` have finished, in one query."""
    query = text(
        "SELECT count(*) FROM detection_jobs "
        "WHERE job_id LIKE :pattern AND status IN (:done, :given_up)"
    )
    with engine.connect() as conn:
        return int(
            conn.execute(
                query, {"pattern": f"{prefix}%", "done": SUCCEEDED, "given_up": FAILED}
            ).scalar_one()
        )


def wait_prefix(engine: Engine, prefix: str, *, expected: int, timeout: float) -> int:
    """Poll until ``expected`` jobs with the prefix finished (or time runs out)."""
    deadline = time.monotonic() + timeout
    done = finished_count(engine, prefix)
    while done < expected and time.monotonic() < deadline:
        time.sleep(0.05)
        done = finished_count(engine, prefix)
    return done


def finished_jobs(engine: Engine, prefix: str) -> dict[str, Finished]:
    """Status and timings of every job whose id starts with ``prefix``."""
    query = text(
        "SELECT job_id, status, started_at, finished_at, duration_ms FROM detection_jobs "
        "WHERE job_id LIKE :pattern"
    )
    with engine.connect() as conn:
        rows = conn.execute(
            query, {"pattern": f"{prefix}%", "done": SUCCEEDED, "given_up": FAILED}
        ).all()
    return {row[0]: Finished(row[1], row[2], row[3], row[4]) for row in rows}


def purge_queues(app: Celery) -> int:
    """Drop every message still queued on the contract's queues: the public ones and
    those its routes name (an internal queue of fan-out chunks among them), each with
    its Redis priority lists. Returns how many messages were dropped."""
    names = sorted({*QUEUES, *(route["queue"] for route in ROUTES.values())})
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        return sum(int(Queue(name, channel=channel).purge() or 0) for name in names)


class JobTimeout(RuntimeError):
    """A job did not finish in the time the measurement allows."""
