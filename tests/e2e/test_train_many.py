"""``pynomaly.train_many`` through a real worker: one message, a version per good model, a
bad model failing alone, and the same message twice registering nothing twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from pynomaly_workers.client import submit_training_many, training_kwargs
from pynomaly_workers.demo import WorkerProcess
from pynomaly_workers.services.context import Adapters
from tests.factories import training_rows

pytestmark = pytest.mark.e2e
SMALL = {"n_estimators": 25}
MODELS = [
    training_kwargs(model="many-a", records=training_rows(), params=SMALL),
    training_kwargs(model="many-b", records=training_rows(5), params=SMALL),  # too few rows
    training_kwargs(model="many-c", records=training_rows(seed=3), params=SMALL),
]


def registered(adapters: Adapters) -> list[tuple[str, int]]:
    listed = adapters.store.list_models(match="many-")
    return [(m.name, m.version) for m in listed if m.name.startswith("many-")]


def run(app: Celery, task_id: str) -> dict[str, Any]:
    """Send the message under ``task_id`` and wait for this delivery's result."""
    app.AsyncResult(task_id).forget()  # the result of an earlier delivery is not this one
    submit_training_many(models=MODELS, task_id=task_id, app=app)
    return dict(app.AsyncResult(task_id).get(timeout=180))


def test_three_models_one_bad_twice(
    worker: WorkerProcess, e2e_app: Celery, e2e_adapters: Adapters
) -> None:
    # Given a worker, When three models (the second with 5 rows) are sent in one message
    task_id = str(uuid.uuid4())
    first = run(e2e_app, task_id)

    # Then two versions are registered and the bad model's failure says why
    assert registered(e2e_adapters) == [("many-a", 1), ("many-c", 1)]
    assert [m["status"] for m in first["models"]] == ["succeeded", "failed", "succeeded"]
    assert first["models"][1] == {
        "model": "many-b",
        "status": "failed",
        "error": "training needs at least 10 rows, got 5",
        "error_type": "invalid_records",
    }

    # When the same message is delivered again under its task id
    again = run(e2e_app, task_id)

    # Then it registered nothing: still two versions, the same ones returned
    assert registered(e2e_adapters) == [("many-a", 1), ("many-c", 1)]
    assert again == first
    log = worker.log_path.read_text()
    assert f"training task {task_id}:0 already registered many-a@1" in log
    assert f"training task {task_id}:2 already registered many-c@1" in log


def test_the_cli_sends_a_file_and_exits_1_naming_the_failed_model(
    worker: WorkerProcess, e2e_env: dict[str, str], e2e_adapters: Adapters, tmp_path: Path
) -> None:
    # Given a file of two models, one naming an unknown dataset
    models_file = tmp_path / "models.json"
    good = {"model": "cli-many", "records": training_rows(), "params": SMALL}
    models_file.write_text(json.dumps([good, {"model": "cli-many-2", "dataset": "nope"}]))

    # When it is sent with train-many (and --json: progress as JSON lines on stderr)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pynomaly_workers.cli",
            "train-many",
            "--file",
            str(models_file),
            "--json",
        ],
        env={**os.environ, **e2e_env},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )

    # Then the good model is registered, the bad one reported, and the exit code is 1
    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["n_succeeded"], summary["n_failed"]) == (1, 1)
    assert summary["models"][1]["error"].startswith("no dataset named 'nope'")
    assert "resend it with --task-id" in done.stderr
    # and its progress went to stderr, one JSON line per count, ending with 1 of 2 models
    progress = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert progress
    assert {p["unit"] for p in progress} == {"models"}
    assert (progress[-1]["chunks_done"], progress[-1]["chunks_total"]) == (1, 2)
    assert [m.version for m in e2e_adapters.store.list_models(name="cli-many")] == [1]
    assert e2e_adapters.store.list_models(name="cli-many-2") == []
