"""Sources in S3-compatible object storage (a real S3 server on loopback): the same rows
as the same file read locally, pinned to one object version, and errors that say what to
fix."""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError

from pynomaly_workers.adapters.sources import ArrowSourceReader
from pynomaly_workers.adapters.sources.blobs import S3Options, SourceUnavailable, s3_error
from pynomaly_workers.domain.errors import InvalidSource
from tests import s3
from tests.unit.test_sources import (
    LAYOUTS,
    Layout,
    joined_ids,
    joined_times,
    matrix,
    stacked,
    write_parquet,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def reader(s3_endpoint: str, tmp_path: Path) -> ArrowSourceReader:
    """Objects on the test endpoint, and the local twins the tests write under tmp_path."""
    return ArrowSourceReader(allowed_roots=(tmp_path,), s3=s3.options(s3_endpoint))


@pytest.fixture
def bucket(s3_endpoint: str) -> tuple[str, Any]:
    """A fresh, empty bucket and a client to fill it."""
    name = f"b-{uuid.uuid4().hex[:12]}"
    return name, s3.bucket(s3_endpoint, name)


def put(bucket: tuple[str, Any], key: str, body: bytes) -> str:
    name, client = bucket
    client.put_object(Bucket=name, Key=key, Body=body)
    return f"s3://{name}/{key}"


def planned(reader: ArrowSourceReader, uri: str, chunk_rows: int) -> list[Any]:
    plan = reader.plan(uri, chunk_rows=chunk_rows)
    return [
        reader.read_chunk(uri, spec, columns=plan.columns, pin=plan.pin) for spec in plan.chunks
    ]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_csv_object_reads_like_the_same_local_file(
    reader: ArrowSourceReader, bucket: tuple[str, Any], tmp_path: Path, layout: Layout
) -> None:
    # Given the same CSV as a local file and as an object
    text = layout.text().encode()
    local = tmp_path / "rows.csv"
    local.write_bytes(text)
    uri = put(bucket, "in/rows.csv", text)

    # When both are planned and read chunk by chunk, and streamed
    for chunk_rows in (7, 50):
        from_s3 = planned(reader, uri, chunk_rows)
        from_disk = planned(reader, str(local), chunk_rows)
        streamed = list(reader.read_chunks(uri, chunk_rows=chunk_rows))

        # Then they hold the same rows at the same offsets
        assert [(c.offset, len(c.matrix)) for c in from_s3] == [
            (c.offset, len(c.matrix)) for c in from_disk
        ]
        np.testing.assert_array_equal(stacked(from_s3), stacked(from_disk))
        np.testing.assert_array_equal(stacked(streamed), matrix())
        assert joined_ids(from_s3) == joined_ids(from_disk)
        assert joined_times(from_s3) == joined_times(from_disk)


def test_a_parquet_object_reads_like_the_same_local_file(
    reader: ArrowSourceReader, bucket: tuple[str, Any], tmp_path: Path
) -> None:
    local = write_parquet(tmp_path / "rows.parquet", row_group_size=4)
    uri = put(bucket, "rows.parquet", local.read_bytes())

    from_s3 = planned(reader, uri, chunk_rows=8)
    from_disk = planned(reader, str(local), chunk_rows=8)

    assert len(from_s3) == len(from_disk) > 1
    np.testing.assert_array_equal(stacked(from_s3), stacked(from_disk))
    assert joined_ids(from_s3) == joined_ids(from_disk)
    assert joined_times(from_s3) == joined_times(from_disk)
    np.testing.assert_array_equal(stacked(list(reader.read_chunks(uri, chunk_rows=5))), matrix())


def test_describe_keeps_the_object_uri(reader: ArrowSourceReader, bucket: tuple[str, Any]) -> None:
    uri = put(bucket, "rows.csv", Layout(ids=True).text().encode())

    described = reader.describe(uri)

    assert (described.uri, described.format, described.n_rows, described.n_features) == (
        uri,
        "csv",
        len(matrix()),
        3,
    )


def test_an_object_overwritten_after_planning_fails_clearly(
    reader: ArrowSourceReader, bucket: tuple[str, Any]
) -> None:
    # Given a planned object in an unversioned bucket
    uri = put(bucket, "rows.csv", Layout().text().encode())
    plan = reader.plan(uri, chunk_rows=7)
    read = reader.read_chunk(uri, plan.chunks[0], columns=plan.columns, pin=plan.pin)
    assert len(read.matrix) == 7

    # When it is overwritten before the other chunks are read
    put(bucket, "rows.csv", Layout(header=False).text().encode())

    # Then reading any chunk of the old plan fails, saying what happened and what to do
    with pytest.raises(InvalidSource, match="was overwritten while the job was reading it"):
        reader.read_chunk(uri, plan.chunks[1], columns=plan.columns, pin=plan.pin)


def test_a_versioned_object_is_read_at_the_planned_version(
    reader: ArrowSourceReader, s3_endpoint: str
) -> None:
    # Given a planned object in a versioned bucket
    name = f"v-{uuid.uuid4().hex[:12]}"
    client = s3.bucket(s3_endpoint, name, versioned=True)
    client.put_object(Bucket=name, Key="rows.csv", Body=Layout().text().encode())
    uri = f"s3://{name}/rows.csv"
    plan = reader.plan(uri, chunk_rows=7)
    assert plan.pin is not None
    assert plan.pin.startswith("version:")

    # When a new version replaces it mid-job
    client.put_object(Bucket=name, Key="rows.csv", Body=b"x,y,z\n9,9,9\n")

    # Then every chunk still reads the version the job was planned on
    chunks = [reader.read_chunk(uri, s, columns=plan.columns, pin=plan.pin) for s in plan.chunks]
    np.testing.assert_array_equal(stacked(chunks), matrix())


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3://no-such-bucket-pyn/rows.csv", "bucket 'no-such-bucket-pyn' does not exist"),
        ("s3://{bucket}/missing.csv", "no object 's3://.*/missing.csv': check the key"),
        ("s3://{bucket}", "name one object as s3://bucket/key"),
        ("s3://{bucket}/folder/", "name one object as s3://bucket/key"),
        ("s3://{bucket}/rows.json", "the key must end in .csv or .parquet"),
    ],
)
def test_user_errors_say_what_to_fix(
    reader: ArrowSourceReader, bucket: tuple[str, Any], uri: str, message: str
) -> None:
    with pytest.raises(InvalidSource, match=message):
        reader.plan(uri.format(bucket=bucket[0]), chunk_rows=10)


