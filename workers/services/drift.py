"""Drift: is a model version still scoring data like the data it learned from?

While scoring, each worker process folds what it scores into the bins of the version's
training profile (:class:`DriftProfiler`), per time window, and adds the counts to
PostgreSQL every few seconds; no record is kept. The check (:func:`check_drift`, the
``pynomaly.maintenance.drift`` task and ``pynomaly-workers drift``) compares each
version's recent windows with its training profile:

* per feature, the population stability index and a chi-squared test of homogeneity
  between the training and recent bin counts, Benjamini-Hochberg-corrected across the
  version's features;
* the same for the distribution of anomaly scores;
* the share of flagged records against the training contamination (a binomial test).

A feature (or the score) has drifted when its corrected p-value is below
``PYNOMALY_DRIFT_ALPHA`` *and* its PSI reaches ``PYNOMALY_DRIFT_PSI_THRESHOLD``: with
thousands of records even a negligible shift is significant, so significance alone would
page people for nothing.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from threading import Event, Lock, Thread
from typing import Any
from weakref import WeakSet

import numpy as np
import numpy.typing as npt

from pynomaly_workers.domain.drift import (
    DriftCounts,
    benjamini_hochberg,
    population_stability_index,
)
from pynomaly_workers.domain.models import ModelVersion
from pynomaly_workers.domain.ports import DriftStore
from pynomaly_workers.domain.profile import Histogram, TrainingProfile, bin_counts
from pynomaly_workers.domain.records import Matrix
from pynomaly_workers.domain.scoring import Scores
from pynomaly_workers.domain.thresholds import score_edges
from pynomaly_workers.services.context import Adapters

log = logging.getLogger(__name__)
_MAX_EDGE_SETS = 10_000


def _utc_now() -> datetime:
    return datetime.now(UTC)


_PROFILERS: WeakSet[DriftProfiler] = WeakSet()


def _after_fork_in_child() -> None:
    """A forked child starts each profiler afresh: its locks may have been held by the
    parent's flusher thread at the fork, and what the parent counted is the parent's to
    store (the child storing it too would count it twice)."""
    for profiler in list(_PROFILERS):
        profiler._reset_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class DriftProfiler:
    """Folds scored records into per-(version, window) counts and adds them to the store
    every ``flush_seconds`` (counts of a process that dies before a flush are lost:
    monitoring, not accounting).

    The flush runs on a thread of the process, not inside the job that found it due: a
    worker serving many models adds hundreds of windows a flush (tens to hundreds of
    milliseconds), which held up the one-record job that happened to trigger it and
    every job queued behind it. A process's first flush comes at a random point of its
    first period, so the pool's processes, started together, do not all flush (and race
    to insert the same new windows) at once. With ``flush_seconds`` 0 every observation
    is stored before ``observe`` returns."""

    def __init__(
        self,
        store: DriftStore,
        *,
        window_seconds: int,
        flush_seconds: float,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.store = store
        self.window_seconds = window_seconds
        self.flush_seconds = flush_seconds
        self._clock = clock
        self._pending: dict[tuple[int, datetime], DriftCounts] = {}
        self._next_flush: datetime | None = None
        self._lock = Lock()
        self._storing = Lock()
        """Held while counts are written: a flush at exit waits for one in flight."""
        self._wake = Event()
        self._flusher: Thread | None = None
        self._edges: dict[int, npt.NDArray[np.float64]] = {}
        _PROFILERS.add(self)

    def _reset_in_child(self) -> None:
        self._lock, self._storing, self._wake = Lock(), Lock(), Event()
        self._flusher, self._pending, self._next_flush = None, {}, None

    def observe(
        self, version: ModelVersion, matrix: Matrix, scores: Scores, *, now: datetime
    ) -> None:
        """Count ``matrix`` and its ``scores`` for ``version`` (nothing without a profile)."""
        profile = version.profile
        if profile is None or len(matrix) == 0:
            return
        flagged = int(np.count_nonzero(scores > version.threshold))
        counts = profile.count(matrix, scores, n_flagged=flagged)
        counts.fine = bin_counts(np.asarray(scores, dtype=np.float64), self._fine_edges(version))
        key = (version.id, self._window(now))
        with self._lock:
            if key in self._pending:
                self._pending[key].add(counts)
            else:
                self._pending[key] = counts
            if self._next_flush is None:
                phase = random.uniform(0.0, self.flush_seconds)  # spreading, not secrecy
                self._next_flush = now + timedelta(seconds=phase)
            due = now >= self._next_flush
            if due:
                self._next_flush = now + timedelta(seconds=self.flush_seconds)
        if not due:
            return
        if self.flush_seconds <= 0:
            self.flush(now=now)
        else:
            self._flush_in_background()

    def _flush_in_background(self) -> None:
        """Wake this process's flusher thread (started on first use; a forked child
        starts its own)."""
        with self._lock:
            flusher = self._flusher
            if flusher is None or not flusher.is_alive():
                self._wake = Event()
                thread = Thread(target=self._flush_loop, args=(self._wake,), daemon=True)
                thread.name = "drift-flush"
                self._flusher = thread
                thread.start()
            wake = self._wake
        wake.set()

    def _flush_loop(self, wake: Event) -> None:
        while True:
            wake.wait()
            wake.clear()
            self.flush(now=self._clock())

    def _fine_edges(self, version: ModelVersion) -> npt.NDArray[np.float64]:
        """The version's fine score edges, computed once per process and version."""
        edges = self._edges.get(version.id)
        if edges is None:
            if len(self._edges) >= _MAX_EDGE_SETS:
                self._edges.clear()
            edges = self._edges[version.id] = score_edges(version.stats)
        return edges

    def flush(self, *, now: datetime) -> None:
        """Add what is pending to the store; on failure keep it for the next flush. A
        flush in flight on the flusher thread finishes first."""
        with self._storing:
            with self._lock:
                pending, self._pending = self._pending, {}
            if not pending:
                return
            try:
                self.store.add_drift_counts(pending, now=now)
            except Exception:
                log.warning("could not store drift counts; keeping them for the next flush")
                with self._lock:
                    for key, counts in pending.items():
                        if key in self._pending:
                            counts.add(self._pending[key])
                        self._pending[key] = counts

    def _window(self, now: datetime) -> datetime:
        seconds = int(now.timestamp()) // self.window_seconds * self.window_seconds
        return datetime.fromtimestamp(seconds, tz=now.tzinfo)


