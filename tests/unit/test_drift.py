"""Drift statistics and the drift report: a feature shifted by one standard deviation
is flagged, the others are not, and unshifted data flags nothing."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from pynomaly_workers.domain.drift import (
    DriftCounts,
    benjamini_hochberg,
    population_stability_index,
)
from pynomaly_workers.domain.models import ModelVersion
from pynomaly_workers.domain.profile import bin_counts, profile_training_data
from pynomaly_workers.domain.scoring import fit_score_stats
from pynomaly_workers.services.drift import DriftProfiler, drift_report

WIDTH, N_TRAIN, N_RECENT = 5, 20_000, 5_000


def test_psi_is_zero_for_the_same_shares_and_grows_with_the_shift() -> None:
    assert population_stability_index([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)
    small = population_stability_index([25, 25, 25, 25], [20, 25, 25, 30])
    large = population_stability_index([25, 25, 25, 25], [5, 15, 30, 50])
    assert 0 < small < 0.1 < large


def test_benjamini_hochberg_matches_the_textbook_adjustment() -> None:
    # R: p.adjust(c(0.01, 0.04, 0.03, 0.5), "BH") = 0.04 0.0533 0.0533 0.5
    adjusted = benjamini_hochberg([0.01, 0.04, 0.03, 0.5])
    np.testing.assert_allclose(adjusted, [0.04, 0.16 / 3, 0.16 / 3, 0.5])


def test_counts_add_up() -> None:
    a = DriftCounts(
        n_records=3, n_flagged=1, features=np.ones((2, 3), np.int64), scores=np.ones(4, np.int64)
    )
    a.add(DriftCounts.from_dict(a.to_dict()))
    assert (a.n_records, a.n_flagged, int(a.features.sum()), int(a.scores.sum())) == (6, 2, 12, 8)


def version_and_profile(seed: int = 0) -> tuple[ModelVersion, np.ndarray]:
    rng = np.random.default_rng(seed)
    training = rng.normal(size=(N_TRAIN, WIDTH))
    scores = np.abs(training).sum(axis=1)  # any score will do for the histogram
    stats = fit_score_stats(scores, contamination=0.05)
    profile = profile_training_data(training, scores, names=tuple(f"s{j}" for j in range(WIDTH)))
    version = ModelVersion(
        id=1, name="m", version=1, algorithm="x", artifact_sha256="0" * 64, onnx_sha256=None,
        n_features=WIDTH, stats=stats, profile=profile,
    )  # fmt: skip
    return version, training


def report_for(recent: np.ndarray, version: ModelVersion) -> dict[str, object]:
    assert version.profile is not None
    scores = np.abs(recent).sum(axis=1)
    counts = version.profile.count(
        recent, scores, n_flagged=int((scores > version.threshold).sum())
    )
    return drift_report(
        version, version.profile, counts, alpha=0.01, psi_threshold=0.1, min_records=500
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_unshifted_data_flags_nothing(seed: int) -> None:
    version, _ = version_and_profile()
    recent = np.random.default_rng(seed).normal(size=(N_RECENT, WIDTH))

    report = report_for(recent, version)

    assert report["drifted"] is False
    assert [f["drifted"] for f in report["features"]] == [False] * WIDTH  # type: ignore[attr-defined]


@pytest.mark.parametrize("feature", [0, 3])
def test_a_one_sigma_shift_flags_that_feature_only(feature: int) -> None:
    version, _ = version_and_profile()
    recent = np.random.default_rng(7).normal(size=(N_RECENT, WIDTH))
    recent[:, feature] += 1.0

    report = report_for(recent, version)

    features = report["features"]
    assert isinstance(features, list)
    assert [f["feature"] for f in features if f["drifted"]] == [f"s{feature}"]
    assert report["drifted"] is True
    shifted = features[feature]
    assert shifted["psi"] > 0.25
    assert shifted["q_value"] < 1e-6


def test_too_few_records_are_not_judged() -> None:
    version, _ = version_and_profile()
    report = report_for(np.zeros((100, WIDTH)), version)

    assert (report["status"], report["drifted"]) == ("insufficient_data", False)


@pytest.mark.parametrize("with_nan", [False, True])
@pytest.mark.parametrize("n_rows", [2_000, 20_000], ids=["one-block", "blocks-and-a-part"])
def test_folding_a_matrix_counts_each_feature_as_binning_its_column_would(
    with_nan: bool, n_rows: int
) -> None:
    # Given a profile whose features have different numbers of edges (a constant
    # feature collapses to one), and rows that sit exactly on edges
    rng = np.random.default_rng(7)
    training = rng.normal(size=(500, 5))
    training[:, 2] = 1.5
    training[:, 4] = np.round(training[:, 4])
    profile = profile_training_data(training, rng.normal(size=500))
    assert len({len(h.edges) for h in profile.features}) > 1
    rows = rng.normal(size=(n_rows, 5))
    rows[:50] = rows[-50:] = np.array([[h.edges[0] for h in profile.features]])
    rows[:, 4] = np.round(rows[:, 4])
    if with_nan:
        rows[7, 1] = np.nan

    # When the rows are folded into the profile's bins
    counts = profile.count(rows, rng.normal(size=n_rows), n_flagged=3)

    # Then each feature's counts are those of binning its column alone
    for j, hist in enumerate(profile.features):
        alone = bin_counts(rows[:, j], hist.edges)
        np.testing.assert_array_equal(counts.features[j, : len(alone)], alone)
        assert counts.features[j, len(alone) :].sum() == 0
    assert counts.n_records == n_rows


class RecordingStore:
    """A drift store that records each flush, optionally holding it until released."""

    def __init__(self, *, hold: bool = False) -> None:
        self.flushes: list[tuple[threading.Thread, dict[Any, DriftCounts]]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def add_drift_counts(self, counts: Any, *, now: datetime) -> None:
        self.entered.set()
        assert self.release.wait(5.0)
        self.flushes.append((threading.current_thread(), dict(counts)))


def observe_one(profiler: DriftProfiler, version: ModelVersion, now: datetime) -> None:
    rows = np.zeros((1, WIDTH))
    profiler.observe(version, rows, np.abs(rows).sum(axis=1), now=now)


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)


def held_profiler(seconds: int) -> tuple[ModelVersion, RecordingStore, DriftProfiler]:
    """A profiler flushing every 10 s into a store that holds each flush, after one
    record a second for ``seconds`` seconds (past its first flush's random moment)."""
    version, _ = version_and_profile()
    store = RecordingStore(hold=True)
    profiler = DriftProfiler(store, window_seconds=3600, flush_seconds=10)  # type: ignore[arg-type]
    for second in range(seconds):
        observe_one(profiler, version, NOW + timedelta(seconds=second))
    return version, store, profiler


def test_a_due_flush_is_stored_by_the_flusher_thread_not_by_the_observing_job() -> None:
    # Given a profiler flushing every 10 s, with a store that holds each flush
    # When observations run past the first flush's (random) moment in the first period
    _, store, _ = held_profiler(12)

    # Then observing returned while the flush was still held, and the flush runs on
    # another thread
    assert store.entered.wait(5.0)
    assert not store.flushes
    store.release.set()
    wait_for(lambda: len(store.flushes) == 1)
    thread, counts = store.flushes[0]
    assert thread is not threading.current_thread()
    assert thread.name == "drift-flush"
    assert sum(c.n_records for c in counts.values()) >= 1


def test_a_flush_at_exit_waits_for_the_one_in_flight_and_stores_the_rest() -> None:
    # Given a background flush held in the store, and more counted meanwhile
    version, store, profiler = held_profiler(11)
    assert store.entered.wait(5.0)
    observe_one(profiler, version, NOW + timedelta(seconds=11))

    # When the process flushes at exit (while the background flush is held)
    exiting = threading.Thread(target=profiler.flush, kwargs={"now": NOW})
    exiting.start()
    time.sleep(0.1)
    assert exiting.is_alive()  # waiting for the flush in flight
    store.release.set()
    exiting.join(5.0)

    # Then both flushes were stored, every record counted once
    assert len(store.flushes) == 2
    assert sum(c.n_records for _, flush in store.flushes for c in flush.values()) == 12


def test_with_flush_seconds_zero_each_observation_is_stored_before_observe_returns() -> None:
    version, _ = version_and_profile()
    store = RecordingStore()
    profiler = DriftProfiler(store, window_seconds=3600, flush_seconds=0)  # type: ignore[arg-type]

    observe_one(profiler, version, NOW)

    assert [thread for thread, _ in store.flushes] == [threading.current_thread()]


def test_the_pool_processes_first_flushes_are_spread_over_the_first_period() -> None:
    # Given ten profilers (processes) seeing the same traffic from the same moment, a
    # record a second
    version, _ = version_and_profile()
    first: list[int] = []
    for _ in range(10):
        profiler = DriftProfiler(RecordingStore(), window_seconds=3600, flush_seconds=10)  # type: ignore[arg-type]
        asked = threading.Event()
        profiler._flush_in_background = asked.set  # type: ignore[method-assign]
        second = 0
        observe_one(profiler, version, NOW)
        while not asked.is_set() and second < 10:
            second += 1
            observe_one(profiler, version, NOW + timedelta(seconds=second))
        assert asked.is_set()
        first.append(second)

    # Then their first flushes fall within the first period, not all at the first record
    assert len(set(first)) > 1
    assert max(first) <= 10
