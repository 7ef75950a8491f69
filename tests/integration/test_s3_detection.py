"""Detection jobs on objects in S3-compatible storage, through the services and a real
PostgreSQL: the anomalies of the same file read locally, fan-out included, and a job whose
object is overwritten between planning and a chunk fails cleanly."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from pynomaly_workers.bootstrap import bootstrap
from pynomaly_workers.contract import FAILED, RUNNING
from pynomaly_workers.domain.errors import InvalidSource
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.services.detection import (
    DetectMessage,
    FannedOut,
    detect_batch,
    run_chunk,
    run_detection,
)
from pynomaly_workers.settings import Settings
from tests import s3
from tests.factories import rows_with_outliers, train, write_csv

pytestmark = pytest.mark.integration
OUTLIERS = (0, 299, 300, 1234, 2499)


@pytest.fixture
def adapters(
    clean_pg: str, s3_endpoint: str, make_settings: Callable[..., Settings]
) -> Iterator[Adapters]:
    settings = make_settings(
        database_url=clean_pg,
        s3_endpoint_url=s3_endpoint,
        s3_region=s3.REGION,
        s3_access_key_id=s3.KEYS["access_key_id"],
        s3_secret_access_key=s3.KEYS["secret_access_key"],
    )
    built = bootstrap(settings)
    train(built)
    yield built
    built.close()


@pytest.fixture
def bucket(s3_endpoint: str) -> tuple[str, Any]:
    name = f"d-{uuid.uuid4().hex[:12]}"
    return name, s3.bucket(s3_endpoint, name)


def anomalies(adapters: Adapters, job_id: str) -> list[tuple[int, str | None, float]]:
    found = adapters.store.list_anomalies(job_id=job_id, limit=100_000)
    return sorted((a.record_index, a.record_id, round(a.score, 9)) for a in found)


def upload(bucket: tuple[str, Any], key: str, path: Path) -> str:
    name, client = bucket
    client.put_object(Bucket=name, Key=key, Body=path.read_bytes())
    return f"s3://{name}/{key}"


def as_parquet(csv_path: Path) -> Path:
    path = csv_path.with_suffix(".parquet")
    pq.write_table(pacsv.read_csv(csv_path), path, row_group_size=250)
    return path


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("chunk_rows", [100_000, 300], ids=["in-process", "fanned-out"])
def test_an_object_gives_the_anomalies_of_the_same_local_file(
    adapters: Adapters, bucket: tuple[str, Any], tmp_path: Path, fmt: str, chunk_rows: int
) -> None:
    # Given one 2,500-row file, on disk and as an object
    local = write_csv(tmp_path / "s.csv", rows_with_outliers(n=2500, outliers=OUTLIERS), ids=True)
    if fmt == "parquet":
        local = as_parquet(local)
    uri = upload(bucket, f"in/s.{fmt}", local)
    scoped = dataclasses.replace(
        adapters, settings=adapters.settings.model_copy(update={"chunk_rows": chunk_rows})
    )

    # When both are scored
    from_disk = run_detection(scoped, {"model": "m", "source": str(local)}, default_job_id="disk")
    from_s3 = run_detection(scoped, {"model": "m", "source": uri}, default_job_id="object")

    # Then the same rows are anomalies, with the same ids and scores
    assert anomalies(adapters, "object") == anomalies(adapters, "disk")
    assert {i for i, _, _ in anomalies(adapters, "object")} >= set(OUTLIERS)
    assert (from_s3.n_records, from_s3.n_anomalies) == (from_disk.n_records, from_disk.n_anomalies)
    job = adapters.store.get_job("object")
    assert job is not None
    assert job.attempts == 1


def test_an_object_overwritten_mid_job_fails_the_job_cleanly(
    adapters: Adapters, bucket: tuple[str, Any], tmp_path: Path
) -> None:
    # Given a job on an object, planned into chunks, and its first chunk scored
    local = write_csv(tmp_path / "s.csv", rows_with_outliers(n=2500, outliers=OUTLIERS), ids=True)
    uri = upload(bucket, "s.csv", local)
    scoped = dataclasses.replace(
        adapters, settings=adapters.settings.model_copy(update={"chunk_rows": 300})
    )
    (fanned,) = detect_batch(scoped, [DetectMessage("task-1", {"model": "m", "source": uri})])
    assert isinstance(fanned, FannedOut)
    first = run_chunk(scoped, fanned.chunks[0])
    assert (first.job.status, first.final) == (RUNNING, None)

    # When the object is overwritten before the next chunk is read
    write_csv(local, rows_with_outliers(n=2600, seed=5), ids=True)
    upload(bucket, "s.csv", local)
    second = run_chunk(scoped, fanned.chunks[1])

    # Then the job fails once, says why, and keeps no anomalies of the old version
    assert second.final is not None
    assert second.job.status == FAILED
    assert "was overwritten while the job was reading it" in (second.job.error or "")
    assert second.job.error_type == InvalidSource.code
    assert anomalies(adapters, "task-1") == []
    late = run_chunk(scoped, fanned.chunks[2])
    assert (late.job.status, late.final) == (FAILED, None)


def test_a_dataset_can_be_an_object(
    adapters: Adapters, bucket: tuple[str, Any], tmp_path: Path
) -> None:
    local = write_csv(tmp_path / "s.csv", rows_with_outliers(n=500), ids=True)
    uri = upload(bucket, "datasets/s.csv", local)
    described = adapters.sources.describe(uri)
    adapters.store.register_dataset(
        dataclasses.replace(described, name="sensors"), now=adapters.clock.now()
    )

    summary = run_detection(adapters, {"model": "m", "dataset": "sensors"}, default_job_id="ds")

    assert adapters.store.get_dataset("sensors").uri == uri
    assert summary.n_records == 500
    assert {3, 50, 120} <= {i for i, _, _ in anomalies(adapters, "ds")}
