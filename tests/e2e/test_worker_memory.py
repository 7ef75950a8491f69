"""A real worker's memory layout: heavy libraries loaded once in the main process (shared
by the pool), and training's exporter never left in a pool process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from pynomaly_workers.client import submit_detection, submit_training
from pynomaly_workers.demo import WorkerProcess, wait_for
from pynomaly_workers.services.context import Adapters
from tests.factories import rows_with_outliers, training_rows

pytestmark = pytest.mark.e2e

SKLEARN = "sklearn/tree/_tree"  # a scikit-learn extension that IsolationForest needs
ARROW = "libarrow.so"
EXPORTER = "onnx_cpp2py_export"  # the onnx package's extension, which skl2onnx imports


def pool_processes(parent: int) -> list[int]:
    """The worker's pool processes (its direct children)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(pid) for pid in children]


def mapped(pid: int, library: str) -> bool:
    """Whether process ``pid`` has ``library`` mapped into its memory."""
    return library in Path(f"/proc/{pid}/maps").read_text()


def test_heavy_libraries_are_loaded_before_the_pool_forks(worker: WorkerProcess) -> None:
    # Given a worker that has started its pool
    parent = worker.process.pid
    assert wait_for(lambda: len(pool_processes(parent)) == 2, timeout=30)

    # Then scikit-learn and Arrow are mapped in the main process, which never scores:
    # the pool processes share those pages instead of loading their own
    assert mapped(parent, SKLEARN)
    assert mapped(parent, ARROW)


def test_training_leaves_no_exporter_in_a_pool_process(
    worker: WorkerProcess, e2e_app: Celery, e2e_adapters: Adapters
) -> None:
    # Given a model trained through the worker, with an ONNX export (skl2onnx ran)
    submission = submit_training(model="memory", records=training_rows(), app=e2e_app)
    trained: dict[str, Any] = e2e_app.AsyncResult(submission.task_id).get(timeout=120)
    assert trained["onnx"]

    # When it scores (so a pool process has loaded it)
    job = submit_detection(model="memory", records=rows_with_outliers(), app=e2e_app)
    assert e2e_app.AsyncResult(job.task_id).get(timeout=60)["status"] == "succeeded"

    # Then no pool process has the exporter loaded: training ran in a child that ended
    pool = pool_processes(worker.process.pid)
    assert len(pool) == 2
    assert [pid for pid in pool if mapped(pid, EXPORTER)] == []
