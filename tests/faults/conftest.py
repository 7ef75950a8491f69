"""Fault injection: real worker processes, a broker each test owns, and counts.

Each scenario starts what it breaks: a ``redis-server`` on a free port in 6391-6399 (AOF
on, in a temporary folder) as the broker and result backend, and ``pynomaly-workers
worker`` processes pointed at it and at the session's PostgreSQL schema. Outcomes are
counted from the database rows; what the unique keys already guarantee (one row per
job_id, per job and record) is not asserted, it could not fail (see :class:`JobCounts`).

A scenario that also holds on RabbitMQ parametrizes the ``broker`` fixture
(``@pytest.mark.parametrize("broker", BROKERS, indirect=True)``): with ``rabbitmq`` the
broker is a vhost of its own on the local RabbitMQ (``PYNOMALY_TEST_RABBITMQ_URL``),
deleted afterwards, and the ``redis-server`` stays the result backend.
"""

from __future__ import annotations

import base64
import gc
import json
import os
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
import redis
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import text

from pynomaly_workers.bootstrap import bootstrap
from pynomaly_workers.client import client_app, close_app
from pynomaly_workers.demo import WorkerProcess, wait_for
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.services.health import check_health
from pynomaly_workers.settings import Settings
from tests.factories import engine_of
from tests.faults.report import ScenarioReport, record_scenario
from tests.rabbitmq import RabbitVhost

BROKER_PORTS = range(6391, 6400)
BROKERS: tuple[Any, ...] = ("redis", pytest.param("rabbitmq", marks=pytest.mark.slow))
"""The brokers a scenario runs on. On RabbitMQ each is marked slow: it runs in ``make
faults``; ``make test`` keeps one RabbitMQ scenario (the buffered broker restart)."""


class FaultBroker(Protocol):
    """What a scenario needs of its broker, on Redis and on RabbitMQ."""

    kind: str

    @property
    def broker_url(self) -> str:
        """The URL workers and clients are given."""
        ...

    def state(self) -> dict[str, int]:
        """Messages waiting in the detection queue, and delivered but unacknowledged."""
        ...

    def drained(self) -> bool:
        """True when nothing waits and nothing is delivered but unacknowledged."""
        ...

    def restart(self) -> None:
        """Stop the broker (every connection drops) and start it again, durable state kept."""
        ...

    def unacked_job_ids(self) -> list[str]:
        """The job_id of each message still held as delivered but unacknowledged after
        every job settled (Redis keeps those until the visibility timeout)."""
        ...


def _port_is_free(port: int) -> bool:
    """Whether redis-server could listen on ``port``: nothing listens there. It binds
    with SO_REUSEADDR, so the closed connections of a server stopped on that port less
    than a minute ago (TIME_WAIT) do not stand in its way, and the probe ignores them too."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class RedisServer:
    """A ``redis-server`` this test owns: AOF on, in ``folder``, on 127.0.0.1 only."""

    kind = "redis"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        free = [port for port in BROKER_PORTS if _port_is_free(port)]
        if not free:
            pytest.fail("no free port in 6391-6399 for the test's redis-server")
        self.port = free[0]
        self.url = f"redis://127.0.0.1:{self.port}"
        self.start()

    def start(self) -> None:
        """Start (or restart) the server on the same port and AOF folder."""
        command = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.folder),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.folder / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        if not wait_for(self.answers, timeout=20, interval=0.05):
            self.process.kill()
            pytest.fail(f"redis-server on port {self.port} did not start; see {self.folder}")

    @property
    def broker_url(self) -> str:
        """Database 0 as the broker (the result backend takes database 1)."""
        return f"{self.url}/0"

    def answers(self) -> bool:
        """True when the server answers PING."""
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.exceptions.RedisError:
            return False
        finally:
            client.close()

    def state(self) -> dict[str, int]:
        """Messages waiting in the detection list, and delivered but unacknowledged."""
        client = redis.Redis(port=self.port)
        try:
            return {"queued": client.llen("detection"), "unacked": client.hlen("unacked")}
        finally:
            client.close()

    def unacked_job_ids(self) -> list[str]:
        """The job_id of each message delivered but not acknowledged."""
        client = redis.Redis(port=self.port)
        try:
            held = client.hvals("unacked")
        finally:
            client.close()
        job_ids = []
        for value in held:
            envelope = json.loads(value)[0]
            _args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
            job_ids.append(str(kwargs.get("job_id")))
        return job_ids

    def drained(self) -> bool:
        """True when nothing waits on the detection queue and nothing is delivered but
        unacknowledged: every message was consumed and settled."""
        return self.state() == {"queued": 0, "unacked": 0}

    def shutdown(self) -> None:
        """SHUTDOWN: the AOF is fsynced, every client's connection is dropped. Without
        retries: redis-py's default ones reconnect to the stopped server for 4.6 s."""
        client = redis.Redis(port=self.port, retry=Retry(NoBackoff(), 0))
        try:
            client.shutdown()
        except redis.exceptions.ConnectionError:
            pass  # the server closes the connection as it exits
        finally:
            client.close()
        self.process.wait(timeout=20)

    def restart(self) -> None:
        """SHUTDOWN, then start again with the same AOF folder."""
        self.shutdown()
        self.start()

    def stop(self) -> None:
        """Stop the server for good."""
        if self.process.poll() is None:
            self.shutdown()


