"""Redis AUTH + TLS end to end: a real worker on a TLS-only ``redis-server`` that requires a
password, as broker and result backend (``rediss://:password@...?ssl_cert_reqs=required&
ssl_ca_certs=...``). The server has no plain-text port, so anything that works went through
TLS, authenticated."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from pynomaly_workers.bootstrap import bootstrap
from pynomaly_workers.client import client_app, close_app, submit_detection
from pynomaly_workers.demo import WorkerProcess, wait_for
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.services.health import check_health
from pynomaly_workers.settings import Settings
from tests.e2e.conftest import free_port
from tests.factories import rows_with_outliers, train
from tests.tls import PASSWORD, TlsRedis, make_authority, tls_redis_server

pytestmark = pytest.mark.e2e
CLI = [sys.executable, "-m", "pynomaly_workers.cli"]


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    with tls_redis_server(tmp_path_factory.mktemp("tls"), free_port()) as server:
        yield server


DB_PASSWORD = "db-pass-4f1c"  # the test PostgreSQL trusts local clients: any password works


def with_password(pg_url: str) -> str:
    """``pg_url`` with a password, as production URLs have one."""
    if DB_PASSWORD in pg_url:
        return pg_url
    assert "://postgres@" in pg_url, pg_url
    return pg_url.replace("://postgres@", f"://postgres:{DB_PASSWORD}@", 1)


def tls_env(
    server: TlsRedis, pg_url: str, home: Path, *, ca_path: Path | None = None
) -> dict[str, str]:
    return {
        "PYNOMALY_BROKER_URL": server.url(0, ca_path=ca_path),
        "PYNOMALY_RESULT_BACKEND": server.url(1, ca_path=ca_path),
        "PYNOMALY_DATABASE_URL": with_password(pg_url),
        "PYNOMALY_HOME": str(home),
        "PYNOMALY_ENVIRONMENT": "test",
        "PYNOMALY_METRICS_PORT": "0",
    }


def settings_of(env: dict[str, str]) -> Settings:
    values = {k.removeprefix("PYNOMALY_").lower(): v for k, v in env.items()}
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tls_adapters(
    tls_server: TlsRedis, pg_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Adapters]:
    adapters = bootstrap(settings_of(tls_env(tls_server, pg_url, tmp_path_factory.mktemp("home"))))
    yield adapters
    adapters.close()


@pytest.fixture
def tls_app(tls_adapters: Adapters) -> Iterator[Celery]:
    """A publishing client on the TLS broker."""
    app = client_app(tls_adapters.settings)
    yield app
    # An AsyncResult unsubscribes through the backend when it is collected: collect it
    # now, while the TLS server runs (after the test's frame is gone), not in a later test.
    gc.collect()
    close_app(app)


def test_a_worker_on_a_tls_redis_with_a_password_completes_a_job(
    tls_server: TlsRedis, tls_adapters: Adapters, tls_app: Celery, tmp_path: Path
) -> None:
    # Given a worker whose broker and result backend are the TLS-only, password-protected Redis
    settings = tls_adapters.settings
    env = {
        **os.environ,
        **tls_env(tls_server, settings.database_url, settings.home),
        "PYNOMALY_LOG_FORMAT": "json",
    }
    log = tmp_path / "worker.log"
    worker = WorkerProcess(log_path=log, concurrency=1, env=env)
    outputs: list[str] = []
    try:
        model = train(tls_adapters, model="tls").label  # while the worker starts
        report = check_health(tls_adapters, queues=["detection"], timeout=60)
        assert report["ok"], f"{report}\n{log.read_text()[-3000:]}"

        # When a detection job is published over TLS
        submission = submit_detection(
            model=model,
            records=rows_with_outliers(n=50, outliers=(7,)),
            job_id="tls-1",
            app=tls_app,
        )
        summary: dict[str, Any] = tls_app.AsyncResult(submission.task_id).get(timeout=30)
        # and an operator runs the commands that print URLs or connection errors
        # (the deep health check's canary already ran in-process above)
        for command in (["migrate"], ["health", "--readiness", "--json"]):
            done = subprocess.run(
                [*CLI, *command], env=env, capture_output=True, text=True, timeout=60, check=False
            )
            assert done.returncode == 0, done.stdout + done.stderr
            outputs.append(done.stdout + done.stderr)
    finally:
        worker.stop()

    # Then it completes, and its summary came back through the TLS result backend
    assert summary["job_id"] == "tls-1"
    assert summary["n_records"] == 50
    job = tls_adapters.store.get_job("tls-1")
    assert job is not None
    assert job.status == "succeeded"
    # and neither the worker's log (banner, JSON lines) nor any command shows a password
    assert "127.0.0.1" in outputs[0]  # migrate names the database
    for text in [log.read_text(), *outputs]:
        assert PASSWORD not in text
        assert DB_PASSWORD not in text


def test_a_wrong_certificate_authority_fails_with_a_clear_message(
    tls_server: TlsRedis, pg_url: str, tmp_path: Path
) -> None:
    # Given settings that trust a different CA than the one that signed the server
    other = make_authority(tmp_path, "other-ca")
    env = {**os.environ, **tls_env(tls_server, pg_url, tmp_path / "home", ca_path=other.cert_path)}

    # When a worker starts that way, and an operator runs the readiness probe
    log = tmp_path / "worker.log"
    worker = WorkerProcess(log_path=log, concurrency=1, env=env)
    probe = subprocess.run(
        [*CLI, "health", "--readiness", "--json"],
        env=env,
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )

    # Then it fails, saying the broker's certificate did not verify, without the password
    assert probe.returncode == 1, probe.stdout + probe.stderr
    broker = json.loads(probe.stdout)["checks"]["broker"]
    assert not broker["ok"]
    assert "certificate verify failed" in broker["detail"], broker
    assert PASSWORD not in probe.stdout + probe.stderr

    # and the worker logs the same reason while it retries, never consuming
    try:
        assert wait_for(lambda: "certificate verify failed" in log.read_text(), timeout=20), (
            log.read_text()[-3000:]
        )
    finally:
        worker.stop(timeout=5)  # it holds no job: nothing to drain
    assert PASSWORD not in log.read_text()


def test_a_bare_rediss_url_verifies_the_certificate_in_the_probe_too(
    tls_server: TlsRedis, pg_url: str, tmp_path: Path
) -> None:
    # Given a rediss:// URL without TLS parameters (the server's CA is not a system CA)
    env = {
        **os.environ,
        **tls_env(tls_server, pg_url, tmp_path / "home"),
        "PYNOMALY_BROKER_URL": f"rediss://:{PASSWORD}@127.0.0.1:{tls_server.port}/0",
    }

    # When the readiness probe checks the broker
    probe = subprocess.run(
        [*CLI, "health", "--readiness", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    # Then it verifies the certificate as the worker would (kombu alone would not), and fails
    broker = json.loads(probe.stdout)["checks"]["broker"]
    assert "certificate verify failed" in broker["detail"], broker


def test_connection_errors_do_not_print_passwords(
    tls_server: TlsRedis, pg_url: str, tmp_path: Path
) -> None:
    # Given URLs with passwords, the database one pointing at a port nobody listens on
    dead = with_password(pg_url).replace("127.0.0.1:5432", f"127.0.0.1:{free_port()}")
    env = {**os.environ, **tls_env(tls_server, pg_url, tmp_path / "home")}
    env["PYNOMALY_DATABASE_URL"] = dead

    # When the commands that reach the database fail
    outputs = [
        subprocess.run(
            [*CLI, *command], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        for command in (["health", "--readiness"], ["migrate"])
    ]

    # Then each fails, and none shows either password
    for done in outputs:
        assert done.returncode != 0
        assert PASSWORD not in done.stdout + done.stderr
        assert DB_PASSWORD not in done.stdout + done.stderr, done.stdout + done.stderr
