"""A source job larger than one chunk fans out over the worker pool and completes once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from pynomaly_workers.client import submit_detection
from pynomaly_workers.demo import WorkerProcess
from pynomaly_workers.services.context import Adapters
from tests.e2e.test_worker import wait_job
from tests.factories import rows_with_outliers, train, write_csv

pytestmark = pytest.mark.e2e
OUTLIERS = (0, 999, 1000, 2500, 4999)


@pytest.fixture(scope="module")
def big_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = rows_with_outliers(n=5000, outliers=OUTLIERS, seed=3)
    return write_csv(tmp_path_factory.mktemp("src") / "big.csv", rows, ids=True)


@pytest.fixture(scope="module")
def fan_model(worker: WorkerProcess, e2e_adapters: Adapters) -> str:
    return train(e2e_adapters, model="fan").label


def anomalies_of(adapters: Adapters, job_id: str) -> list[tuple[int, float]]:
    found = adapters.store.list_anomalies(job_id=job_id, limit=100_000)
    return sorted((a.record_index, round(a.score, 6)) for a in found)


def test_a_chunked_source_job_writes_exactly_the_unchunked_anomalies(
    fan_model: str, big_source: Path, e2e_app: Celery, e2e_adapters: Adapters
) -> None:
    # Given a 5,000-row source and chunks of 1,000 rows
    submission = submit_detection(
        model=fan_model, source=str(big_source), job_id="fan-1", app=e2e_app
    )

    # When the workers score it in five chunks
    job = wait_job(e2e_adapters, "fan-1")

    # Then one job succeeded, its anomalies counted once, its summary the task's result
    assert job.status == "succeeded", job.error
    assert job.n_records == 5000
    stored: dict[str, Any] = e2e_adapters.store.get_job("fan-1").summary or {}  # type: ignore[union-attr]
    assert set(OUTLIERS) <= {
        a.record_index for a in e2e_adapters.store.list_anomalies(job_id="fan-1", limit=10_000)
    }
    assert len(anomalies_of(e2e_adapters, "fan-1")) == job.n_anomalies
    result = e2e_app.AsyncResult(submission.task_id).get(timeout=30)
    assert result == stored
    assert result["top_anomalies"][0]["record_id"].startswith("r")
    # every anomaly was explained where it was scored, by the file's column names
    found = e2e_adapters.store.list_anomalies(job_id="fan-1", limit=10_000)
    names = {f"f{i}" for i in range(4)}
    assert all(a.explanation and a.explanation["top"][0]["feature"] in names for a in found)
    assert result["top_anomalies"][0]["explanation"]["method"] == "isolation_path"


def test_a_resent_fan_out_job_counts_every_chunk_once(
    fan_model: str, big_source: Path, e2e_app: Celery, e2e_adapters: Adapters
) -> None:
    for _ in range(2):
        submit_detection(model=fan_model, source=str(big_source), job_id="fan-2", app=e2e_app)
    job = wait_job(e2e_adapters, "fan-2")

    assert job.status == "succeeded"
    assert job.n_records == 5000
    assert len(anomalies_of(e2e_adapters, "fan-2")) == job.n_anomalies
    assert anomalies_of(e2e_adapters, "fan-2") == anomalies_of(e2e_adapters, "fan-1")


def test_bad_data_in_one_chunk_fails_the_whole_job_and_keeps_no_anomalies(
    fan_model: str, tmp_path: Path, e2e_app: Celery, e2e_adapters: Adapters
) -> None:
    rows = rows_with_outliers(n=3000, outliers=(5,), seed=4)
    rows[2222][1] = float("nan")
    path = write_csv(tmp_path / "bad.csv", rows)

    submission = submit_detection(model=fan_model, source=str(path), job_id="fan-bad", app=e2e_app)
    job = wait_job(e2e_adapters, "fan-bad")

    assert job.status == "failed"
    assert "record 2222" in (job.error or "")
    assert anomalies_of(e2e_adapters, "fan-bad") == []
    result = e2e_app.AsyncResult(submission.task_id)
    result.get(timeout=30, propagate=False)
    assert result.state == "FAILURE"