@pytest.fixture
def broker_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A dedicated ``redis-server`` (AOF on): the broker, and the result backend on
    either broker; stopped after the test."""
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def broker(request: pytest.FixtureRequest, broker_redis: RedisServer) -> Iterator[FaultBroker]:
    """The scenario's broker: ``broker_redis`` unless the test parametrizes ``broker``
    indirectly with ``rabbitmq``."""
    kind = getattr(request, "param", "redis")
    if kind == "redis":
        yield broker_redis
        return
    vhost = RabbitVhost()
    yield vhost
    vhost.stop()


@dataclass
class FaultStack:
    """The environment a scenario's workers run in, and handles to inspect them."""

    env: dict[str, str]
    settings: Settings
    adapters: Adapters
    app: Celery
    logs: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def start_worker(self, *, concurrency: int = 2, name: str = "worker") -> WorkerProcess:
        """A real ``pynomaly-workers worker``, answering a canary before it is returned."""
        log = self.logs / f"{name}-{len(self.workers)}.log"
        process = WorkerProcess(
            log_path=log, concurrency=concurrency, env={**os.environ, **self.env}
        )
        self.workers.append(process)
        report = check_health(self.adapters, queues=["detection"], timeout=60)
        if not report["ok"]:
            pytest.fail(f"worker did not answer: {report}; log:\n{log.read_text()[-3000:]}")
        return process

    def serve_metrics(self) -> int:
        """Give the workers started from now on a free ``/metrics`` port; return it."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        self.env["PYNOMALY_METRICS_PORT"] = str(port)
        return port

    def log_text(self, *, tail: int | None = 6000) -> str:
        """Every worker log of this scenario (the last ``tail`` characters of each, for
        failure messages; ``tail=None`` for all of it, to count lines in)."""
        logs = sorted(self.logs.glob("*.log"))
        return "\n".join(p.read_text()[-tail:] if tail else p.read_text() for p in logs)


@pytest.fixture
def fault_stack(
    broker: FaultBroker,
    broker_redis: RedisServer,
    pg_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FaultStack]:
    """Settings, adapters and a publishing client on the dedicated broker."""
    home = tmp_path_factory.mktemp("home")
    env = {
        "PYNOMALY_BROKER_URL": broker.broker_url,
        "PYNOMALY_RESULT_BACKEND": f"{broker_redis.url}/1",
        "PYNOMALY_DATABASE_URL": pg_url,
        "PYNOMALY_HOME": str(home),
        "PYNOMALY_ENVIRONMENT": "test",
        "PYNOMALY_RETRY_BACKOFF_MAX": "2",
        "PYNOMALY_METRICS_PORT": "0",
        "PYNOMALY_SOURCE_ROOTS": json.dumps([str(tmp_path_factory.getbasetemp())]),
    }
    values = {k.removeprefix("PYNOMALY_").lower(): v for k, v in env.items()}
    settings = Settings(**values)  # type: ignore[arg-type]
    adapters = bootstrap(settings)
    app = client_app(settings)
    stack = FaultStack(env, settings, adapters, app, tmp_path_factory.mktemp("logs"))
    yield stack
    for worker in stack.workers:
        worker.stop()
    gc.collect()
    close_app(app)
    adapters.close()


def scrape(port: int, sample: str) -> float | None:
    """The value of an unlabelled ``sample`` (e.g. ``x_total``) on a worker's ``/metrics``,
    or None when the worker does not export it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    for family in text_string_to_metric_families(body):
        for found in family.samples:
            if found.name == sample and not found.labels:
                return float(found.value)
    return None