def test_an_unreachable_endpoint_is_transient() -> None:
    # Given storage that does not answer (nothing listens on the port)
    with s3.moto_server() as endpoint:
        pass
    reader = ArrowSourceReader(
        allowed_roots=(), s3=S3Options(endpoint_url=endpoint, **s3.KEYS, region="x")
    )

    # Then the error is one the tasks retry, not a failed job
    with pytest.raises(SourceUnavailable, match="did not answer"):
        reader.plan("s3://bucket/rows.csv", chunk_rows=10)


def test_a_malformed_endpoint_is_a_setting_to_fix() -> None:
    reader = ArrowSourceReader(allowed_roots=(), s3=S3Options(endpoint_url="not a url", **s3.KEYS))

    with pytest.raises(InvalidSource, match="PYNOMALY_S3_ENDPOINT_URL 'not a url'"):
        reader.plan("s3://bucket/rows.csv", chunk_rows=10)


@pytest.mark.parametrize(
    ("code", "status", "expected", "message"),
    [
        ("AccessDenied", 403, InvalidSource, "was denied .*s3:GetObject"),
        ("InvalidAccessKeyId", 403, InvalidSource, "PYNOMALY_S3_ACCESS_KEY_ID"),
        ("PreconditionFailed", 412, InvalidSource, "was overwritten"),
        ("SlowDown", 503, SourceUnavailable, "answered SlowDown"),
        ("InternalError", 500, SourceUnavailable, "answered InternalError"),
    ],
)
def test_storage_answers_map_to_clear_errors(
    code: str, status: int, expected: type[Exception], message: str
) -> None:
    answer: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    error = s3_error(ClientError(answer, "GetObject"), "s3://b/k.csv")
    assert isinstance(error, expected)
    with pytest.raises(expected, match=message):
        raise error


def test_parquet_footer_and_row_groups_are_read_by_ranges(
    reader: ArrowSourceReader, bucket: tuple[str, Any]
) -> None:
    # A larger Parquet object: only the footer and the planned row groups are fetched
    buffer = io.BytesIO()
    import pyarrow as pa

    table = pa.table({f"f{i}": np.random.default_rng(i).normal(size=20_000) for i in range(4)})
    pq.write_table(table, buffer, row_group_size=2_500)
    uri = put(bucket, "big.parquet", buffer.getvalue())

    chunks = planned(reader, uri, chunk_rows=5_000)

    assert [c.offset for c in chunks] == [0, 5_000, 10_000, 15_000]
    np.testing.assert_array_equal(stacked(chunks), np.column_stack(table.columns))
