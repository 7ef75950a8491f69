"""Scenario 5: a worker host is cut off from the network in the middle of a job.

One worker runs on its own "host" (a network namespace on a bridge) and reaches the
broker Redis and PostgreSQL through proxies on the bridge; a row lock the test holds
stops its batch inside the database write, so "mid-job" is deterministic. Then its cable
is pulled: its connections go silent, nothing is reset. The jobs it held must be handed
to the other worker once ``PYNOMALY_VISIBILITY_TIMEOUT_SECONDS`` has passed and complete
there, once; when the cable is plugged back in, the cut-off worker's late work must not
write anything twice.

Bound: a held message is redelivered once it is older than the visibility timeout, at
the next scan of the unacknowledged set (every 10 s), so the jobs complete within
visibility timeout + 10 s + a batch, counted from when the cut-off worker received them.
Its open transaction keeps row locks on those jobs until PostgreSQL ends it after
``PYNOMALY_DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS``, which must therefore be shorter
than the visibility timeout (it is, by default: 60 s against 1,380 s).
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import redis
from sqlalchemy import text

from pynomaly_workers.client import submit_detection
from pynomaly_workers.demo import WorkerProcess, wait_for
from pynomaly_workers.services.health import check_health
from tests.e2e.test_crash import wait_until_blocked
from tests.factories import engine_of, rows_with_outliers, train
from tests.faults.conftest import FaultStack, RedisServer, count_jobs, report_outcome, wait_settled
from tests.netns import HostNetwork, TcpProxy, host_network, tcp_proxy
from tests.s3 import free_port

pytestmark = pytest.mark.e2e

ROWS = rows_with_outliers(n=20, outliers=(3,))
N_JOBS = 12
VISIBILITY = 30  # seconds; must exceed the hard time limit
# Short, so a short visibility timeout is allowed; long enough for a pool process's
# first batch (it imports scikit-learn and loads the model) on a busy 2-core machine.
TIME_LIMITS = {"PYNOMALY_TASK_SOFT_TIME_LIMIT": "20", "PYNOMALY_TASK_TIME_LIMIT": "25"}
IDLE_IN_TRANSACTION = 5  # seconds PostgreSQL keeps a silent client's transaction open
SCAN_EVERY = 10  # seconds between scans for messages past the visibility timeout
# How the cut-off worker's blocked batch can end, once its cable is back.
LATE_WORK = re.compile(
    r"Hard time limit|was lost; requeueing|retry \d+ in|detection batch failed|detect\[.*succeeded"
)


@contextmanager
def job_rows_locked(stack: FaultStack, job_ids: list[str], model: str) -> Iterator[None]:
    """Hold a lock on every job's row until the block exits, so whichever batch the
    worker forms stops in its write (the test's 'mid-job')."""
    now = stack.adapters.clock.now()
    for job_id in job_ids:
        stack.adapters.store.enqueue_job(job_id, model=model, now=now)
    with engine_of(stack.adapters).connect() as connection, connection.begin() as transaction:
        connection.execute(
            text("SELECT 1 FROM detection_jobs WHERE job_id = ANY(:ids) FOR UPDATE"),
            {"ids": job_ids},
        )
        try:
            yield
        finally:
            transaction.rollback()


@contextmanager
def bridged_services(
    network: HostNetwork, broker: RedisServer
) -> Iterator[tuple[TcpProxy, TcpProxy]]:
    """Proxies on the bridge to the broker Redis and to PostgreSQL (both on loopback)."""
    with ExitStack() as stack:
        proxies = tuple(
            stack.enter_context(tcp_proxy((network.host_ip, free_port(network.host_ip)), target))
            for target in (("127.0.0.1", broker.port), ("127.0.0.1", 5432))
        )
        yield proxies[0], proxies[1]


def remote_env(
    stack: FaultStack, broker: TcpProxy, database: TcpProxy, home: Path
) -> dict[str, str]:
    """The fault stack's environment as seen from the other host: every service through
    its proxy on the bridge."""
    redis_at = f"redis://{broker.listen[0]}:{broker.listen[1]}"
    database_at = f"{database.listen[0]}:{database.listen[1]}"
    return {
        **stack.env,
        "PYNOMALY_BROKER_URL": f"{redis_at}/0",
        "PYNOMALY_RESULT_BACKEND": f"{redis_at}/1",
        "PYNOMALY_DATABASE_URL": stack.env["PYNOMALY_DATABASE_URL"].replace(
            "127.0.0.1:5432", database_at
        ),
        "PYNOMALY_HOME": str(home),
    }


def start_node(
    stack: FaultStack, node: str, *, env: dict[str, str], prefix: list[str]
) -> WorkerProcess:
    """A worker named ``node`` (``name@host``), proven to consume by a canary sent to its
    own queue: a canary on the shared queue could be taken by the cut-off worker."""
    log = stack.logs / f"{node.split('@', maxsplit=1)[0]}.log"
    worker = WorkerProcess(log_path=log, concurrency=2, env=env, hostname=node, prefix=prefix)
    stack.workers.append(worker)
    report = check_health(stack.adapters, queues=[], timeout=90, worker=node)
    if not report["ok"]:
        pytest.fail(f"worker {node} did not answer: {report}; log:\n{log.read_text()[-3000:]}")
    return worker


def blocked_in_brpop(broker: RedisServer, ports: set[int]) -> bool:
    """True while a client connected from one of ``ports`` waits in BRPOP: Redis would
    hand it the next message, which a cut-off worker would never receive."""
    with redis.Redis(port=broker.port) as client:
        clients = client.client_list()
    return any(int(c["addr"].rsplit(":", 1)[1]) in ports and "b" in c["flags"] for c in clients)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_cut_off_workers_jobs_complete_once_on_another_worker(
    fault_stack: FaultStack, broker_redis: RedisServer, tmp_path: Path
) -> None:
    fault_stack.env.update(
        TIME_LIMITS,
        PYNOMALY_VISIBILITY_TIMEOUT_SECONDS=str(VISIBILITY),
        PYNOMALY_DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS=str(IDLE_IN_TRANSACTION),
    )
    model = train(fault_stack.adapters, model="partition").label
    hostname = socket.gethostname()
    job_ids = [f"partition-{i}" for i in range(N_JOBS)]
    # Two hosts on the bridge, one of them idle: with a single port, pulling its cable
    # would take the bridge itself down, and the services' side would see errors at
    # once instead of silence, as a real network's far end does.
    with host_network(2) as network, bridged_services(network, broker_redis) as (to_redis, to_pg):
        namespace = next(iter(network.hosts))
        env = remote_env(fault_stack, to_redis, to_pg, tmp_path / "remote-home")

        # Given a worker on another host, in the middle of a batch (blocked in its write)
        # and holding every job
        start_node(fault_stack, f"cutoff@{hostname}", env=env, prefix=network.prefix(namespace))
        sent_at = time.monotonic()
        with job_rows_locked(fault_stack, job_ids, model):
            for job_id in job_ids:
                submit_detection(model=model, records=ROWS, job_id=job_id, app=fault_stack.app)
            wait_until_blocked(fault_stack.adapters)
            assert wait_for(
                lambda: broker_redis.state() == {"queued": 0, "unacked": N_JOBS}, timeout=30
            ), f"the remote worker did not take every job: {broker_redis.state()}"
            received_at = time.monotonic()

            # When its host is cut off from the network (and the test's lock goes)
            network.disconnect(namespace)
            cut_at = time.monotonic()
            late = fault_stack.logs / "cutoff.log"
            seen_before_cut = len(late.read_text())
        assert wait_for(
            lambda: not blocked_in_brpop(broker_redis, to_redis.upstream_ports()), timeout=10
        ), "the cut-off worker still waits in BRPOP: a message sent now would be lost"
        start_node(fault_stack, f"rescuer@{hostname}", env=fault_stack.env, prefix=[])

        # Then every job completes on the other worker, within the bound
        counts = wait_settled(fault_stack.adapters, job_ids, timeout=VISIBILITY + 120)
        recovery = time.monotonic() - cut_at
        done_after = time.monotonic() - received_at
        since_sent = time.monotonic() - sent_at
        report_outcome(
            "network_partition",
            job_ids,
            counts,
            recovery_seconds=recovery,
            extra={
                "visibility_timeout_seconds": VISIBILITY,
                "seconds_from_delivery_to_done": round(done_after, 1),
                "bound_seconds": VISIBILITY + SCAN_EVERY + 15,
            },
        )
        assert counts.succeeded() == set(job_ids), (
            f"{sorted(set(job_ids) - counts.succeeded())} did not succeed; broker "
            f"{broker_redis.state()}\n{fault_stack.log_text()}"
        )
        assert counts.duplicated() == set()
        assert done_after <= VISIBILITY + SCAN_EVERY + 15, f"{done_after:.1f} s"
        # (not before the visibility timeout: only a redelivery could have finished them)
        assert since_sent >= VISIBILITY, f"done {since_sent:.1f} s after sending"
        assert "partition@" in (fault_stack.logs / "rescuer.log").read_text(), (
            "the other worker never scored a job"
        )

        # ... and when the cut-off host comes back, its late work writes nothing twice
        network.reconnect(namespace)
        assert wait_for(
            lambda: bool(LATE_WORK.search(late.read_text()[seen_before_cut:])), timeout=90
        ), f"the cut-off worker's batch never ended\n{late.read_text()[-4000:]}"
        assert wait_for(broker_redis.drained, timeout=60), broker_redis.state()
    again = count_jobs(fault_stack.adapters, job_ids)
    assert again.succeeded() == set(job_ids)
    assert again.attempts == dict.fromkeys(job_ids, 1)  # the late work settled nothing again
    assert again.duplicated() == set(), {
        j: (again.n_anomalies[j], again.anomaly_rows.get(j)) for j in again.duplicated()
    }
    assert again.anomaly_rows == counts.anomaly_rows
