"""Scorer backends reproduce scikit-learn; calibration picks the fastest per batch size."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from pynomaly_workers.adapters.scorers import loader as loader_module
from pynomaly_workers.adapters.scorers import sklearn
from pynomaly_workers.adapters.scorers.forest import ForestScorer
from pynomaly_workers.adapters.scorers.loader import (
    BUILD_AFTER_CALLS,
    Calibration,
    LazyScorer,
    LoadedModel,
    ModelLoader,
    calibrate,
    measure_backends,
)
from pynomaly_workers.adapters.scorers.onnx import MAX_ROWS_PER_CALL, OnnxScorer, export
from pynomaly_workers.domain.models import ModelVersion
from pynomaly_workers.domain.ports import ModelStore, Scorer
from pynomaly_workers.domain.scoring import fit_score_stats


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(3)
    return rng.normal(size=(3000, 6)), rng.normal(size=(2500, 6)) * 1.7


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"max_features": 0.5},
        {"max_samples": 1000, "n_estimators": 30},
        {"bootstrap": True, "n_estimators": 10},
    ],
)
@pytest.mark.parametrize("walk", [True, False], ids=["c-walk", "numpy-walk"])
def test_the_forest_walk_equals_scikit_learn(
    data: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]], params: dict[str, Any], walk: bool
) -> None:
    # Given a fitted IsolationForest
    train, rows = data
    estimator = IsolationForest(random_state=0, contamination=0.02, **params).fit(train)

    # When both evaluate the same rows, one at a time and all together
    reference = sklearn.SklearnScorer(estimator).score(rows)
    forest = ForestScorer(estimator, walk=walk)
    assert (forest.max_rows is None) == walk

    # Then the scores agree to rounding; the C walk's, bit for bit (2,500 rows: five
    # more than a multiple of its eight lanes, so the tail loop is checked too)
    if walk:
        np.testing.assert_array_equal(forest.score(rows[:2500]), reference[:2500])
        np.testing.assert_array_equal(forest.score(rows[:13]), reference[:13])
    assert np.max(np.abs(forest.score(rows) - reference)) < 1e-12
    assert forest.score(rows[:1])[0] == pytest.approx(reference[0], abs=1e-12)


def test_the_c_walk_thresholds_round_so_float32_rows_split_as_in_scikit_learn(
    data: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]],
) -> None:
    # Given rows that sit exactly on, and one float32 step either side of, every split
    train, _ = data
    estimator = IsolationForest(random_state=0, n_estimators=5).fit(train)
    forest = ForestScorer(estimator)
    tree = estimator.estimators_[0].tree_
    inner = np.flatnonzero(tree.children_left != -1)
    on = tree.threshold[inner].astype(np.float32)
    near = np.concatenate(
        [on, np.nextafter(on, np.float32(np.inf)), np.nextafter(on, np.float32(-np.inf))]
    )
    rows = np.tile(np.median(train, axis=0), (len(near), 1))
    rows[np.arange(len(near)), np.tile(tree.feature[inner], 3)] = near

    # Then the C walk's scores are scikit-learn's, bit for bit
    np.testing.assert_array_equal(forest.score(rows), sklearn.SklearnScorer(estimator).score(rows))


def test_the_c_walk_refuses_rows_of_another_width(
    data: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]],
) -> None:
    train, rows = data
    forest = ForestScorer(IsolationForest(random_state=0, n_estimators=5).fit(train))
    with pytest.raises(ValueError, match="6 features"):
        forest.score(rows[:, :5])


def test_numpy_forest_only_claims_isolation_forests() -> None:
    from sklearn.svm import OneClassSVM

    assert not ForestScorer.supports(OneClassSVM())
    assert not ForestScorer.supports(IsolationForest())  # not fitted


def test_onnx_scores_large_batches_in_slices_identically(
    data: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]],
) -> None:
    train, rows = data
    estimator = IsolationForest(random_state=0, n_estimators=20).fit(train)
    content = export(estimator, n_features=6)
    assert content is not None
    onnx = OnnxScorer(content)
    assert len(rows) > MAX_ROWS_PER_CALL

    sliced = onnx.score(rows)

    assert sliced.shape == (len(rows),)
    assert np.array_equal(sliced[:100], onnx.score(rows[:100]))
    assert np.max(np.abs(sliced - sklearn.SklearnScorer(estimator).score(rows))) < 1e-4


def test_calibration_picks_the_fastest_backend_per_size() -> None:
    calibration = Calibration(
        sizes=(1, 64, 2048),
        seconds={"sklearn": (5e-3, 6e-3, 8e-3), "forest": (1e-4, 1e-3, 3e-2)},
    )

    assert calibration.best(1) == "forest"
    assert calibration.best(50) == "forest"
    assert calibration.best(1000) == "sklearn"
    assert calibration.best(10**6) == "sklearn"
    assert calibration.row_cost_us() == pytest.approx(8e-3 / 2048 * 1e6)


def test_a_backend_that_wins_no_size_is_pruned() -> None:
    # Given ONNX timed slower than another backend at every size
    calibration = Calibration(
        sizes=(1, 64, 2048),
        seconds={
            "sklearn": (5e-3, 6e-3, 8e-3),
            "forest": (1e-4, 1e-3, 3e-2),
            "onnx": (2e-4, 2e-3, 4e-2),
        },
    )

    # Then it is dropped, and the choices per size do not change
    pruned = calibration.pruned()
    assert set(pruned.seconds) == {"sklearn", "forest"}
    assert [pruned.best(n) for n in (1, 64, 2048)] == [calibration.best(n) for n in (1, 64, 2048)]


def forest_version(reference: Scorer, train: np.ndarray[Any, Any]) -> ModelVersion:
    """A six-feature IsolationForest version whose statistics come from ``reference``."""
    return ModelVersion(
        id=1,
        name="m",
        version=1,
        algorithm="iforest",
        artifact_sha256="x" * 64,
        onnx_sha256=None,
        n_features=6,
        stats=fit_score_stats(reference.score(train), contamination=0.02),
    )


def test_a_loaded_model_uses_the_calibrated_choice(
    data: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]],
) -> None:
    train, _ = data
    estimator = IsolationForest(random_state=0, n_estimators=20).fit(train)
    scorers: dict[str, Scorer] = {
        "sklearn": sklearn.SklearnScorer(estimator),
        "forest": ForestScorer(estimator),
    }
    calibration = calibrate(scorers, n_features=6)
    version = forest_version(scorers["sklearn"], train)
    loaded = LoadedModel(version=version, scorers=scorers, calibration=calibration)

    for n in (1, 64, 2048):
        assert loaded.scorer_for(n) is scorers[calibration.best(n)]
    assert set(calibration.seconds) == {"sklearn", "forest"}


def test_the_numpy_walk_never_gets_a_batch_past_its_limit_whatever_calibration_says(
    data: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]],
) -> None:
    # Given a calibration that found the padded NumPy walk (no C walk) fastest at every size
    train, _ = data
    estimator = IsolationForest(random_state=0, n_estimators=20).fit(train)
    scorers: dict[str, Scorer] = {
        "sklearn": sklearn.SklearnScorer(estimator),
        "forest": ForestScorer(estimator, walk=False),
    }
    calibration = Calibration(
        sizes=(1, 64, 2048), seconds={"sklearn": (1.0, 1.0, 1.0), "forest": (0.1, 0.1, 0.1)}
    ).pruned()
    version = forest_version(scorers["sklearn"], train)
    loaded = LoadedModel(version=version, scorers=scorers, calibration=calibration)

    # Then it scores small batches, and a 100,000-row chunk goes to scikit-learn
    assert loaded.scorer_for(64) is scorers["forest"]
    assert loaded.scorer_for(ForestScorer.PADDED_MAX_ROWS) is scorers["forest"]
    assert loaded.scorer_for(100_000) is scorers["sklearn"]


class _Recording:
    backend = "recording"

    def __init__(self) -> None:
        self.rows: list[np.ndarray[Any, Any]] = []

    def score(self, matrix: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        self.rows.append(np.asarray(matrix))
        return np.zeros(len(matrix))


def test_calibration_rows_are_drawn_around_the_training_data() -> None:
    # Given a model of data centred on 1,000 with a scale of 50
    from pynomaly_workers.domain.profile import profile_training_data

    rng = np.random.default_rng(5)
    train = 1_000 + 50 * rng.normal(size=(5_000, 3))
    profile = profile_training_data(train, rng.normal(size=5_000))
    recording = _Recording()

    calibrate({"recording": recording}, n_features=3, profile=profile)

    # Then it was timed on rows like the data, not on N(0, 1)
    largest = recording.rows[-1]
    assert len(largest) == 2048
    np.testing.assert_allclose(np.median(largest, axis=0), 1_000, atol=10)
    np.testing.assert_allclose(np.std(largest, axis=0), 50, rtol=0.15)


T = TypeVar("T")


class _Artifacts:
    """The one store method a loader uses: artifact bytes by sha256."""

    def __init__(self, artifacts: dict[str, bytes]) -> None:
        self.artifacts = artifacts

    def load_artifact(self, sha256: str) -> bytes:
        return self.artifacts[sha256]


class _Measured:
    """An isolation that reports a fixed measurement instead of timing (deterministic)."""

    def __init__(self, winners: tuple[str, ...]) -> None:
        self.winners = winners

    def run(self, work: Callable[[], T]) -> T:
        del work
        seconds: dict[str, tuple[float, ...]] = {b: (1.0, 1.0, 1.0) for b in self.winners}
        return cast(T, Calibration(sizes=(1, 64, 2048), seconds=seconds))


@pytest.mark.parametrize(
    ("winners", "sessions"), [(("sklearn", "forest"), 0), (("onnx", "sklearn"), 1)]
)
def test_an_onnx_session_is_built_only_when_calibration_picks_onnx(
    data: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]],
    monkeypatch: pytest.MonkeyPatch,
    winners: tuple[str, ...],
    sessions: int,
) -> None:
    # Given an IsolationForest version with a parity-checked ONNX export
    train, _ = data
    estimator = IsolationForest(random_state=0, n_estimators=10).fit(train)
    onnx = export(estimator, n_features=6)
    assert onnx is not None
    version = dataclasses.replace(
        forest_version(sklearn.SklearnScorer(estimator), train), onnx_sha256="o" * 64
    )
    store = _Artifacts({"x" * 64: sklearn.dump(estimator), "o" * 64: onnx})
    built: list[OnnxScorer] = []

    class Counted(OnnxScorer):
        def __init__(self, content: bytes, *, threads: int = 1) -> None:
            super().__init__(content, threads=threads)
            built.append(self)

    monkeypatch.setattr(loader_module, "OnnxScorer", Counted)

    # When a loader whose measurement (done elsewhere) names the winners loads it,
    # and it scores single rows for a while
    loader = ModelLoader(cast(ModelStore, store), capacity=1, isolation=_Measured(winners))
    loaded = loader.load(version)
    at_load = len(built)
    used = {loaded.scorer_for(1).backend for _ in range(BUILD_AFTER_CALLS + 2)}
    loaded.scorer_for(1).score(train[:1])

    # Then no session was built at load; one only once the version kept wanting ONNX,
    # the free NumPy forest serving until then
    assert at_load == 0
    assert len(built) == sessions
    assert ("onnx" in loaded.scorers) == bool(sessions)
    assert {"sklearn"} <= set(loaded.scorers) <= {*winners, "sklearn"}
    if sessions:
        assert used == {"forest", "onnx"}
        # the calls that wanted the session were counted until it was built, no further
        counted = loaded.waiting
        loaded.scorer_for(1)
        assert counted > BUILD_AFTER_CALLS
        assert loaded.waiting == counted


# As measured for the benchmark's IsolationForest (100 trees, 8 features), seconds a call
# at 1, 64 and 2,048 rows: ONNX Runtime wins every size, the memory-mapped forest none.
_ONNX_WINS = Calibration(
    sizes=(1, 64, 2048),
    seconds={"onnx": (2e-5, 2.4e-4, 7.2e-3)},
    fallback=(1.1e-4, 1.06e-3, 4.25e-2),
)


def lazy_onnx_model(
    data: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]], calibration: Calibration
) -> tuple[LoadedModel, list[int]]:
    """A forest version whose ONNX backend is built on demand (counting its builds),
    the forest serving meanwhile."""
    train, _ = data
    estimator = IsolationForest(random_state=0, n_estimators=10).fit(train)
    forest = ForestScorer(estimator)
    builds: list[int] = []

    def build() -> tuple[Scorer, int]:
        builds.append(1)
        return forest, 0

    scorers: dict[str, Scorer] = {
        "sklearn": sklearn.SklearnScorer(estimator),
        "onnx": LazyScorer("onnx", build),
    }
    version = forest_version(scorers["sklearn"], train)
    loaded = LoadedModel(version=version, scorers=scorers, calibration=calibration, fallback=forest)
    return loaded, builds


def test_a_backend_that_saves_little_over_the_free_forest_is_never_built(
    data: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]],
) -> None:
    # Given a version whose ONNX session would save 0.09 ms on one row, 0.8 ms on 64
    loaded, builds = lazy_onnx_model(data, _ONNX_WINS)

    # When it scores small batches far more often than the build threshold
    used = {loaded.scorer_for(n).backend for n in (1, 64) for _ in range(BUILD_AFTER_CALLS * 2)}
    loaded.scorer_for(1).score(data[0][:1])

    # Then the forest served them all, and no session was built or counted towards one
    assert used == {"forest"}
    assert builds == []
    assert loaded.waiting == 0


def test_a_backend_that_saves_much_is_built_once_a_version_keeps_wanting_it(
    data: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]],
) -> None:
    # Given the same version, and batches of 2,048 rows (35 ms saved a call)
    loaded, builds = lazy_onnx_model(data, _ONNX_WINS)
    rows = data[0][:2048]

    # When it scores them BUILD_AFTER_CALLS times, then once more
    before = [loaded.scorer_for(len(rows)).backend for _ in range(BUILD_AFTER_CALLS)]
    after = loaded.scorer_for(len(rows))
    after.score(rows)

    # Then the forest served while the calls were counted, and the session came after
    assert before == ["forest"] * BUILD_AFTER_CALLS
    assert loaded.waiting == BUILD_AFTER_CALLS + 1
    assert after.backend == "onnx"
    assert builds == [1]
    assert loaded.scorer_for(len(rows)) is after  # built: no more counting
    assert loaded.waiting == BUILD_AFTER_CALLS + 1


def test_a_calibration_keeps_the_free_backends_times_through_the_host_cache() -> None:
    assert Calibration.from_dict(_ONNX_WINS.to_dict()) == _ONNX_WINS
    assert _ONNX_WINS.pruned() == _ONNX_WINS
    # saved before the free backend was timed: building goes by calls alone
    old = Calibration.from_dict({"sizes": [1, 64, 2048], "seconds": {"onnx": [1, 2, 3]}})
    assert old is not None
    assert old.saving("onnx", 1) is None
    assert _ONNX_WINS.saving("sklearn", 1) is None  # not measured: no guess
    assert _ONNX_WINS.saving("onnx", 1) == pytest.approx(9e-5)
    assert Calibration.from_dict({**_ONNX_WINS.to_dict(), "fallback": [1.0]}) is None


def test_measuring_the_backends_keeps_the_winners_only(
    data: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]],
) -> None:
    # Given an IsolationForest version with an ONNX export
    train, _ = data
    estimator = IsolationForest(random_state=0, n_estimators=10).fit(train)
    version = forest_version(sklearn.SklearnScorer(estimator), train)

    # When its backends are measured (as the isolated child does)
    calibration = measure_backends(
        estimator, onnx=export(estimator, n_features=6), version=version, threads=1
    )

    # Then every backend left wins some batch size, and the free forest's times are kept
    assert calibration.winners() == set(calibration.seconds)
    assert set(calibration.seconds) <= {"sklearn", "forest", "onnx"}
    assert calibration.fallback is not None
    assert len(calibration.fallback) == len(calibration.sizes)
