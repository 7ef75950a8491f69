"""Prometheus metrics of the workers, served at ``/metrics`` on ``PYNOMALY_METRICS_PORT``.

Celery's prefork pool runs tasks in child processes, so the metrics use
prometheus-client's multiprocess mode: every process writes to files under
``PROMETHEUS_MULTIPROC_DIR`` and the worker's main process serves their sum. The
``worker`` command sets that folder (``cli/processes.py``); without it (tests, other commands) the
metrics are plain in-process metrics. Nothing is created at import: :func:`get_metrics`
builds the metrics on first use, after the folder is known, whatever was imported first.

Every exported name is listed in :data:`METRIC_NAMES` (the README's table, the alert
rules and the dashboard use exactly these; the tests check all three against a live
``/metrics``).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

# Per-model series are bounded: past this many model names a process reports "other".
MAX_MODEL_LABELS = 50
OTHER_MODEL = "other"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


@dataclass(frozen=True, slots=True)
class Metrics:
    """The metrics a worker process records."""

    jobs: Counter
    job_seconds: Histogram
    queue_wait: Histogram
    records: Counter
    anomalies: Counter
    anomalies_suppressed: Counter
    model_contamination: Gauge
    model_drifted: Gauge
    model_drifted_features: Gauge
    inference_seconds: Histogram
    batch_size: Histogram
    batch_seconds: Histogram
    chunk_seconds: Histogram
    cache_hits: Counter
    cache_misses: Counter
    retries: Counter
    training_runs: Counter
    training_seconds: Histogram
    maintenance_runs: Counter
    maintenance_last_success: Gauge
    beat_last_tick: Gauge
    queue_length: Gauge
    model_cache_hits: Counter
    model_cache_misses: Counter
    model_cache_evictions: Counter
    model_load_seconds: Histogram
    model_cache_models: Gauge
    model_cache_bytes: Gauge
    malformed_dropped: Counter
    broker_recovered: Counter
    worker_up: Gauge
    alertmanager_posts: Counter
    incidents: Counter
    notifications: Counter
    webhook_seconds: Histogram
    alert_labelled: Gauge
    alert_precision: Gauge


METRIC_NAMES: dict[str, str] = {
    # name as exported (histograms add _bucket/_sum/_count, counters _total): labels
    "pynomaly_jobs_total": "queue, outcome",
    "pynomaly_job_duration_seconds": "queue",
    "pynomaly_queue_wait_seconds": "queue",
    "pynomaly_records_scored_total": "model",
    "pynomaly_anomalies_total": "model",
    "pynomaly_anomalies_suppressed_total": "model",
    "pynomaly_model_contamination": "model",
    "pynomaly_model_drifted": "model",
    "pynomaly_model_drifted_features": "model",
    "pynomaly_inference_seconds": "backend",
    "pynomaly_batch_size": "",
    "pynomaly_batch_seconds": "",
    "pynomaly_chunk_seconds": "",
    "pynomaly_cache_hits_total": "",
    "pynomaly_cache_misses_total": "",
    "pynomaly_retries_total": "",
    "pynomaly_training_runs_total": "outcome",
    "pynomaly_training_seconds": "",
    "pynomaly_maintenance_runs_total": "task, outcome",
    "pynomaly_maintenance_last_success_timestamp_seconds": "task",
    "pynomaly_beat_last_tick_timestamp_seconds": "",
    "pynomaly_queue_length": "queue",
    "pynomaly_model_cache_hits_total": "",
    "pynomaly_model_cache_misses_total": "",
    "pynomaly_model_cache_evictions_total": "",
    "pynomaly_model_load_seconds": "",
    "pynomaly_model_cache_models": "",
    "pynomaly_model_cache_bytes": "",
    "pynomaly_malformed_messages_dropped_total": "",
    "pynomaly_broker_recovered_messages_total": "",
    "pynomaly_worker_up": "",
    "pynomaly_alertmanager_posts_total": "outcome",
    "pynomaly_incidents_total": "event",
    "pynomaly_notifications_total": "event, outcome",
    "pynomaly_webhook_duration_seconds": "",
    "pynomaly_alert_labelled": "model, version, flags",
    "pynomaly_alert_precision": "model, version, flags",
}


_metrics_lock = threading.Lock()
_created: list[Metrics] = []


@lru_cache(maxsize=1)
def get_metrics() -> Metrics:
    """This process's metrics, created on first use, by one thread: threads that miss
    the cache together get the same object (a second creation would find the names
    registered and raise ``DuplicateTimeseries``)."""
    with _metrics_lock:
        if not _created:
            _created.append(_with_known_labels(_create_metrics()))
        return _created[0]


INCIDENT_EVENTS = ("opened", "grown", "resolved")
ALERT_FLAGS = ("stored", "shadow")
"""``flags`` of the alert precision gauges: a version's stored anomalies, or its shadow
flags as challenger."""


def _with_known_labels(metrics: Metrics) -> Metrics:
    """Export the incident and notification counters at 0 for every label value they
    can take, before the first event: an alert on ``increase()`` of a series that
    appears with its first failure would never see that failure."""
    from pynomaly_workers.domain.notifications import EVENTS, OUTCOMES

    for event in EVENTS:
        for outcome in OUTCOMES:
            metrics.notifications.labels(event=event, outcome=outcome)
    for change in INCIDENT_EVENTS:
        metrics.incidents.labels(event=change)
    return metrics


def _create_metrics() -> Metrics:
    from prometheus_client import values

    # prometheus-client picks in-process or multiprocess values when it is imported;
    # choose again now, so the choice follows PROMETHEUS_MULTIPROC_DIR, not import order.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return Metrics(
        jobs=Counter("pynomaly_jobs", "Jobs finished, by queue and outcome.", ["queue", "outcome"]),
        job_seconds=Histogram(
            "pynomaly_job_duration_seconds",
            "Time from a job's start on a worker to its outcome.",
            ["queue"],
            buckets=LATENCY_BUCKETS,
        ),
        queue_wait=Histogram(
            "pynomaly_queue_wait_seconds",
            "Time from publishing a job (its sent_at header) to its start on a worker.",
            ["queue"],
            buckets=WAIT_BUCKETS,
        ),
        records=Counter("pynomaly_records_scored", "Records scored, by model name.", ["model"]),
        anomalies=Counter("pynomaly_anomalies", "Anomalies found, by model name.", ["model"]),
        anomalies_suppressed=Counter(
            "pynomaly_anomalies_suppressed",
            "Of the anomalies found, those a suppression rule matched, by model name.",
            ["model"],
        ),
        model_contamination=Gauge(
            "pynomaly_model_contamination",
            "Training contamination of the model version last used, by model name.",
            ["model"],
            multiprocess_mode="max",
        ),
        model_drifted=Gauge(
            "pynomaly_model_drifted",
            "1 if the model's last drift check found drift (features, scores or flagged rate).",
            ["model"],
            multiprocess_mode="mostrecent",
        ),
        model_drifted_features=Gauge(
            "pynomaly_model_drifted_features",
            "Features the model's last drift check found drifted.",
            ["model"],
            multiprocess_mode="mostrecent",
        ),
        inference_seconds=Histogram(
            "pynomaly_inference_seconds",
            "Time in the scorer (model inference), by backend.",
            ["backend"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
        ),
        batch_size=Histogram(
            "pynomaly_batch_size",
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
        cache_hits=Counter("pynomaly_cache_hits", "Rows whose score came from the cache."),
        cache_misses=Counter(
            "pynomaly_cache_misses", "Rows looked up in the cache and not found there."
        ),
        retries=Counter(
            "pynomaly_retries", "Detection messages re-published after a transient error."
        ),
        training_runs=Counter("pynomaly_training_runs", "Training runs, by outcome.", ["outcome"]),
        training_seconds=Histogram(
            "pynomaly_training_seconds",
            "Time to fit, export and register one model version.",
            buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
        ),
        maintenance_runs=Counter(
            "pynomaly_maintenance_runs",
            "Maintenance runs, by task and outcome (succeeded, skipped, failed).",
            ["task", "outcome"],
        ),
        maintenance_last_success=Gauge(
            "pynomaly_maintenance_last_success_timestamp_seconds",
            "Unix time each maintenance task last succeeded (alert on time() - this).",
            ["task"],
            multiprocess_mode="max",
        ),
        beat_last_tick=Gauge(
            "pynomaly_beat_last_tick_timestamp_seconds",
            "Unix time beat's last tick message was consumed (alert on time() - this).",
            multiprocess_mode="max",
        ),
        queue_length=Gauge(
            "pynomaly_queue_length",
            "Messages waiting in each broker queue, sampled by the worker's main process.",
            ["queue"],
            multiprocess_mode="mostrecent",
        ),
        malformed_dropped=Counter(
            "pynomaly_malformed_messages_dropped",
            "Broker messages dropped because they were not a decodable task envelope.",
        ),
        broker_recovered=Counter(
            "pynomaly_broker_recovered_messages",
            "Redis messages requeued because the consumer holding them stopped heartbeating.",
        ),
        model_cache_hits=Counter(
            "pynomaly_model_cache_hits", "Model version loads served by a process's cache."
        ),
        model_cache_misses=Counter(
            "pynomaly_model_cache_misses", "Model versions loaded into a process (not cached)."
        ),
        model_cache_evictions=Counter(
            "pynomaly_model_cache_evictions",
            "Model versions dropped from a process's cache to stay within PYNOMALY_MODEL_CACHE_MB.",
        ),
        model_load_seconds=Histogram(
            "pynomaly_model_load_seconds",
            "Time to load a model version into a process (a cache miss).",
            buckets=LATENCY_BUCKETS,
        ),
        model_cache_models=Gauge(
            "pynomaly_model_cache_models",
            "Model versions kept loaded, summed over the worker's live processes.",
            multiprocess_mode="livesum",
        ),
        model_cache_bytes=Gauge(
            "pynomaly_model_cache_bytes",
            "Bytes the loaded model versions hold, summed over the worker's live processes "
            "(memory-mapped forest arrays count in every process that maps them).",
            multiprocess_mode="livesum",
        ),
        worker_up=Gauge(
            "pynomaly_worker_up",
            "1 while the worker's consumer runs.",
            multiprocess_mode="livemax",
        ),
        incidents=Counter(
            "pynomaly_incidents",
            "Incident upkeep: incidents opened, grown (new anomalies joined) and resolved.",
            ["event"],
        ),
        alertmanager_posts=Counter(
            "pynomaly_alertmanager_posts",
            "Posts of incident alerts to Alertmanager, by outcome (sent, rejected, unavailable).",
            ["outcome"],
        ),
        notifications=Counter(
            "pynomaly_notifications",
            "Webhook delivery attempts, by incident event and outcome (delivered, retried, "
            "failed, disabled).",
            ["event", "outcome"],
        ),
        webhook_seconds=Histogram(
            "pynomaly_webhook_duration_seconds",
            "Time one webhook POST took, until the receiver answered or the attempt failed.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        ),
        alert_labelled=Gauge(
            "pynomaly_alert_labelled",
            "Labelled alerts of a model version: its stored anomalies (flags=stored), or its "
            "shadow flags as challenger whose record the champion stored and someone "
            "labelled (flags=shadow); counted by the drift maintenance run.",
            ["model", "version", "flags"],
            multiprocess_mode="mostrecent",
        ),
        alert_precision=Gauge(
            "pynomaly_alert_precision",
            "Share of a model version's labelled alerts (see pynomaly_alert_labelled) whose "
            "newest label is 'anomaly'.",
            ["model", "version", "flags"],
            multiprocess_mode="mostrecent",
        ),
    )


def model_label(name: str) -> str:
    """``name`` as a label value, or "other" once this process has seen too many."""
    with _models_lock:
        if name in _models_seen or len(_models_seen) < MAX_MODEL_LABELS:
            _models_seen.add(name)
            return name
    return OTHER_MODEL


_models_seen: set[str] = set()
_models_lock = threading.Lock()


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


def remove_stale_folders(parent: Path, *, keep: Path) -> list[Path]:
    """Delete the metric folders of earlier worker runs under ``parent`` (one folder per
    worker pid): their counters were already scraped, and left alone they pile up."""
    import shutil

    removed = []
    for folder in parent.iterdir() if parent.is_dir() else ():
        if folder.is_dir() and folder.resolve() != keep.resolve() and not _running(folder.name):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _running(name: str) -> bool:
    if not name.isdigit():
        return False
    try:
        os.kill(int(name), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
