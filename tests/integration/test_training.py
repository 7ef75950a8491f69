"""Training through the service layer on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pynomaly_workers.adapters.scorers import sklearn
from pynomaly_workers.domain.errors import InvalidInput, InvalidRecords, UnknownDataset
from pynomaly_workers.domain.models import ModelRef
from pynomaly_workers.services.context import Adapters
from tests.factories import load_all_backends, reference_scorer, train, training_rows, write_csv

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("algorithm", "has_onnx"),
    [
        ("iforest", True),
        ("lof", True),
        ("ocsvm", True),
        ("elliptic", False),
        ("hbos", False),
        ("ecod", False),
    ],
)
def test_each_algorithm_registers_a_calibrated_version(
    adapters: Adapters, algorithm: str, has_onnx: bool
) -> None:
    # Given training rows, When a model is trained
    version = train(adapters, algorithm=algorithm, contamination=0.05)

    # Then a version with a threshold at the contamination quantile is registered
    assert version.version == 1
    assert version.active
    assert version.algorithm == algorithm
    assert version.n_features == 4
    assert (version.onnx_sha256 is not None) is has_onnx
    if has_onnx:
        assert version.parity_max_error is not None
        assert version.parity_max_error <= version.parity_tolerance  # type: ignore[operator]
    scores = reference_scorer(adapters, version).score(np.asarray(training_rows()[:360]))
    share_above = float(np.mean(scores > version.threshold))
    assert 0.0 < share_above < 0.15


def test_onnx_scores_match_sklearn_within_the_stored_tolerance(adapters: Adapters) -> None:
    version = train(adapters)
    loaded = load_all_backends(adapters, version)
    assert loaded.onnx is not None
    rows = np.random.default_rng(5).normal(size=(500, 4)) * 2
    difference = np.abs(loaded.onnx.score(rows) - loaded.sklearn.score(rows))
    assert float(difference.max()) <= (version.parity_tolerance or 0)


def test_retraining_makes_a_new_active_version_and_keeps_the_old(adapters: Adapters) -> None:
    first = train(adapters)
    second = train(adapters, params={"n_estimators": 50})

    assert (first.version, second.version) == (1, 2)
    assert adapters.store.get_model(ModelRef("m")).version == 2
    assert adapters.store.get_model(ModelRef("m", 1)).artifact_sha256 == first.artifact_sha256
    assert second.params["n_estimators"] == 50


def test_artifact_round_trips_to_the_same_scores(adapters: Adapters) -> None:
    version = train(adapters)
    estimator = sklearn.load(adapters.store.load_artifact(version.artifact_sha256))
    rows = np.asarray(training_rows()[:20])
    assert np.allclose(
        sklearn.SklearnScorer(estimator).score(rows),
        reference_scorer(adapters, version).score(rows),
    )


def test_trains_from_a_source_file_and_a_registered_dataset(
    adapters: Adapters, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "train.csv", training_rows(), ids=True)
    from_source = train(adapters, records=None, source=str(path))
    dataset = adapters.sources.describe(str(path))
    from dataclasses import replace

    adapters.store.register_dataset(replace(dataset, name="ds"), now=adapters.clock.now())
    from_dataset = train(adapters, model="m2", records=None, dataset="ds")

    assert from_source.n_features == 4  # record_id and timestamp are not features
    assert from_dataset.artifact_sha256 == from_source.artifact_sha256


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"records": training_rows(5)}, InvalidRecords, "at least 10 rows"),
        ({"records": None, "dataset": "missing"}, UnknownDataset, "no dataset named"),
        ({"params": {"no_such_param": 1}}, InvalidInput, "not valid for iforest"),
        (
            {"records": None, "source": "/nonexistent/x.csv"},
            InvalidInput,
            "outside the allowed folders",
        ),
    ],
)
def test_bad_training_requests_say_what_is_wrong(
    adapters: Adapters, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        train(adapters, **kwargs)


def test_a_redelivered_training_request_returns_its_first_version(adapters: Adapters) -> None:
    # Given a model trained by training task "task-1"
    first = train(adapters, model="redelivered", task_id="task-1")

    # When the same task is delivered again, and then a new task trains the name
    again = train(adapters, model="redelivered", task_id="task-1")
    later = train(adapters, model="redelivered", task_id="task-2")

    # Then the redelivery registered nothing: versions 1 (task-1) and 2 (task-2) only
    assert (again.id, again.version) == (first.id, 1)
    assert later.version == 2
    assert [m.version for m in adapters.store.list_models(name="redelivered")] == [2, 1]
