"""An S3-compatible server on loopback (moto's, in this process) for the tests."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pynomaly_workers.adapters.sources.blobs import S3Options, s3_client

REGION = "us-east-1"
KEYS = {"access_key_id": "testing", "secret_access_key": "testing"}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@contextmanager
def moto_server(host: str = "127.0.0.1") -> Iterator[str]:
    """A running S3 server on ``host``; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port(host)
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def options(endpoint: str) -> S3Options:
    """How the workers reach the test server."""
    return S3Options(endpoint_url=endpoint, region=REGION, **KEYS)


def env(endpoint: str) -> dict[str, str]:
    """The same, as a worker's PYNOMALY_* environment."""
    return {
        "PYNOMALY_S3_ENDPOINT_URL": endpoint,
        "PYNOMALY_S3_REGION": REGION,
        "PYNOMALY_S3_ACCESS_KEY_ID": KEYS["access_key_id"],
        "PYNOMALY_S3_SECRET_ACCESS_KEY": KEYS["secret_access_key"],
    }


def client(endpoint: str) -> Any:
    """A boto3 client for arranging buckets and objects."""
    return s3_client(options(endpoint))


def bucket(endpoint: str, name: str, *, versioned: bool = False) -> Any:
    """Create ``name`` (empty) and return a client."""
    s3 = client(endpoint)
    s3.create_bucket(Bucket=name)
    if versioned:
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return s3
