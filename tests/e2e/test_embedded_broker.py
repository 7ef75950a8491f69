"""The embedded file-system broker keeps its exchange tables under the embedded home, so a
stale ``./control`` folder in the working directory cannot copy a job into other queues."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from pynomaly_workers.bootstrap import bootstrap
from pynomaly_workers.client import client_app, close_app, submit_detection
from pynomaly_workers.demo import WorkerProcess, wait_for
from pynomaly_workers.migrate import upgrade
from pynomaly_workers.settings import Settings
from tests.factories import rows_with_outliers, train

pytestmark = pytest.mark.e2e

# The table once committed as control/detection.exchange: routing key 'detection' bound to
# every queue.
STALE_TABLE = [["detection", "", q] for q in ("maintenance", "training", "detection")]


def publish_to_exchange(app: Celery, kwargs: dict[str, Any]) -> None:
    """What a non-Celery producer does: a protocol-2 message to the 'detection' exchange."""
    task_id = str(uuid.uuid4())
    headers = {"lang": "py", "task": "pynomaly.detect", "id": task_id, "root_id": task_id}
    body = [[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    with app.connection_for_write() as connection:
        connection.Producer(serializer="json").publish(
            body, exchange="detection", routing_key="detection", headers=headers
        )


def queued(settings: Settings) -> list[str]:
    """The queue of each message waiting in the embedded broker."""
    return sorted(p.name.split(".")[-2] for p in (settings.broker_folder / "queue").glob("*.msg"))


def test_a_job_published_by_queue_or_by_exchange_runs_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a working directory holding a stale exchange table, and the embedded default
    workdir = tmp_path / "workdir"
    (workdir / "control").mkdir(parents=True)
    (workdir / "control" / "detection.exchange").write_text(json.dumps(STALE_TABLE))
    monkeypatch.chdir(workdir)
    env = {"PYNOMALY_HOME": str(tmp_path / "home"), "PYNOMALY_ENVIRONMENT": "test"}
    settings = Settings(home=tmp_path / "home", environment="test")
    upgrade(settings.resolved_database_url)
    adapters = bootstrap(settings)
    model = train(adapters, model="routing").label
    app = client_app(settings)
    rows = rows_with_outliers(n=20, outliers=(3,))

    # When one job is published by queue name and one to the 'detection' exchange by name
    submit_detection(model=model, records=rows, job_id="by-queue", app=app)
    publish_to_exchange(app, {"job_id": "by-exchange", "model": model, "records": rows})

    # Then each is one message on the detection queue, and the tables live in the home
    assert queued(settings) == ["detection", "detection"]
    assert (settings.broker_folder / "control" / "detection.exchange").exists()
    assert json.loads((workdir / "control" / "detection.exchange").read_text()) == STALE_TABLE

    # And a worker started in that directory runs each once and leaves nothing queued
    worker = WorkerProcess(
        log_path=tmp_path / "worker.log",
        env={**os.environ, **env, "PYNOMALY_METRICS_PORT": "0"},
    )
    try:

        def statuses() -> list[str | None]:
            jobs = [adapters.store.get_job(job_id) for job_id in ("by-queue", "by-exchange")]
            return [job.status if job else None for job in jobs]

        finished = wait_for(lambda: statuses() == ["succeeded"] * 2, timeout=90)
        assert finished, (tmp_path / "worker.log").read_text()[-3000:]
        assert wait_for(lambda: not queued(settings), timeout=30), queued(settings)
        attempts = [adapters.store.get_job(j).attempts for j in ("by-queue", "by-exchange")]  # type: ignore[union-attr]
        assert attempts == [1, 1]
    finally:
        worker.stop()
        close_app(app)
        adapters.close()