def check_drift(adapters: Adapters, *, model: str | None = None) -> list[dict[str, Any]]:
    """Compare each version's recent windows with its training profile; store and return
    one report per version that scored anything in the look-back period."""
    settings = adapters.settings
    now = adapters.clock.now()
    since = now - timedelta(hours=settings.drift_lookback_hours)
    windows = adapters.store.drift_windows(since=since)
    versions = {v.id: v for v in adapters.store.list_models(name=model)}
    reports = []
    for model_id, counts in sorted(windows.items()):
        version = versions.get(model_id)
        if version is None or version.profile is None:
            continue
        report = drift_report(
            version,
            version.profile,
            merge(counts),
            alpha=settings.drift_alpha,
            psi_threshold=settings.drift_psi_threshold,
            min_records=settings.drift_min_records,
        )
        report["window"] = {"since": since.isoformat(), "until": now.isoformat()}
        adapters.store.save_drift_report(model_id, report, drifted=report["drifted"], now=now)
        adapters.telemetry.drift_checked(
            name=version.name,
            drifted_features=sum(1 for f in report["features"] if f["drifted"]),
            drifted=report["drifted"],
        )
        reports.append(report)
    return reports


def merge(counts: list[DriftCounts]) -> DriftCounts:
    """All windows of a version added together."""
    total = DriftCounts(
        n_records=0,
        n_flagged=0,
        features=np.zeros_like(counts[0].features),
        scores=np.zeros_like(counts[0].scores),
    )
    for item in counts:
        total.add(item)
    return total


def drift_report(
    version: ModelVersion,
    profile: TrainingProfile,
    recent: DriftCounts,
    *,
    alpha: float,
    psi_threshold: float,
    min_records: int,
) -> dict[str, Any]:
    """The drift report of one version: per feature, the score, the flagged rate."""
    base: dict[str, Any] = {
        "model": version.name,
        "model_version": version.version,
        "n_records": recent.n_records,
        "training_rows": profile.n_rows,
    }
    if recent.n_records < min_records:
        return {**base, "status": "insufficient_data", "drifted": False, "features": []}
    features = [
        _compare(hist, recent.features[j, : len(hist.counts)])
        for j, hist in enumerate(profile.features)
    ]
    q_values = benjamini_hochberg([f["p_value"] for f in features])
    for j, (item, q) in enumerate(zip(features, q_values.tolist(), strict=True)):
        item["feature"] = profile.feature_label(j)
        item["q_value"] = q
        item["drifted"] = bool(q < alpha and item["psi"] >= psi_threshold)
    score = _compare(profile.scores, recent.scores)
    score["drifted"] = bool(score["p_value"] < alpha and score["psi"] >= psi_threshold)
    rate = _flag_rate(recent, version.stats.contamination, alpha=alpha)
    drifted = any(f["drifted"] for f in features) or score["drifted"] or rate["drifted"]
    return {
        **base,
        "status": "checked",
        "drifted": drifted,
        "features": [{"feature": f.pop("feature"), **f} for f in features],
        "score": score,
        "flag_rate": rate,
    }


def _compare(training: Histogram, recent: np.ndarray[Any, np.dtype[np.int64]]) -> dict[str, Any]:
    from scipy.stats import chi2_contingency  # type: ignore[import-untyped]

    table = np.vstack([np.asarray(training.counts), np.asarray(recent)])
    table = table[:, table.sum(axis=0) > 0]  # a bin empty on both sides says nothing
    if table.shape[1] < 2:
        chi2, p_value = 0.0, 1.0
    else:
        result = chi2_contingency(table, correction=False)
        chi2, p_value = float(result.statistic), float(result.pvalue)
    return {
        "psi": population_stability_index(training.counts, recent),
        "chi2": chi2,
        "p_value": p_value,
    }


def _flag_rate(recent: DriftCounts, contamination: float, *, alpha: float) -> dict[str, Any]:
    from scipy.stats import binomtest

    test = binomtest(recent.n_flagged, recent.n_records, contamination)
    return {
        "observed": recent.n_flagged / recent.n_records,
        "expected": contamination,
        "p_value": float(test.pvalue),
        "drifted": bool(test.pvalue < alpha),
    }
