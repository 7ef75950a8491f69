"""Two worker hosts (network namespaces joined by a bridge) on one S3 endpoint, Redis and
PostgreSQL: one fanned-out job is scored by both hosts and completes once."""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pynomaly_workers.bootstrap import bootstrap
from pynomaly_workers.client import client_app, close_app, submit_detection
from pynomaly_workers.contract import SUCCEEDED
from pynomaly_workers.demo import WorkerProcess, wait_for
from pynomaly_workers.settings import Settings
from tests import s3
from tests.e2e.test_worker import wait_job
from tests.factories import rows_with_outliers, train, write_csv
from tests.netns import HostNetwork, host_network, tcp_proxy

pytestmark = pytest.mark.e2e
CHUNK_ROWS, N_ROWS = 2_000, 40_000
OUTLIERS = (0, 1_999, 2_000, 21_234, 39_999)
CHUNK_DONE = re.compile(r"Task pynomaly\.detect\.chunk\[[^\]]+\] succeeded")


@contextmanager
def redis_on(host: str, folder: Path) -> Iterator[str]:
    """A throwaway redis-server listening on ``host``; yields its URL."""
    port = s3.free_port(host)
    command = ["redis-server", "--bind", host, "--port", str(port), "--save", ""]
    command += ["--appendonly", "no", "--dir", str(folder), "--protected-mode", "no"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        if not wait_for(lambda: _answers(host, port), timeout=10, interval=0.05):
            raise RuntimeError(f"redis-server on {host}:{port} did not start")
        yield f"redis://{host}:{port}"
    finally:
        server.terminate()
        server.wait(10)


def _answers(host: str, port: int) -> bool:
    import redis

    try:
        with redis.Redis(host=host, port=port, socket_connect_timeout=0.2) as client:
            return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False


def all_ready(logs: dict[str, Path]) -> bool:
    return all(log.exists() and "ready." in log.read_text() for log in logs.values())


def chunks_scored(log: Path) -> int:
    return len(CHUNK_DONE.findall(log.read_text()))


def test_two_hosts_share_one_fanned_out_object_job(pg_url: str, tmp_path: Path) -> None:
    with (
        host_network(2) as network,
        redis_on(network.host_ip, tmp_path) as redis_url,
        s3.moto_server(network.host_ip) as endpoint,
    ):
        pg_port = s3.free_port(network.host_ip)
        with tcp_proxy((network.host_ip, pg_port), ("127.0.0.1", 5432)):
            run_two_hosts(network, redis_url, endpoint, pg_url, pg_port, tmp_path)


def run_two_hosts(
    network: HostNetwork,
    redis_url: str,
    endpoint: str,
    pg_url: str,
    pg_port: int,
    tmp_path: Path,
) -> None:
    env = {
        "PYNOMALY_BROKER_URL": f"{redis_url}/0",
        "PYNOMALY_RESULT_BACKEND": f"{redis_url}/1",
        "PYNOMALY_DATABASE_URL": pg_url.replace("127.0.0.1:5432", f"{network.host_ip}:{pg_port}"),
        "PYNOMALY_HOME": str(tmp_path / "home"),
        "PYNOMALY_ENVIRONMENT": "test",
        "PYNOMALY_CHUNK_ROWS": str(CHUNK_ROWS),
        # one chunk at a time per host, so the hosts share the chunks as they free up
        "PYNOMALY_PREFETCH_MULTIPLIER": "1",
        "PYNOMALY_METRICS_PORT": "0",
        **s3.env(endpoint),
    }
    values = {k.removeprefix("PYNOMALY_").lower(): v for k, v in env.items()}
    settings = Settings(**values)  # type: ignore[arg-type]
    adapters = bootstrap(settings)
    model = train(adapters, model="hosts").label
    name = f"hosts-{uuid.uuid4().hex[:8]}"
    rows = rows_with_outliers(n=N_ROWS, outliers=OUTLIERS)
    source = write_csv(tmp_path / "rows.csv", rows, ids=True)
    s3.bucket(endpoint, name).upload_file(str(source), name, "rows.csv")

    # Given a worker on each of two hosts
    logs = {ns: tmp_path / f"{ns}.log" for ns in network.hosts}
    workers = [
        WorkerProcess(
            log_path=logs[ns],
            concurrency=1,
            env=env,
            hostname=f"{ns}@%h",
            prefix=network.prefix(ns),
        )
        for ns in network.hosts
    ]
    app = client_app(settings)
    try:
        assert wait_for(lambda: all_ready(logs), timeout=90), "a worker host did not start"

        # When one job reads a 20-chunk object
        submit_detection(model=model, source=f"s3://{name}/rows.csv", job_id="two-hosts", app=app)
        job = wait_job(adapters, "two-hosts", timeout=180)

        # Then it succeeded once, with every chunk scored once, by both hosts
        assert job.status == SUCCEEDED, job.error
        assert (job.n_records, job.attempts) == (N_ROWS, 1)
        # (a worker logs a chunk's success after the chunk committed: wait for the lines)
        expected = N_ROWS // CHUNK_ROWS
        wait_for(lambda: sum(chunks_scored(log) for log in logs.values()) >= expected, timeout=30)
        scored = {ns: chunks_scored(log) for ns, log in logs.items()}
        print(f"chunks scored per host: {scored}")
        assert sum(scored.values()) == expected, scored
        assert all(count > 0 for count in scored.values()), scored
        found = {
            a.record_index for a in adapters.store.list_anomalies(job_id="two-hosts", limit=10**5)
        }
        assert set(OUTLIERS) <= found
        assert len(found) == job.n_anomalies
    finally:
        for worker in workers:
            worker.stop()
        close_app(app)
        adapters.close()
