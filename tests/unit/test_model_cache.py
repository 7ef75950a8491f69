"""Loading a model version is cheap: forest arrays shared per host, calibration once per
host and model shape, scikit-learn unpickled only when a batch needs it, and the
process's cache bounded in bytes."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from pynomaly_workers.adapters.scorers import sklearn
from pynomaly_workers.adapters.scorers.forest import ForestScorer
from pynomaly_workers.adapters.scorers.host_cache import HostModelCache
from pynomaly_workers.adapters.scorers.loader import (
    BUILD_AFTER_CALLS,
    Calibration,
    ModelLoader,
    calibration_key,
)
from pynomaly_workers.domain.errors import UnknownModel
from pynomaly_workers.domain.models import ModelRef, ModelVersion
from pynomaly_workers.domain.ports import ModelStore
from pynomaly_workers.domain.scoring import fit_score_stats

T = TypeVar("T")
FEATURES = 6


@pytest.fixture(scope="module")
def train() -> np.ndarray[Any, Any]:
    return np.random.default_rng(0).normal(size=(600, FEATURES))


def fitted(train: np.ndarray[Any, Any], seed: int) -> IsolationForest:
    return IsolationForest(random_state=seed, n_estimators=20).fit(train)


class Store:
    """Artifacts by sha256, counting reads."""

    def __init__(self) -> None:
        self.artifacts: dict[str, bytes] = {}
        self.reads: list[str] = []

    def add(self, estimator: IsolationForest, version_id: int) -> ModelVersion:
        sha = f"{version_id:064x}"
        self.artifacts[sha] = sklearn.dump(estimator)
        scores = sklearn.SklearnScorer(estimator).score(np.zeros((4, FEATURES)))
        return ModelVersion(
            id=version_id,
            name=f"m{version_id}",
            version=1,
            algorithm="iforest",
            artifact_sha256=sha,
            onnx_sha256=None,
            n_features=FEATURES,
            stats=fit_score_stats(np.concatenate([scores, scores + 1]), contamination=0.1),
            params={"n_estimators": 20, "random_state": version_id},
            n_training_rows=600,
        )

    def load_artifact(self, sha256: str) -> bytes:
        self.reads.append(sha256)
        return self.artifacts[sha256]


class Measuring:
    """An isolation that counts the calibrations it is asked for."""

    def __init__(self) -> None:
        self.runs = 0

    def run(self, work: Callable[[], T]) -> T:
        del work
        self.runs += 1
        seconds: dict[str, tuple[float, ...]] = {
            "sklearn": (1.0, 1.0, 0.1),
            "forest": (0.1, 0.1, 1.0),
        }
        return cast(T, Calibration(sizes=(1, 64, 2048), seconds=seconds))


def loader(store: Store, folder: Path, isolation: Measuring, **kwargs: Any) -> ModelLoader:
    return ModelLoader(
        cast(ModelStore, store),
        capacity=kwargs.pop("capacity", 100),
        isolation=isolation,
        host=HostModelCache(folder),
        **kwargs,
    )


def test_a_forest_from_its_saved_arrays_scores_and_explains_as_the_estimator(
    train: np.ndarray[Any, Any], tmp_path: Path
) -> None:
    # Given a forest saved to the host cache
    estimator = fitted(train, seed=1)
    original = ForestScorer(estimator)
    host = HostModelCache(tmp_path)
    host.save_forest("a" * 64, original)

    # When another process maps it
    mapped = host.forest("a" * 64)

    # Then it is memory-mapped, not copied, and computes exactly what the original does
    assert mapped is not None
    assert isinstance(mapped.threshold.base, np.memmap)
    rows = np.random.default_rng(2).normal(size=(300, FEATURES)) * 3
    np.testing.assert_array_equal(mapped.score(rows), original.score(rows))
    np.testing.assert_allclose(
        mapped.isolation_bits(rows), original.isolation_bits(rows), rtol=0, atol=1e-12
    )
    np.testing.assert_allclose(
        mapped.score(rows), -estimator.decision_function(rows), rtol=0, atol=1e-12
    )


def test_the_c_walks_layout_is_mapped_from_the_host_cache_or_derived_where_a_folder_lacks_it(
    train: np.ndarray[Any, Any], tmp_path: Path
) -> None:
    # Given a forest saved with its walk layout, and one saved as before the C walk was
    original = ForestScorer(fitted(train, seed=4))
    host = HostModelCache(tmp_path)
    host.save_forest("d" * 64, original)
    older = ForestScorer(fitted(train, seed=4), walk=False)
    host.save_forest("e" * 64, older)
    assert (
        "walk_leaf"
        in json.loads((tmp_path / "forest" / ("d" * 64) / "meta.json").read_text())["arrays"]
    )

    # When other processes map them
    mapped, derived = host.forest("d" * 64), host.forest("e" * 64)

    # Then the first walks the mapped layout, the second one it derived, both exactly
    assert mapped is not None
    assert derived is not None
    assert mapped.max_rows is None
    assert derived.max_rows is None
    assert isinstance(mapped.to_arrays()[0]["walk_leaf"].base, np.memmap)
    rows = np.random.default_rng(5).normal(size=(301, FEATURES)) * 2
    np.testing.assert_array_equal(mapped.score(rows), original.score(rows))
    np.testing.assert_array_equal(derived.score(rows), original.score(rows))


def test_explanations_through_the_c_walk_equal_the_numpy_walks(
    train: np.ndarray[Any, Any], tmp_path: Path
) -> None:
    # Given one forest with the C walk (also as mapped from the host cache) and without
    estimator = fitted(train, seed=7)
    walked, padded = ForestScorer(estimator), ForestScorer(estimator, walk=False)
    host = HostModelCache(tmp_path)
    host.save_forest("9" * 64, walked)
    mapped = host.forest("9" * 64)
    assert mapped is not None
    rows = np.random.default_rng(7).normal(size=(300, FEATURES)) * 3

    # When each explains more rows than a walk without the table would take
    expected = padded.isolation_bits(rows)

    # Then the C walk's sums of per-leaf credits are the same bits, and a handful of
    # rows explained afterwards reads the same table
    for forest in (walked, mapped):
        np.testing.assert_allclose(forest.isolation_bits(rows), expected, rtol=0, atol=1e-12)
        np.testing.assert_allclose(
            forest.isolation_bits(rows[:5]), expected[:5], rtol=0, atol=1e-12
        )
    assert walked._leaf_table is not None
    assert walked._credit_table is None  # replaced by the leaf table


def test_a_walk_layout_that_does_not_fit_the_forest_is_not_walked(
    train: np.ndarray[Any, Any], tmp_path: Path
) -> None:
    # Given a saved forest whose walk layout names a feature past the row's width
    host = HostModelCache(tmp_path)
    host.save_forest("f" * 64, ForestScorer(fitted(train, seed=6)))
    folder = tmp_path / "forest" / ("f" * 64)
    spec = json.loads((folder / "meta.json").read_text())["arrays"]["walk_feature"]
    with open(folder / "arrays.bin", "r+b") as handle:
        handle.seek(spec["offset"])
        handle.write(np.int16(FEATURES + 3).tobytes())

    # Then the mapped forest derives its own layout instead of reading past a row
    mapped = host.forest("f" * 64)
    assert mapped is not None
    rows = np.random.default_rng(6).normal(size=(9, FEATURES))
    np.testing.assert_array_equal(
        mapped.score(rows), ForestScorer(fitted(train, seed=6)).score(rows)
    )


def test_an_unsaved_or_broken_forest_is_not_found(tmp_path: Path) -> None:
    host = HostModelCache(tmp_path)
    assert host.forest("b" * 64) is None
    (tmp_path / "forest" / ("c" * 64)).mkdir(parents=True)
    (tmp_path / "forest" / ("c" * 64) / "meta.json").write_text("{}")
    assert host.forest("c" * 64) is None


def test_a_version_loaded_once_on_a_host_loads_elsewhere_without_its_artifact(
    train: np.ndarray[Any, Any], tmp_path: Path
) -> None:
    # Given a version one process of this host loaded
    store, isolation = Store(), Measuring()
    estimator = fitted(train, seed=3)
    version = store.add(estimator, version_id=1)
    first = loader(store, tmp_path, isolation).load(version)
    reads_before = len(store.reads)

    # When a second process (a fresh loader) loads it and scores a handful of rows
    second = loader(store, tmp_path, isolation).load(version)
    rows = train[:5]
    scores = second.scorer_for(len(rows)).score(rows)

    # Then it read no artifact and measured nothing again, and scores the same
    assert len(store.reads) == reads_before
    assert isolation.runs == 1
    np.testing.assert_array_equal(scores, first.scorer_for(5).score(rows))
    assert second.explain(rows) is not None

    # and scikit-learn (which this calibration finds fastest on large batches) is
    # unpickled only once large batches keep calling for it
    large = np.repeat(train, 8, axis=0)
    waited = {second.scorer_for(len(large)).backend for _ in range(BUILD_AFTER_CALLS)}
    assert waited == {"forest"}
    assert len(store.reads) == reads_before
    assert second.scorer_for(len(large)).backend == "sklearn"
    np.testing.assert_allclose(
        second.scorer_for(len(large)).score(large),
        -estimator.decision_function(large),
        atol=1e-12,
    )
    assert len(store.reads) == reads_before + 1


def test_versions_of_one_shape_share_one_calibration_per_host(
    train: np.ndarray[Any, Any], tmp_path: Path
) -> None:
    # Given ten versions of one algorithm, width and parameters (but their own seeds)
    store, isolation = Store(), Measuring()
    versions = [store.add(fitted(train, seed=i), version_id=i) for i in range(1, 11)]
    wider = dataclasses.replace(versions[0], id=99, n_features=FEATURES + 1)

    # When one process loads them all
    models = loader(store, tmp_path, isolation)
    for version in versions:
        models.load(version)

    # Then the backends were measured once, and the key tells other shapes apart
    assert isolation.runs == 1
    keys = {calibration_key(v, has_forest=True) for v in versions}
    assert len(keys) == 1
    assert calibration_key(wider, has_forest=True) not in keys
    assert calibration_key(versions[0], has_forest=False) not in keys


def test_the_cache_keeps_the_most_recent_versions_within_its_bytes(
    train: np.ndarray[Any, Any], tmp_path: Path
) -> None:
    # Given a cache room for about three forests
    store, isolation = Store(), Measuring()
    versions = [store.add(fitted(train, seed=i), version_id=i) for i in range(1, 7)]
    size = loader(store, tmp_path, isolation).load(versions[0]).nbytes
    events: list[tuple[bool, int]] = []
    sizes: list[tuple[int, int]] = []

    class Telemetry:
        def model_cache(self, *, hit: bool, load_seconds: float, evicted: int) -> None:
            assert load_seconds >= 0
            events.append((hit, evicted))

        def model_cache_size(self, *, models: int, nbytes: int) -> None:
            sizes.append((models, nbytes))

    models = loader(
        store, tmp_path, isolation, capacity_bytes=int(size * 3.5), telemetry=Telemetry()
    )

    # When six versions are loaded, the first again last
    for version in [*versions, versions[0]]:
        models.load(version)

    # Then it never held more than its bytes, evicted the oldest, and said so
    assert all(nbytes <= size * 3.5 for _, nbytes in sizes)
    assert [hit for hit, _ in events] == [False] * 7
    assert sum(evicted for _, evicted in events) == 7 - sizes[-1][0] >= 3
    models.load(versions[5])
    assert events[-1] == (True, 0)  # the most recent stayed
    models.load(versions[1])
    assert events[-1][0] is False  # an old one went


def test_a_forest_prepared_at_training_loads_without_reading_its_artifact(
    train: np.ndarray[Any, Any], tmp_path: Path
) -> None:
    # Given a forest whose trainer prepared this host for it
    store, isolation = Store(), Measuring()
    estimator = fitted(train, seed=5)
    version = store.add(estimator, version_id=5)
    loader(store, tmp_path, isolation).prepare(version.artifact_sha256, estimator)

    # When a worker process loads the version and scores a row
    loaded = loader(store, tmp_path, isolation).load(version)
    scores = loaded.scorer_for(1).score(train[:1])

    # Then no artifact was read (the measuring, once per host and shape, is faked here)
    assert store.reads == []
    np.testing.assert_allclose(scores, -estimator.decision_function(train[:1]), atol=1e-12)


class Registry:
    """Model versions by name, counting the reads of each kind."""

    def __init__(self, versions: dict[str, ModelVersion]) -> None:
        self.versions = versions
        self.single: list[str] = []
        self.batched: list[list[str]] = []

    def get_model(self, ref: ModelRef) -> ModelVersion:
        self.single.append(str(ref))
        if ref.name not in self.versions:
            raise UnknownModel(f"no model named {ref.name!r}")
        return self.versions[ref.name]

    def get_active_models(self, names: Collection[str]) -> dict[str, ModelVersion]:
        self.batched.append(sorted(names))
        return {name: self.versions[name] for name in names if name in self.versions}


def test_a_batchs_bare_model_names_are_read_in_one_query_then_remembered(
    train: np.ndarray[Any, Any],
) -> None:
    # Given five models and a loader that remembers a bare name for a minute
    store = Store()
    versions = {f"m{i}": store.add(fitted(train, seed=i), version_id=i) for i in range(1, 6)}
    registry = Registry(versions)
    models = ModelLoader(cast(ModelStore, registry), capacity=10, ref_ttl_seconds=60)

    # When a micro-batch names all five and one that does not exist
    refs = {ModelRef(name) for name in [*versions, "nope"]}
    resolved = models.resolve_many(refs)

    # Then the five came from one read, and the unknown one says why, from its own read
    assert registry.batched == [sorted([*versions, "nope"])]
    assert registry.single == ["nope"]
    assert {ref.name: v for ref, v in resolved.items() if isinstance(v, ModelVersion)} == versions
    assert isinstance(resolved[ModelRef("nope")], UnknownModel)

    # and the next batch within the TTL reads nothing for them; an exact ref is read once
    again = models.resolve_many({ModelRef("m1"), ModelRef("m2", version=1)})
    assert again[ModelRef("m1")] == versions["m1"]
    assert registry.batched == [sorted([*versions, "nope"])]
    assert registry.single == ["nope", "m2@1"]
    assert models.resolve(ModelRef("m3")) == versions["m3"]  # remembered by resolve too
    assert registry.single == ["nope", "m2@1"]


def test_a_changed_threshold_of_an_exact_version_is_read_after_the_ttl_without_a_reload(
    train: np.ndarray[Any, Any],
) -> None:
    from pynomaly_workers.domain.thresholds import effective_stats

    # Given an exact version resolved and loaded by two loaders, one remembering refs
    # for a minute, one not at all
    store = Store()
    version = store.add(fitted(train, seed=1), version_id=1)
    registry = Registry({"m1": version})
    registry.load_artifact = store.load_artifact  # type: ignore[attr-defined]
    ref = ModelRef("m1", version=1)
    remembering = ModelLoader(cast(ModelStore, registry), capacity=10, ref_ttl_seconds=60)
    fresh = ModelLoader(cast(ModelStore, registry), capacity=10, ref_ttl_seconds=0)
    loaded = {id(m): m.load(m.resolve(ref)) for m in (remembering, fresh)}
    reads = len(store.reads)

    # When its threshold is changed in the registry
    changed = dataclasses.replace(version, stats=effective_stats(version.stats, 0.9))
    registry.versions["m1"] = changed

    # Then within the TTL the first still sees the old one, the second the new one
    assert remembering.resolve(ref).threshold == version.threshold
    assert fresh.resolve(ref).threshold == 0.9
    # and loading it keeps the loaded model (no artifact read) with the new threshold
    again = fresh.load(fresh.resolve(ref))
    assert again is loaded[id(fresh)]
    assert again.version.threshold == 0.9
    assert len(store.reads) == reads


class Failing(Measuring):
    """An isolation whose measurement fails (a child that raised, say)."""

    def run(self, work: Callable[[], T]) -> T:
        del work
        self.runs += 1
        raise KeyError(140599083191168)


def test_a_failed_calibration_loads_the_version_with_its_parity_checked_backends(
    train: np.ndarray[Any, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a host where measuring a version's backends fails
    store, isolation = Store(), Failing()
    estimator = fitted(train, seed=5)
    version = store.add(estimator, version_id=1)
    models = loader(store, tmp_path, isolation)

    # When the version is loaded, and loaded again in another process
    loaded = models.load(version)
    again = loader(store, tmp_path, isolation).load(version)

    # Then it scores as scikit-learn does, says why it is unmeasured, saved no
    # calibration, and the next load measured again
    rows = train[:7]
    for model in (loaded, again):
        assert model.calibration is None
        np.testing.assert_allclose(
            model.scorer_for(len(rows)).score(rows),
            -estimator.decision_function(rows),
            atol=1e-12,
        )
    assert "could not measure its backends" in caplog.text
    assert isolation.runs == 2
    assert not (tmp_path / "calibration").exists()


class Watch:
    """A registry watch the test moves by hand (None: it cannot tell)."""

    def __init__(self) -> None:
        self.value: int | None = 0

    def generation(self) -> int | None:
        return self.value


def watched_loader(
    train: np.ndarray[Any, Any], *, ttl_seconds: float
) -> tuple[Registry, Watch, ModelLoader]:
    """A loader over a registry holding ``m1`` (version 1), with a watch moved by hand."""
    store = Store()
    registry = Registry({"m1": store.add(fitted(train, seed=1), version_id=1)})
    watch = Watch()
    loader = ModelLoader(
        cast(ModelStore, registry), capacity=10, ref_ttl_seconds=ttl_seconds, watch=watch
    )
    return registry, watch, loader


def test_a_resolution_is_kept_past_the_ttl_until_a_registry_change_is_heard(
    train: np.ndarray[Any, Any],
) -> None:
    # Given a loader that hears of registry changes, with a TTL of zero
    registry, watch, models = watched_loader(train, ttl_seconds=0)
    exact = ModelRef("m1", version=1)
    models.resolve_many({ModelRef("m1"), exact})
    assert sorted(registry.single) == ["m1", "m1@1"]

    # When nothing is heard, nothing is read again, however old the resolution
    for _ in range(3):
        models.resolve_many({ModelRef("m1"), exact})
        models.resolve(ModelRef("m1"))
    assert len(registry.single) == 2
    assert registry.batched == []

    # When a change is heard, each ref is read once more, then kept again
    watch.value = 1
    models.resolve_many({ModelRef("m1"), exact})
    models.resolve_many({ModelRef("m1"), exact})
    assert sorted(registry.single[2:]) == ["m1", "m1@1"]

    # When the watch cannot tell, the TTL (zero here) rules: every call reads
    watch.value = None
    models.resolve(ModelRef("m1"))
    models.resolve(ModelRef("m1"))
    assert registry.single[-2:] == ["m1", "m1"]


def test_a_change_heard_moments_after_a_read_is_read_again_at_once_whatever_the_ttl(
    train: np.ndarray[Any, Any],
) -> None:
    # Given a loader that hears of registry changes, with a long TTL, and a ref just read
    registry, watch, models = watched_loader(train, ttl_seconds=60)
    exact = ModelRef("m1", version=1)
    models.resolve(exact)
    models.resolve_many({exact, ModelRef("m1")})
    assert sorted(registry.single) == ["m1", "m1@1"]

    # When a change is heard well within the TTL of those reads
    watch.value = 1

    # Then the next job's resolution reads them again (a changed threshold applies at
    # once, in every process that heard it, not a TTL later)
    models.resolve(exact)
    models.resolve_many({ModelRef("m1")})
    assert sorted(registry.single[2:]) == ["m1", "m1@1"]


def test_a_forest_saved_in_one_file_maps_back_read_only_and_scores_the_same(
    tmp_path: Path, train: np.ndarray[Any, Any]
) -> None:
    # Given a forest saved to the host cache
    estimator = fitted(train, seed=7)
    host = HostModelCache(tmp_path)
    host.save_forest("a" * 64, ForestScorer(estimator))

    # When it is mapped back
    mapped = host.forest("a" * 64)

    # Then it is one file of arrays, read-only, scoring as scikit-learn does
    assert mapped is not None
    assert sorted(p.name for p in (tmp_path / "forest" / ("a" * 64)).iterdir()) == [
        "arrays.bin",
        "meta.json",
    ]
    assert not any(getattr(mapped, name).flags.writeable for name in ForestScorer.ARRAYS)
    np.testing.assert_allclose(
        mapped.score(train[:50]), -estimator.decision_function(train[:50]), atol=1e-12
    )


def test_a_forest_folder_of_the_earlier_layout_still_loads(
    tmp_path: Path, train: np.ndarray[Any, Any]
) -> None:
    # Given a folder written before: one .npy file per array and the scalars alone
    estimator = fitted(train, seed=8)
    arrays, meta = ForestScorer(estimator).to_arrays()
    folder = tmp_path / "forest" / ("b" * 64)
    folder.mkdir(parents=True)
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", np.ascontiguousarray(array))
    (folder / "meta.json").write_text(json.dumps(meta))

    # When it is loaded, it scores as the estimator does
    mapped = HostModelCache(tmp_path).forest("b" * 64)
    assert mapped is not None
    np.testing.assert_allclose(
        mapped.score(train[:50]), -estimator.decision_function(train[:50]), atol=1e-12
    )
