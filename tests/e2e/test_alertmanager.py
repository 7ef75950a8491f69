"""A real worker runs ``pynomaly.notifications.alertmanager`` when asked: the incident's
alert reaches a real Alertmanager, and resolving it ends the alert."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import update

from pynomaly_workers.adapters.stores.tables import IncidentRow
from pynomaly_workers.demo import WorkerProcess
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.services.health import check_health
from pynomaly_workers.settings import Settings
from pynomaly_workers.tasks.alerting import request_sync
from tests.alertmanager import (
    Alertmanager,
    add_incident,
    add_model,
    running_alertmanager,
    wait_until,
)
from tests.factories import engine_of

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alertmanager]:
    with running_alertmanager(tmp_path_factory.mktemp("alertmanager")) as manager:
        yield manager


@pytest.fixture(scope="module")
def alerting_worker(
    e2e_env: dict[str, str],
    e2e_adapters: Adapters,
    alertmanager: Alertmanager,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WorkerProcess]:
    """A worker on every queue (notifications included) that posts to the Alertmanager."""
    log = Path(tmp_path_factory.mktemp("logs")) / "worker.log"
    env = {**os.environ, **e2e_env, "PYNOMALY_ALERTMANAGER_URL": alertmanager.url}
    process = WorkerProcess(log_path=log, concurrency=2, env=env)
    report = check_health(e2e_adapters, queues=["detection", "notifications"], timeout=60)
    if not report["ok"]:
        process.stop()
        pytest.fail(f"worker did not answer: {report}; log:\n{log.read_text()[-3000:]}")
    yield process
    process.stop()


def test_a_worker_posts_the_incident_and_ends_it_on_resolve(
    alerting_worker: WorkerProcess,
    alertmanager: Alertmanager,
    e2e_adapters: Adapters,
    e2e_app: Celery,
    e2e_settings: Settings,
    e2e_env: dict[str, str],
) -> None:
    # Given an open incident, and the settings incident upkeep sees
    engine = engine_of(e2e_adapters)
    incident_id = add_incident(engine, add_model(engine, name="e2e-am"))
    settings = e2e_settings.model_copy(update={"alertmanager_url": alertmanager.url})

    # (other modules' incidents share the session's database: look at this one's only)
    def mine() -> list[dict[str, Any]]:
        return [a for a in alertmanager.alerts() if a["labels"]["model"] == "e2e-am"]

    def told(status: str) -> list[dict[str, Any]]:
        return [
            n
            for n in alertmanager.receiver.received()
            if n["status"] == status
            and any(a["labels"].get("model") == "e2e-am" for a in n.get("alerts", []))
        ]

    # When incident upkeep asks for a sync
    assert request_sync(e2e_app, settings)

    # Then the worker posts it: Alertmanager holds the alert, the receiver is told
    (alert,) = wait_until(mine, what="the alert in Alertmanager")
    assert alert["labels"]["incident_id"] == str(incident_id)
    assert alert["labels"]["model"] == "e2e-am"
    wait_until(lambda: told("firing"), what="a firing notification")

    # When the incident is resolved and a sync asked for
    with engine.begin() as conn:
        now = datetime.now(UTC)
        conn.execute(
            update(IncidentRow)
            .where(IncidentRow.id == incident_id)
            .values(status="resolved", resolved_at=now, updated_at=now)
        )
    assert request_sync(e2e_app, settings)

    # Then the alert ends and the receiver is told it resolved
    wait_until(lambda: mine() == [], what="the alert to end")
    wait_until(lambda: told("resolved"), what="a resolved notification")
    # and the worker counted both posts
    url = f"http://127.0.0.1:{e2e_env['PYNOMALY_METRICS_PORT']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        page = response.read().decode()
    assert 'pynomaly_alertmanager_posts_total{outcome="sent"} 2.0' in page
