"""What incident upkeep and notifications cost detection (issue #21: "the 1,000 small
jobs/s and bulk targets hold with three subscriptions configured").

One worker, one model. One-record jobs over 50 entities with record timestamps of now,
every 20th record an outlier, so incidents open and grow while the jobs run and the
workers fold, notify and deliver as they would in service. Measured as the small-job
section measures (latency at the offered rate, then a burst's throughput, both until
the result is visible) and a bulk file job, with three webhook subscriptions (to a
receiver in a process of its own that answers 200) and with none, alternated (with, without,
without, with) so a slow minute of the shared machine falls on both. Each variant also
reports what upkeep did: incidents opened, webhooks received, and how long after the
burst the inbox was empty (incidents caught up)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from celery import Celery
from sqlalchemy import func, select

from benchmarks.bulk import run_bulk
from benchmarks.config import IFOREST_MODEL
from benchmarks.inputs import Inputs
from benchmarks.jobs import Sent, publisher, result_client, send_detection
from benchmarks.models import train, warm_up
from benchmarks.progress import say
from benchmarks.receiver import CountingReceiver
from benchmarks.small_jobs import Kind, SmallJobRows, detect_kind, measure_kind
from benchmarks.stack import Stack, running_worker
from benchmarks.stats import median_at, ratio
from pynomaly_workers.adapters.stores.tables import IncidentInboxRow, IncidentRow
from pynomaly_workers.services.notifications import add_subscription

SUBSCRIPTIONS = 3
ENTITIES = 50
OUTLIER_EVERY = 20
ROUNDS = (None, True, False, False, True)
"""With subscriptions (True) or without, in this order; None: a warm-up round, not
reported (a fresh worker's first anomalies, incidents and deliveries)."""


@contextmanager
def subscribed(stack: Stack, receiver: CountingReceiver, *, on: bool) -> Iterator[None]:
    """Three subscriptions to the receiver for the block (none when ``on`` is false)."""
    names = [f"bench-{uuid.uuid4().hex[:6]}-{i}" for i in range(SUBSCRIPTIONS)] if on else []
    for name in names:
        add_subscription(stack.adapters, name=name, url=receiver.url)
    try:
        yield
    finally:
        for name in names:
            stack.adapters.store.remove_subscription(name)  # type: ignore[attr-defined]


def incident_kind(stack: Stack, app: Celery, width: int, *, round_: int) -> Kind:
    """One-record jobs naming one of 50 entities of this round (so each round opens its
    own incidents, and notifies of them), every 20th record an outlier."""
    outlier = [8.0] * width

    def make_sender(prefix: str, records: Sequence[list[float]]) -> Any:
        def send(i: int) -> Sent:
            record = outlier if i % OUTLIER_EVERY == 0 else records[i % len(records)]
            return send_detection(
                app,
                job_id=f"{prefix}{i:06d}",
                model=IFOREST_MODEL,
                records=[record],
                entities=[f"round-{round_}-entity-{i % ENTITIES}"],
            )

        return send

    return replace(detect_kind(stack, app), make_sender=make_sender)


def upkeep_figures(stack: Stack, since: Any, *, timeout: float) -> dict[str, Any]:
    """Seconds until the inbox was empty, and the incidents opened since ``since``."""
    started = time.perf_counter()
    with stack.engine.connect() as conn:
        while True:
            left = conn.execute(select(func.count()).select_from(IncidentInboxRow)).scalar()
            conn.commit()
            if not left or time.perf_counter() - started > timeout:
                break
            time.sleep(0.1)
        opened = conn.execute(
            select(func.count()).select_from(IncidentRow).where(IncidentRow.opened_at >= since)
        ).scalar()
    return {
        "inbox_left": int(left or 0),
        "inbox_empty_after_s": round(time.perf_counter() - started, 2),
        "incidents_opened": int(opened or 0),
    }


def run_incidents(stack: Stack, inputs: Inputs) -> dict[str, Any]:
    """The small-job and bulk figures with three subscriptions and with none."""
    receiver = CountingReceiver()
    runs: dict[str, list[dict[str, Any]]] = {"with": [], "without": []}
    try:
        with running_worker(stack, cache=True, name="worker-incidents") as worker:
            with result_client(stack.settings) as app:
                train(app, algorithms={IFOREST_MODEL: "iforest"}, source=inputs.training_csv)
            with publisher(stack.settings) as app:
                warm_up(stack, app, models=[IFOREST_MODEL], records=inputs.warmup, tag="inc")
                width = len(inputs.small_jobs.burst[0])
                for index, on in enumerate(ROUNDS):
                    kind = incident_kind(stack, app, width, round_=index)
                    figures = one_round(
                        stack,
                        app,
                        inputs,
                        kind,
                        receiver,
                        on=bool(on),
                        worker_pid=worker.process.pid,
                    )
                    if on is None:
                        continue
                    runs["with" if on else "without"].append(figures)
                    say(
                        f"incidents round {index} ({'with' if on else 'without'} "
                        f"subscriptions): {figures['result_jobs_per_s']} jobs/s to the "
                        f"results, p50 {figures['result_latency_ms']['p50']} ms, bulk "
                        f"{figures['bulk_records_per_s']} records/s, "
                        f"{figures['webhooks_received']} webhooks"
                    )
    finally:
        receiver.close()
    return summarize(runs)


def one_round(
    stack: Stack,
    app: Celery,
    inputs: Inputs,
    kind: Kind,
    receiver: CountingReceiver,
    *,
    on: bool,
    worker_pid: int,
) -> dict[str, Any]:
    rows: SmallJobRows = inputs.small_jobs
    with subscribed(stack, receiver, on=on):
        since = stack.adapters.clock.now()
        before = receiver.count
        figures = measure_kind(stack, app, kind, rows)
        bulk = run_bulk(
            stack,
            app,
            model=IFOREST_MODEL,
            source=inputs.bulk_csv,
            rows=stack.sizes.bulk_rows,
            worker_pid=worker_pid,
            sample=False,
        )["job"]
        figures |= upkeep_figures(stack, since, timeout=stack.sizes.patience(30))
        time.sleep(2.0)  # deliveries of the last incidents
        figures["webhooks_received"] = receiver.count - before
        figures["bulk_records_per_s"] = bulk["records_per_s"]
    return figures


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def median(variant: str, *path: str) -> float:
        return median_at(runs[variant], *path)

    out: dict[str, Any] = {"subscriptions": SUBSCRIPTIONS, "entities": ENTITIES}
    for variant, figures in runs.items():
        out[variant] = {
            "result_jobs_per_s": median(variant, "result_jobs_per_s"),
            "result_p50_ms": median(variant, "result_latency_ms", "p50"),
            "result_p99_ms": median(variant, "result_latency_ms", "p99"),
            "bulk_records_per_s": median(variant, "bulk_records_per_s"),
            "incidents_opened": [f["incidents_opened"] for f in figures],
            "webhooks_received": [f["webhooks_received"] for f in figures],
            "inbox_empty_after_s": [f["inbox_empty_after_s"] for f in figures],
        }
    with_, without = out["with"], out["without"]
    out["throughput_ratio_with_without"] = ratio(
        with_["result_jobs_per_s"], without["result_jobs_per_s"]
    )
    out["bulk_ratio_with_without"] = ratio(
        with_["bulk_records_per_s"], without["bulk_records_per_s"]
    )
    out["result_jobs_per_s"] = with_["result_jobs_per_s"]
    out["bulk_records_per_s"] = with_["bulk_records_per_s"]
    out["runs"] = runs
    return out
