"""Real worker processes on Redis + PostgreSQL, started per test module."""

from __future__ import annotations

import gc
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from pynomaly_workers.bootstrap import bootstrap
from pynomaly_workers.client import client_app, close_app
from pynomaly_workers.demo import WorkerProcess
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.services.health import check_health
from pynomaly_workers.settings import Settings
from tests.conftest import REDIS_URL, _require_redis

BROKER_DB, RESULTS_DB, CACHE_DB = 12, 13, 14


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def finished_lines(log: Path) -> list[str]:
    """The non-blank lines of a worker's ``log``; a last line without its newline is
    still being written, and is left for the next read."""
    written, _, _ = log.read_text().rpartition("\n")
    return [line for line in written.splitlines() if line.strip()]


def redis_db(db: int) -> str:
    return f"{REDIS_URL.rstrip('/')}/{db}"


@pytest.fixture(scope="module")
def e2e_env(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """PYNOMALY_* variables pointing a worker at Redis + PostgreSQL."""
    _require_redis()
    for db in (BROKER_DB, RESULTS_DB, CACHE_DB):
        with redis.Redis.from_url(redis_db(db)) as client:
            client.flushdb()
    return {
        "PYNOMALY_BROKER_URL": redis_db(BROKER_DB),
        "PYNOMALY_RESULT_BACKEND": redis_db(RESULTS_DB),
        "PYNOMALY_CACHE_URL": redis_db(CACHE_DB),
        "PYNOMALY_DATABASE_URL": pg_url,
        "PYNOMALY_HOME": str(tmp_path_factory.mktemp("home")),
        "PYNOMALY_ENVIRONMENT": "test",
        "PYNOMALY_RETRY_BACKOFF_MAX": "2",
        "PYNOMALY_CHUNK_ROWS": "1000",  # sources above this fan out across the pool
        "PYNOMALY_METRICS_PORT": str(free_port()),
        # Tests write source files in their own temporary folders, all below this one.
        "PYNOMALY_SOURCE_ROOTS": json.dumps([str(tmp_path_factory.getbasetemp())]),
    }


@pytest.fixture(scope="module")
def e2e_settings(e2e_env: dict[str, str]) -> Settings:
    """The same settings, as an object for the test process."""
    values = {k.removeprefix("PYNOMALY_").lower(): v for k, v in e2e_env.items()}
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def e2e_adapters(e2e_settings: Settings) -> Iterator[Adapters]:
    """Adapters in the test process, to inspect what the worker wrote."""
    adapters = bootstrap(e2e_settings)
    yield adapters
    adapters.close()


@pytest.fixture(scope="module")
def e2e_app(e2e_settings: Settings) -> Iterator[Celery]:
    """A publishing client on the e2e broker."""
    app = client_app(e2e_settings)
    yield app
    gc.collect()  # finalise AsyncResults now: they unsubscribe through the backend
    close_app(app)


def start_worker(
    e2e_env: dict[str, str],
    e2e_adapters: Adapters,
    tmp_path_factory: pytest.TempPathFactory,
    *,
    concurrency: int,
) -> WorkerProcess:
    """A real ``pynomaly-workers worker`` (prefork, ``concurrency`` processes; 0 = the
    default pool), answering the health canary; fails the test with its log if not."""
    log = Path(tmp_path_factory.mktemp("logs")) / "worker.log"
    process = WorkerProcess(log_path=log, concurrency=concurrency, env={**os.environ, **e2e_env})
    report = check_health(e2e_adapters, queues=["detection", "training"], timeout=60)
    if not report["ok"]:
        process.stop()
        pytest.fail(f"worker did not answer: {report}; log:\n{log.read_text()[-3000:]}")
    return process


@pytest.fixture(scope="module")
def worker(
    e2e_env: dict[str, str], e2e_adapters: Adapters, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One real ``pynomaly-workers worker`` process (prefork, 2 children)."""
    process = start_worker(e2e_env, e2e_adapters, tmp_path_factory, concurrency=2)
    yield process
    process.stop()
