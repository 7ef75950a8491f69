"""What a service function is handed: the adapters, the settings and a clock."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from pynomaly_workers.adapters.scorers.loader import ModelLoader
from pynomaly_workers.adapters.stores.maintenance import SqlMaintenance
from pynomaly_workers.adapters.stores.reads import SqlReads
from pynomaly_workers.domain.ports import PredictionCache, SourceReader, Store
from pynomaly_workers.settings import Settings


class Clock(Protocol):
    """Wall time for records, monotonic time for durations."""

    def now(self) -> datetime:
        """Current UTC time."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, never going back."""


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.perf_counter()


@dataclass(slots=True)
class Services:
    """The adapters wired for this process (see ``pynomaly_workers.bootstrap``)."""

    settings: Settings
    store: Store
    models: ModelLoader
    sources: SourceReader
    cache: PredictionCache | None
    clock: Clock
    maintenance: SqlMaintenance
    reads: SqlReads
