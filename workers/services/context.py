"""What a service function is handed: the ports it may use, wired to adapters by
``pynomaly_workers.bootstrap``, plus the settings and a clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from pynomaly_workers.domain.alerting import AlertSink
from pynomaly_workers.domain.joblog import JobLine
from pynomaly_workers.domain.models import ModelVersion
from pynomaly_workers.domain.notifications import WebhookSender
from pynomaly_workers.domain.ports import (
    AlertingStore,
    DatabaseProbe,
    Isolation,
    JobLog,
    Maintenance,
    ModelLoader,
    NotificationStore,
    PredictionCache,
    Reads,
    SourceReader,
    Store,
    Suppressions,
    Telemetry,
    Trainer,
)
from pynomaly_workers.domain.records import Matrix
from pynomaly_workers.domain.scoring import Scores
from pynomaly_workers.domain.thresholds import AlertPrecision
from pynomaly_workers.settings import Settings


class Clock(Protocol):
    """Wall time for records, monotonic time for durations."""

    def now(self) -> datetime:
        """Current UTC time."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, never going back."""


class DriftObserver(Protocol):
    """Folds scored records into drift counts (see ``services/drift.py``)."""

    def observe(
        self, version: ModelVersion, matrix: Matrix, scores: Scores, *, now: datetime
    ) -> None:
        """Count the records a version scored."""

    def flush(self, *, now: datetime) -> None:
        """Store what was counted so far."""


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.perf_counter()


def _nothing() -> None:
    return None


T = TypeVar("T")


class InlineIsolation:
    """Runs the work right here (tests, and processes that do not mind keeping what it
    allocated)."""

    def run(self, work: Callable[[], T]) -> T:
        return work()


class NullTelemetry:
    """Reports nothing (tests, and processes that serve no metrics)."""

    def inference(self, *, backend: str, seconds: float) -> None:
        del backend, seconds

    def cache_lookup(self, *, hits: int, misses: int) -> None:
        del hits, misses

    def drift_checked(self, *, name: str, drifted_features: int, drifted: bool) -> None:
        del name, drifted_features, drifted

    def model_used(self, *, name: str, contamination: float) -> None:
        del name, contamination

    def model_cache(self, *, hit: bool, load_seconds: float, evicted: int) -> None:
        del hit, load_seconds, evicted

    def model_cache_size(self, *, models: int, nbytes: int) -> None:
        del models, nbytes

    def alert_precision(self, precision: AlertPrecision) -> None:
        del precision


class NullJobLog:
    """Drops every job line (``PYNOMALY_JOB_LOG=false``, and tests that do not look)."""

    enabled = False

    def finished(self, line: JobLine) -> None:
        del line


@dataclass(slots=True)
class Adapters:
    """The ports a service uses, each wired to a concrete adapter by
    ``pynomaly_workers.bootstrap`` (the only module that picks adapters)."""

    settings: Settings
    store: Store
    models: ModelLoader
    trainer: Trainer
    sources: SourceReader
    cache: PredictionCache | None
    clock: Clock
    maintenance: Maintenance
    reads: Reads
    database: DatabaseProbe
    drift: DriftObserver | None = None
    close: Callable[[], None] = field(default=_nothing)
    """Release connections and sockets (at shutdown, or the end of a test)."""
    forget_after_fork: Callable[[], None] = field(default=_nothing)
    """Drop inherited connections in a forked child without closing the parent's."""
    telemetry: Telemetry = field(default_factory=NullTelemetry)
    """Where inference time and cache lookups are reported."""
    isolation: Isolation = field(default_factory=InlineIsolation)
    """Where training runs, so its memory is given back when it ends."""
    job_log: JobLog = field(default_factory=NullJobLog)
    """Where each finished job's one log line goes."""
    alerting: AlertingStore | None = None
    """What Alertmanager was told about each incident (the store, on SQL)."""
    alertmanager: AlertSink | None = None
    """Alertmanager's API; None without ``PYNOMALY_ALERTMANAGER_URL``."""
    notifications: NotificationStore | None = None
    """Webhook subscriptions, notifications and their delivery attempts."""
    webhooks: WebhookSender | None = None
    """Signs and POSTs a notification to a subscription's URL."""
    suppressions: Suppressions | None = None
    """Suppression rules (the store's, and each model's live ones as last read); None:
    nothing is suppressed."""
