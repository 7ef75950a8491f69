"""Jobs whose ``source`` is an object in S3-compatible storage, through real workers:
the anomalies of the same file read locally; fan-out over the pool; an object
overwritten mid-job fails the job once, with the reason."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from celery import Celery

from pynomaly_workers.client import submit_detection
from pynomaly_workers.contract import FAILED, SUCCEEDED
from pynomaly_workers.demo import WorkerProcess
from pynomaly_workers.services.context import Adapters
from tests import s3
from tests.e2e.test_cli import cli, cli_json
from tests.e2e.test_worker import wait_job
from tests.factories import rows_with_outliers, train, write_csv

pytestmark = pytest.mark.e2e
OUTLIERS = (0, 999, 1000, 2500, 4999)


@pytest.fixture(scope="module")
def e2e_env(e2e_env: dict[str, str], s3_endpoint: str) -> dict[str, str]:
    """The e2e worker's environment plus the test S3 server (chunks of 1,000 rows)."""
    return {**e2e_env, **s3.env(s3_endpoint)}


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str) -> tuple[str, Any]:
    name = f"e2e-{uuid.uuid4().hex[:12]}"
    return name, s3.bucket(s3_endpoint, name)


@pytest.fixture(scope="module")
def model(worker: WorkerProcess, e2e_adapters: Adapters) -> str:
    return train(e2e_adapters, model="s3").label


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = rows_with_outliers(n=5000, outliers=OUTLIERS, seed=3)
    return write_csv(tmp_path_factory.mktemp("s3src") / "rows.csv", rows, ids=True)


def upload(bucket: tuple[str, Any], key: str, body: bytes) -> str:
    name, client = bucket
    client.put_object(Bucket=name, Key=key, Body=body)
    return f"s3://{name}/{key}"


def anomalies(adapters: Adapters, job_id: str) -> list[tuple[int, str | None, float]]:
    found = adapters.store.list_anomalies(job_id=job_id, limit=100_000)
    return sorted((a.record_index, a.record_id, round(a.score, 6)) for a in found)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_an_object_job_finds_the_anomalies_of_the_same_local_file(
    model: str,
    source: Path,
    bucket: tuple[str, Any],
    e2e_app: Celery,
    e2e_adapters: Adapters,
    fmt: str,
) -> None:
    # Given the same 5,000 rows as a local file and as an object (five chunks each)
    local = source
    if fmt == "parquet":
        local = source.with_suffix(".parquet")
        pq.write_table(pacsv.read_csv(source), local, row_group_size=500)
    uri = upload(bucket, f"in/rows.{fmt}", local.read_bytes())

    # When both are sent to the workers
    on_disk = submit_detection(model=model, source=str(local), job_id=f"disk-{fmt}", app=e2e_app)
    on_s3 = submit_detection(model=model, source=uri, job_id=f"object-{fmt}", app=e2e_app)
    disk_job = wait_job(e2e_adapters, on_disk.job_id)
    object_job = wait_job(e2e_adapters, on_s3.job_id)

    # Then both succeed with exactly the same anomalies, and the result is the summary
    assert (disk_job.status, object_job.status) == (SUCCEEDED, SUCCEEDED), object_job.error
    assert object_job.n_records == 5000
    assert anomalies(e2e_adapters, on_s3.job_id) == anomalies(e2e_adapters, on_disk.job_id)
    assert set(OUTLIERS) <= {i for i, _, _ in anomalies(e2e_adapters, on_s3.job_id)}
    assert e2e_app.AsyncResult(on_s3.task_id).get(timeout=30) == object_job.summary


def test_an_object_overwritten_mid_job_fails_it_with_the_reason(
    model: str, bucket: tuple[str, Any], e2e_app: Celery, e2e_adapters: Adapters, tmp_path: Path
) -> None:
    # Given a 60,000-row object: sixty chunks for the two pool processes
    rows = rows_with_outliers(n=60_000, outliers=OUTLIERS, seed=4)
    body = write_csv(tmp_path / "big.csv", rows, ids=True).read_bytes()
    uri = upload(bucket, "big.csv", body)
    submission = submit_detection(model=model, source=uri, job_id="overwritten", app=e2e_app)

    # When it is overwritten as soon as the job is planned
    deadline = time.monotonic() + 60
    while (job := e2e_adapters.store.get_job("overwritten")) is None or not job.task_id:
        assert time.monotonic() < deadline, "the job was never planned"
        time.sleep(0.01)
    upload(bucket, "big.csv", body.replace(b"r1,", b"x1,"))

    # Then the job fails with the reason, keeps no anomalies, and the task says so too
    job = wait_job(e2e_adapters, "overwritten")
    assert job.status == FAILED
    assert "was overwritten while the job was reading it" in (job.error or "")
    assert anomalies(e2e_adapters, "overwritten") == []
    result = e2e_app.AsyncResult(submission.task_id)
    result.get(timeout=30, propagate=False)
    assert result.failed()


def test_the_cli_registers_an_object_as_a_dataset_and_detects_on_it(
    model: str, source: Path, bucket: tuple[str, Any], e2e_env: dict[str, str]
) -> None:
    # Given an object
    uri = upload(bucket, "cli/rows.csv", source.read_bytes())

    # When it is registered as a dataset and a job is run on it through the CLI
    dataset = cli_json(e2e_env, "datasets", "add", "s3-rows", uri)
    summary = cli_json(e2e_env, "detect", "--model", model, "--dataset", "s3-rows", "--wait")

    # Then the dataset keeps the object's URI, and the job scored every row
    assert (dataset["uri"], dataset["n_rows"], dataset["format"]) == (uri, 5000, "csv")
    assert (summary["status"], summary["n_records"]) == (SUCCEEDED, 5000)


def test_the_cli_says_what_is_wrong_with_a_missing_object(
    bucket: tuple[str, Any], e2e_env: dict[str, str]
) -> None:
    done = cli(e2e_env, "datasets", "add", "nope", f"s3://{bucket[0]}/missing.csv", check=False)

    assert done.returncode == 1
    assert f"no object 's3://{bucket[0]}/missing.csv': check the key" in done.stderr
