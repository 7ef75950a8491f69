"""Prometheus metrics of the workers, served at ``/metrics`` on ``PYNOMALY_METRICS_PORT``.

Celery's prefork pool runs tasks in child processes, so the counters use
prometheus-client's multiprocess mode: every process writes to files under
``PROMETHEUS_MULTIPROC_DIR`` and the worker's main process serves their sum. The
``worker`` command sets that folder (``cli.py``); without it (tests, other commands) the
metrics are plain in-process counters. Nothing is created at import: :func:`get_metrics`
builds the metrics on first use, after the folder is known, whatever was imported first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from prometheus_client import Counter, Histogram


@dataclass(frozen=True, slots=True)
class Metrics:
    """The metrics a worker process records."""

    jobs: Counter
    records: Counter
    anomalies: Counter
    cache_hits: Counter
    batch_jobs: Histogram
    batch_seconds: Histogram
    chunk_seconds: Histogram
    retries: Counter


@lru_cache(maxsize=1)
def get_metrics() -> Metrics:
    """This process's metrics, created on first use."""
    from prometheus_client import values

    # prometheus-client picks in-process or multiprocess values when it is imported;
    # choose again now, so the choice follows PROMETHEUS_MULTIPROC_DIR, not import order.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return Metrics(
        jobs=Counter("pynomaly_jobs", "Detection jobs finished, by outcome.", ["outcome"]),
        records=Counter("pynomaly_records_scored", "Records scored by detection jobs."),
        anomalies=Counter("pynomaly_anomalies", "Anomalies found by detection jobs."),
        cache_hits=Counter(
            "pynomaly_cache_hits", "Rows whose score came from the prediction cache."
        ),
        batch_jobs=Histogram(
            "pynomaly_batch_jobs",
            "Detection messages per micro-batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        ),
        batch_seconds=Histogram(
            "pynomaly_batch_seconds",
            "Time to process one micro-batch of detection messages.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
        ),
        chunk_seconds=Histogram(
            "pynomaly_chunk_seconds",
            "Time to score and write one chunk of a fanned-out job.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        ),
        retries=Counter(
            "pynomaly_retries", "Detection messages re-published after a transient error."
        ),
    )


def serve(port: int) -> None:
    """Serve the summed metrics of every process of this worker on ``port``."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, registry=registry)


def process_exited(pid: int) -> None:
    """Drop a finished pool process's live gauges (counters are kept)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
