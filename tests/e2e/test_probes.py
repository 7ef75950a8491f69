"""Probes against a worker on this test's own Redis, which the test stops for 10 s:
liveness stays 0 (an outage must not restart workers), readiness turns 1 and back to 0.
The worker logs JSON lines with its password-protected broker URL masked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from pynomaly_workers.demo import WorkerProcess, wait_for
from tests.e2e.conftest import finished_lines, free_port

pytestmark = pytest.mark.e2e
PASSWORD = "pr0be-s3cret"


class RedisServer:
    """A redis-server of this test, with a password, on a loopback port."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (Debian package redis-server)"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--requirepass", PASSWORD, "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, password=PASSWORD)
        assert wait_for(lambda: _pings(client), timeout=20), "test Redis did not start"
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def probe_env(
    own_redis: RedisServer, pg_url: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    url = f"redis://:{PASSWORD}@127.0.0.1:{own_redis.port}"
    return {
        **os.environ,
        "PYNOMALY_BROKER_URL": f"{url}/0",
        "PYNOMALY_RESULT_BACKEND": f"{url}/1",
        "PYNOMALY_DATABASE_URL": pg_url,
        "PYNOMALY_HOME": str(tmp_path_factory.mktemp("home")),
        "PYNOMALY_ENVIRONMENT": "test",
        "PYNOMALY_METRICS_PORT": str(free_port()),
        "PYNOMALY_LOG_FORMAT": "json",
        "PYNOMALY_LIVENESS_INTERVAL_SECONDS": "1",
        "PYNOMALY_LIVENESS_MAX_AGE_SECONDS": "5",
    }


@pytest.fixture(scope="module")
def probe_worker(
    probe_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    log = tmp_path_factory.mktemp("logs") / "worker.log"
    process = WorkerProcess(log_path=log, concurrency=1, env=probe_env)
    if not wait_for(lambda: health(probe_env, "--liveness") == 0, timeout=60):
        process.stop()
        pytest.fail(f"worker never became live; log:\n{log.read_text()[-3000:]}")
    yield process
    process.stop()


def health(env: dict[str, str], *args: str) -> int:
    done = subprocess.run(
        [sys.executable, "-m", "pynomaly_workers.cli", "health", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode


def test_liveness_holds_through_a_broker_outage_and_readiness_follows_it(
    probe_worker: WorkerProcess, own_redis: RedisServer, probe_env: dict[str, str]
) -> None:
    # Given a live, ready worker
    assert health(probe_env, "--readiness") == 0
    assert health(probe_env, "--liveness") == 0

    # When its broker is down for 10 s
    own_redis.stop()
    outage_ends = time.monotonic() + 10
    liveness = []
    while time.monotonic() < outage_ends:
        liveness.append(health(probe_env, "--liveness"))
    readiness_during = health(probe_env, "--readiness")
    own_redis.start()

    # Then liveness never failed, readiness did, and readiness recovers with the broker
    assert len(liveness) >= 3
    assert set(liveness) == {0}
    assert readiness_during == 1
    assert wait_for(lambda: health(probe_env, "--readiness") == 0, timeout=60)
    assert probe_worker.alive()
    # and the worker consumes again: the deep check's canary goes to its own queue
    assert wait_for(lambda: health(probe_env, "--timeout", "10") == 0, timeout=90)


def test_liveness_fails_when_the_worker_is_gone(probe_env: dict[str, str], tmp_path: Path) -> None:
    assert health({**probe_env, "PYNOMALY_HOME": str(tmp_path)}, "--liveness") == 1


def test_json_logs_name_the_task_and_mask_the_password(
    probe_worker: WorkerProcess, probe_env: dict[str, str]
) -> None:
    assert health(probe_env, "--timeout", "30") == 0
    lines = finished_lines(probe_worker.log_path)
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(PASSWORD not in line for line in lines)
    assert any(":***@" in r["message"] for r in records)
    assert any(r.get("task_name") == "pynomaly.health.ping" and r.get("task_id") for r in records)