@dataclass(frozen=True)
class JobCounts:
    """What the database holds for a set of job ids, counted row by row.

    ``detection_jobs.job_id`` and ``anomalies (job_id, record_index)`` are unique keys, so
    a job never has two rows and a record never two anomalies; what can go wrong is a job
    settled twice (``attempts``: a small job's final write counts one, and a redelivery
    that finds it final changes nothing) or anomaly rows that differ from what the job
    reported (lost, or left over from another execution)."""

    status: dict[str, str]
    error: dict[str, str | None]
    n_anomalies: dict[str, int | None]
    attempts: dict[str, int]
    anomaly_rows: dict[str, int]

    def succeeded(self) -> set[str]:
        """Jobs whose row says succeeded."""
        return {j for j, s in self.status.items() if s == "succeeded"}

    def failed(self) -> set[str]:
        """Jobs whose row says failed, with a reason."""
        return {j for j, s in self.status.items() if s == "failed" and self.error[j]}

    def duplicated(self) -> set[str]:
        """Jobs whose anomaly rows are not the number the job reported."""
        return {j for j in self.status if self.anomaly_rows.get(j, 0) != (self.n_anomalies[j] or 0)}


def count_jobs(adapters: Adapters, job_ids: list[str]) -> JobCounts:
    """Each job's row in ``detection_jobs`` and its rows in ``anomalies``."""
    jobs = text(
        "SELECT job_id, status, error, n_anomalies, attempts "
        "FROM detection_jobs WHERE job_id = ANY(:ids)"
    )
    anomalies = text(
        "SELECT job_id, count(*) FROM anomalies WHERE job_id = ANY(:ids) GROUP BY job_id"
    )
    with engine_of(adapters).connect() as conn:
        job_rows = conn.execute(jobs, {"ids": job_ids}).all()
        anomaly_rows = conn.execute(anomalies, {"ids": job_ids}).all()
    return JobCounts(
        status={r[0]: str(r[1]) for r in job_rows},
        error={r[0]: r[2] for r in job_rows},
        n_anomalies={r[0]: r[3] for r in job_rows},
        attempts={r[0]: int(r[4]) for r in job_rows},
        anomaly_rows={r[0]: int(r[1]) for r in anomaly_rows},
    )


def wait_settled(adapters: Adapters, job_ids: list[str], *, timeout: float) -> JobCounts:
    """Wait until every job is succeeded or failed (or the timeout passes); the counts."""
    holder: dict[str, JobCounts] = {}

    def settled() -> bool:
        holder["counts"] = count_jobs(adapters, job_ids)
        done = holder["counts"].succeeded() | holder["counts"].failed()
        return len(done) == len(job_ids)

    wait_for(settled, timeout=timeout, interval=0.25)
    return holder["counts"]


def report_outcome(
    name: str,
    job_ids: list[str],
    counts: JobCounts,
    *,
    recovery_seconds: float | None,
    extra: dict[str, Any] | None = None,
) -> ScenarioReport:
    """Record a scenario's figures for ``make faults``."""
    failed = counts.failed()
    report = ScenarioReport(
        submitted=len(job_ids),
        succeeded=len(counts.succeeded()),
        failed_with_reason=len(failed),
        lost=len(set(job_ids) - counts.succeeded() - failed),
        duplicated=len(counts.duplicated()),
        recovery_seconds=None if recovery_seconds is None else round(recovery_seconds, 2),
        extra=extra or {},
    )
    record_scenario(name, report)
    return report
