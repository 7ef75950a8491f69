"""The bulk job again, its source an object in S3-compatible storage.

The server is moto's, in this benchmark process, on the same two cores as the workers:
a pure-Python server, so ``ratio_to_local`` is a floor for what real object storage
(or MinIO) would give, measured in the same run as the local-file job.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery import Celery

from benchmarks.bulk import run_bulk
from benchmarks.stack import Stack
from pynomaly_workers.adapters.sources.blobs import S3Options, s3_client

REGION = "us-east-1"
KEYS = {"access_key_id": "bench", "secret_access_key": "bench"}


@contextmanager
def object_store() -> Iterator[str]:
    """An S3 server on a free loopback port; yields its endpoint."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def worker_env(endpoint: str) -> dict[str, str]:
    """What a worker needs to read the benchmark's objects."""
    return {
        "PYNOMALY_S3_ENDPOINT_URL": endpoint,
        "PYNOMALY_S3_REGION": REGION,
        "PYNOMALY_S3_ACCESS_KEY_ID": KEYS["access_key_id"],
        "PYNOMALY_S3_SECRET_ACCESS_KEY": KEYS["secret_access_key"],
    }


def upload(endpoint: str, source: Path) -> str:
    """Put ``source`` into a fresh bucket; its ``s3://`` URI."""
    client = s3_client(S3Options(endpoint_url=endpoint, region=REGION, **KEYS))
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    client.upload_file(str(source), bucket, source.name)
    return f"s3://{bucket}/{source.name}"


def run_bulk_s3(
    stack: Stack,
    app: Celery,
    *,
    endpoint: str,
    model: str,
    source: Path,
    rows: int,
    worker_pid: int,
) -> dict[str, Any]:
    """The bulk job on the same CSV, read from object storage."""
    uri = upload(endpoint, source)
    measured = run_bulk(stack, app, model=model, source=uri, rows=rows, worker_pid=worker_pid)
    return {**measured["job"], "server": "moto (in the benchmark process)", "uri": uri}
