"""A real worker's memory layout: heavy libraries loaded once in the main process (shared
by the pool), training's exporter never left in a pool process, and Arrow's allocator
keeping no arena resident after a read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from pynomaly_workers.client import submit_detection, submit_training
from pynomaly_workers.demo import WorkerProcess, wait_for
from pynomaly_workers.services.context import Adapters
from tests.e2e.test_worker import wait_job
from tests.factories import rows_with_outliers, training_rows, write_csv

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


def resident_in_huge_anonymous_mappings_mb(pid: int) -> float:
    """Resident MB in anonymous mappings of 512 MiB or more: address space an allocator
    reserved in one piece (mimalloc's eager arena is 1 GiB)."""
    resident, huge = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's header
            start, end = (int(bound, 16) for bound in fields[0].split("-"))
            huge = len(fields) < 6 and end - start >= 512 << 20
        elif fields[0] == "Rss:" and huge:
            resident += int(fields[1])
    return resident / 1024


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


def test_reading_a_csv_leaves_no_allocator_arena_resident(
    worker: WorkerProcess, e2e_app: Celery, e2e_adapters: Adapters, tmp_path: Path
) -> None:
    # Given a model, and a CSV source of a few thousand rows
    submit = submit_training(model="arena", records=training_rows(), app=e2e_app)
    e2e_app.AsyncResult(submit.task_id).get(timeout=120)
    source = write_csv(tmp_path / "arena.csv", rows_with_outliers(n=5000, seed=5))

    # When both pool processes have read it through Arrow (two jobs at once)
    for job_id in ("arena-1", "arena-2"):
        submit_detection(model="arena", source=str(source), job_id=job_id, app=e2e_app)
    for job_id in ("arena-1", "arena-2"):
        assert wait_job(e2e_adapters, job_id).status == "succeeded"

    # Then no pool process keeps pages resident in a huge reserved arena (mimalloc's
    # eager 1 GiB arena kept 15-20 MB per process, released or not)
    resident = {
        pid: resident_in_huge_anonymous_mappings_mb(pid)
        for pid in pool_processes(worker.process.pid)
    }
    assert len(resident) == 2
    assert max(resident.values()) < 2.0, f"MB resident by pool process: {resident}"
