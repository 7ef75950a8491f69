"""Scenario 4: PostgreSQL becomes unreachable for a while, under load.

The worker reaches PostgreSQL through a TCP proxy the test cuts: every open connection is
reset and new ones are refused, as when the database host or its network goes away. Jobs
keep arriving throughout. Each job must be retried with exponential backoff and jitter
and complete once the database is back: one job row, final, with exactly as many anomaly
rows as it counted (a batch is written in one transaction, so no half-written job).

Bounds. A job that failed on the outage is re-published with a delay of at most
``PYNOMALY_RETRY_BACKOFF_MAX`` seconds (B), so once the database answers again every job
completes within B plus the time to run the backlog (asserted: B + 15 s). Each delay is at
least half its cap (equal jitter), so every job outlasts an outage of
``outage_tolerance(PYNOMALY_RETRY_MAX, B)`` seconds before it could be failed: 23.5 s for
the 20 s outage here (B = 8, 8 retries), 127.5 s with the defaults.
"""

from __future__ import annotations

import re
import time

import pytest

from pynomaly_workers.demo import wait_for
from pynomaly_workers.domain.retries import backoff_cap, outage_tolerance
from tests.factories import rows_with_outliers, train
from tests.faults.conftest import FaultStack, count_jobs, report_outcome, wait_settled
from tests.faults.load import Producer
from tests.netns import TcpProxy, tcp_proxy
from tests.s3 import free_port

pytestmark = pytest.mark.e2e

ROWS = rows_with_outliers(n=20, outliers=(3,))
# The worker's warning for each retry; the error between may span several lines.
RETRY_LINE = re.compile(r"job (\S+): .*?; retry (\d+) in (\d+(?:\.\d+)?)s", re.DOTALL)


def database_via(proxy: TcpProxy, pg_url: str) -> str:
    """``pg_url`` with its host and port replaced by the proxy's."""
    host, port = proxy.listen
    return pg_url.replace("127.0.0.1:5432", f"{host}:{port}")


def retries_logged(stack: FaultStack) -> list[tuple[str, int, float]]:
    """(task id, retry number, delay in seconds) of every retry the workers logged."""
    logs = "\n".join(log.read_text() for log in sorted(stack.logs.glob("*.log")))
    return [(j, int(n), float(d)) for j, n, d in RETRY_LINE.findall(logs)]


def in_jitter_band(*, retry: int, delay: float, maximum: int) -> bool:
    """True if ``delay`` (logged to 0.1 s) lies in [cap / 2, cap] for retry number
    ``retry``."""
    cap = backoff_cap(retry - 1, maximum=maximum)
    return cap / 2 - 0.05 <= delay <= cap + 0.05


@pytest.mark.timeout(420)
@pytest.mark.parametrize(
    ("n_jobs", "rate", "outage", "backoff_max"),
    [
        pytest.param(40, 10.0, 4.0, 4, id="4s-outage-40-jobs"),
        pytest.param(300, 10.0, 20.0, 8, id="20s-outage-300-jobs", marks=pytest.mark.slow),
    ],
)
def test_jobs_survive_a_database_outage_and_are_written_once(
    fault_stack: FaultStack,
    pg_url: str,
    n_jobs: int,
    rate: float,
    outage: float,
    backoff_max: int,
) -> None:
    # Given a worker that reaches PostgreSQL through a proxy, and a steady flow of jobs
    assert outage_tolerance(fault_stack.settings.retry_max, maximum=backoff_max) > outage
    model = train(fault_stack.adapters, model="db-outage").label
    job_ids = [f"db-outage-{n_jobs}-{i}" for i in range(n_jobs)]
    with tcp_proxy(("127.0.0.1", free_port()), ("127.0.0.1", 5432)) as proxy:
        fault_stack.env["PYNOMALY_DATABASE_URL"] = database_via(proxy, pg_url)
        fault_stack.env["PYNOMALY_RETRY_BACKOFF_MAX"] = str(backoff_max)
        fault_stack.start_worker()
        producer = Producer(
            fault_stack.settings, model=model, rows=ROWS, job_ids=job_ids, rate=rate
        ).start()
        assert wait_for(
            lambda: len(count_jobs(fault_stack.adapters, job_ids).succeeded()) >= 10, timeout=60
        ), f"no job completed before the outage\n{fault_stack.log_text()}"

        # When the database becomes unreachable for `outage` seconds while jobs keep coming
        cut_at = time.monotonic()
        dropped = proxy.cut()
        assert wait_for(lambda: bool(retries_logged(fault_stack)), timeout=outage), (
            f"no job was retried during the outage\n{fault_stack.log_text()}"
        )
        time.sleep(max(0.0, cut_at + outage - time.monotonic()))  # the outage's length
        sent_before_restore = job_ids[: producer.sent]
        proxy.restore()
        restored_at = time.monotonic()

        # Then every job sent before the restore ends within the bound ...
        early = wait_settled(fault_stack.adapters, sent_before_restore, timeout=backoff_max + 60)
        recovery = time.monotonic() - restored_at
        producer.join(timeout=n_jobs / rate + 30)
        counts = wait_settled(fault_stack.adapters, job_ids, timeout=120)

    retries = retries_logged(fault_stack)
    report_outcome(
        f"database_outage_{round(outage)}s",
        job_ids,
        counts,
        recovery_seconds=recovery,
        extra={
            "outage_seconds": round(restored_at - cut_at, 1),
            "connections_dropped": dropped,
            "retries": len(retries),
            "jobs_retried": len({job for job, _, _ in retries}),
            "most_retries_of_one_job": max((n for _, n, _ in retries), default=0),
            "recovery_bound_seconds": backoff_max + 15,
        },
    )
    # ... every job succeeded, once, with all of its anomalies and nothing more
    missing = sorted(set(job_ids) - counts.succeeded())
    assert not missing, (
        f"{len(missing)} of {n_jobs} jobs did not succeed: "
        f"{[(j, counts.status.get(j), counts.error.get(j)) for j in missing[:10]]}\n"
        f"{fault_stack.log_text()}"
    )
    assert counts.duplicated() == set(), {
        j: (counts.n_anomalies[j], counts.anomaly_rows.get(j)) for j in counts.duplicated()
    }
    assert all(counts.anomaly_rows.get(j, 0) >= 1 for j in job_ids)  # the outlier at row 3
    assert early.succeeded() == set(sent_before_restore)
    assert recovery <= backoff_max + 15, f"recovery took {recovery:.1f} s"
    # ... and the retries backed off (a job retried more than once), each delay within
    # the upper half of its cap (equal jitter), the delays spread (jitter at all)
    assert max(n for _, n, _ in retries) >= 2, retries[:20]
    off = [r for r in retries if not in_jitter_band(retry=r[1], delay=r[2], maximum=backoff_max)]
    assert not off, f"retry delays outside [cap/2, cap] with cap = min({backoff_max}, 2**n): {off}"
    assert len({delay for _, _, delay in retries}) > 1, retries[:20]
    assert all(w.alive() for w in fault_stack.workers)
