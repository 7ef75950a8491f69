"""Champion/challenger aliases through real workers: jobs sent to ``name@alias`` use the
version the alias points at, and a move or a rollback reaches new jobs within the
model-reference TTL."""

from __future__ import annotations

import time
import uuid

import pytest
from celery import Celery

from pynomaly_workers.client import submit_detection
from pynomaly_workers.demo import WorkerProcess
from pynomaly_workers.services.context import Adapters
from tests.e2e.test_cli import cli_json
from tests.factories import rows_with_outliers, train

pytestmark = pytest.mark.e2e
TTL_S = 1.0  # PYNOMALY_MODEL_REF_TTL_SECONDS default, which the e2e worker runs with


def version_used(app: Celery, model: str) -> int:
    """Send one job to ``model``; the version its summary reports."""
    sent = submit_detection(
        model=model,
        records=rows_with_outliers(n=20, outliers=(3,)),
        job_id=f"alias-{uuid.uuid4().hex}",
        app=app,
    )
    return int(app.AsyncResult(sent.task_id).get(timeout=60)["model_version"])


def seconds_until(app: Celery, model: str, version: int, *, timeout: float = 30) -> float:
    """How long until new jobs to ``model`` use ``version``."""
    started = time.monotonic()
    while version_used(app, model) != version:
        assert time.monotonic() - started < timeout, f"{model} never reached v{version}"
    return time.monotonic() - started


def test_jobs_follow_the_alias_as_it_moves_and_rolls_back(
    worker: WorkerProcess, e2e_app: Celery, e2e_adapters: Adapters, e2e_env: dict[str, str]
) -> None:
    # Given versions 1 and 2 of a model (2 is active) and champion on version 1
    train(e2e_adapters, model="ranked")
    train(e2e_adapters, model="ranked", params={"n_estimators": 30})
    moved = cli_json(e2e_env, "models", "alias", "ranked", "champion", "1")
    assert (moved["version"], moved["previous_version"]) == (1, None)

    # Then jobs sent to ranked@champion use version 1, and the bare name version 2
    assert version_used(e2e_app, "ranked@champion") == 1
    assert version_used(e2e_app, "ranked") == 2

    # When champion moves to version 2, new jobs use it within the reference TTL
    cli_json(e2e_env, "models", "alias", "ranked", "champion", "2")
    assert seconds_until(e2e_app, "ranked@champion", 2) <= TTL_S + 5

    # And a rollback takes them back to version 1
    back = cli_json(e2e_env, "models", "rollback", "ranked", "champion")
    assert (back["version"], back["previous_version"], back["action"]) == (1, 2, "rollback")
    assert seconds_until(e2e_app, "ranked@champion", 1) <= TTL_S + 5

    # And the history holds every move, newest first
    history = cli_json(e2e_env, "models", "history", "ranked")
    assert [(h["action"], h["version"]) for h in history] == [
        ("rollback", 1),
        ("set", 2),
        ("set", 1),
    ]
