"""The services under test: a fresh PostgreSQL schema, flushed Redis databases, and real
worker processes started and always stopped again.

Like ``tests/e2e/conftest.py``: the schema ``pyn_bench_<random>`` lives in the database
``test`` and is reached through ``options=-csearch_path=...``; it is migrated by Alembic
and dropped at the end, whatever happened.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis
from sqlalchemy import Engine, create_engine, text

from benchmarks.config import (
    BROKER_DB,
    CACHE_DB,
    REDIS_DBS,
    RESULTS,
    RESULTS_DB,
    Endpoints,
    Sizes,
)
from benchmarks.progress import say
from pynomaly_workers.adapters.stores.engine import build_engine, normalize_url
from pynomaly_workers.bootstrap import bootstrap
from pynomaly_workers.contract import DETECTION_QUEUE, TRAINING_QUEUE
from pynomaly_workers.demo import WorkerProcess
from pynomaly_workers.migrate import upgrade
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.services.health import check_health
from pynomaly_workers.settings import Settings

HEALTH_TIMEOUT = 60.0


@dataclass(slots=True)
class Stack:
    """Everything a measurement needs to reach the system under test."""

    endpoints: Endpoints
    sizes: Sizes
    schema: str
    database_url: str
    env: dict[str, str]
    settings: Settings
    adapters: Adapters
    engine: Engine
    folder: Path

    def redis(self, db: int) -> redis.Redis:
        """A client on one of the suite's Redis databases (close it after use)."""
        return redis.Redis.from_url(self.endpoints.redis_db(db))


def flush_redis(endpoints: Endpoints) -> None:
    """Empty the suite's Redis databases."""
    for db in REDIS_DBS:
        with redis.Redis.from_url(endpoints.redis_db(db)) as client:
            client.flushdb()


def schema_url(database_url: str, schema: str) -> str:
    """``database_url`` with its search path set to ``schema``."""
    url = normalize_url(database_url)
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options={quote(f'-csearch_path={schema}')}"


def _admin_execute(database_url: str, statement: str) -> None:
    admin = create_engine(normalize_url(database_url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(statement))
    finally:
        admin.dispose()


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def worker_env(stack_env: dict[str, str], *, cache: bool) -> dict[str, str]:
    """The worker's variables; ``cache=False`` starts it with the prediction cache off.
    Metrics stay on, as deployed, on a free port (another worker may hold the default)."""
    return {
        **stack_env,
        "PYNOMALY_CACHE_URL": stack_env["PYNOMALY_CACHE_URL"] if cache else "",
        "PYNOMALY_METRICS_PORT": str(free_port()),
    }


def _env(endpoints: Endpoints, url: str, home: Path, sizes: Sizes) -> dict[str, str]:
    return {
        "PYNOMALY_BROKER_URL": endpoints.redis_db(BROKER_DB),
        "PYNOMALY_RESULT_BACKEND": endpoints.redis_db(RESULTS_DB),
        "PYNOMALY_CACHE_URL": endpoints.redis_db(CACHE_DB),
        "PYNOMALY_DATABASE_URL": url,
        "PYNOMALY_HOME": str(home),
        "PYNOMALY_ENVIRONMENT": "test",
        "PYNOMALY_WORKER_CONCURRENCY": str(sizes.worker_concurrency),
        # Workers read local sources only below these folders: the generated inputs.
        "PYNOMALY_SOURCE_ROOTS": json.dumps([str(RESULTS / "data")]),
    }


def _settings(env: dict[str, str]) -> Settings:
    values = {k.removeprefix("PYNOMALY_").lower(): v for k, v in env.items()}
    return Settings(**values)  # type: ignore[arg-type]


def _close_services(adapters: Adapters) -> None:
    adapters.close()


@contextmanager
def open_stack(endpoints: Endpoints, sizes: Sizes, *, folder: Path) -> Iterator[Stack]:
    """Flushed Redis databases and a migrated schema; both cleaned up on the way out."""
    schema = f"pyn_bench_{uuid.uuid4().hex[:10]}"
    flush_redis(endpoints)
    _admin_execute(endpoints.database_url, f'CREATE SCHEMA "{schema}"')
    try:
        url = schema_url(endpoints.database_url, schema)
        upgrade(url)
        env = _env(endpoints, url, folder / "home", sizes)
        settings = _settings(env)
        adapters = bootstrap(settings)
        engine = build_engine(url)
        try:
            yield Stack(endpoints, sizes, schema, url, env, settings, adapters, engine, folder)
        finally:
            engine.dispose()
            _close_services(adapters)
    finally:
        _admin_execute(endpoints.database_url, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        flush_redis(endpoints)
        say(f"dropped schema {schema} and flushed Redis databases {list(REDIS_DBS)}")


@contextmanager
def running_worker(
    stack: Stack, *, cache: bool, name: str, extra_env: dict[str, str] | None = None
) -> Iterator[WorkerProcess]:
    """A real ``pynomaly-workers worker`` (prefork), answering the health canary."""
    log = stack.folder / "logs" / f"{name}.log"
    started = time.perf_counter()
    worker = WorkerProcess(
        log_path=log,
        concurrency=stack.sizes.worker_concurrency,
        env={**os.environ, **worker_env(stack.env, cache=cache), **(extra_env or {})},
    )
    try:
        report = check_health(
            stack.adapters, queues=[DETECTION_QUEUE, TRAINING_QUEUE], timeout=HEALTH_TIMEOUT
        )
        if not report["ok"]:
            raise WorkerFailed(f"worker {name} did not answer: {report['checks']}; see {log}")
        say(
            f"worker {name} (cache {'on' if cache else 'off'}) ready in "
            f"{time.perf_counter() - started:.1f}s, pid {worker.process.pid}"
        )
        yield worker
    finally:
        worker.stop()


class WorkerFailed(RuntimeError):
    """A worker process did not come up; the message says where its log is."""
