"""Labelled evaluation through the service layer on SQLite and PostgreSQL: runs fanned out
in chunks, figures equal to scikit-learn's on the stored scores, the same scores detection
stores, a redelivered chunk counted once, refusals that say why; and who moved an alias
and on what evidence."""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score
from sqlalchemy import func, select

from pynomaly_workers.adapters.stores.tables import AnomalyRow, DetectionJobRow, EvaluationRow
from pynomaly_workers.bootstrap import bootstrap
from pynomaly_workers.domain.errors import InvalidLabels
from pynomaly_workers.domain.models import ModelRef
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.services.detection import run_detection
from pynomaly_workers.services.evaluation import (
    labelled,
    plan_evaluation,
    run_evaluation,
    run_evaluation_chunk,
)
from pynomaly_workers.settings import Settings
from tests.factories import engine_of, rows_with_outliers, train

pytestmark = pytest.mark.integration
OUTLIERS = (3, 50, 120, 177)
CHUNK_ROWS = 40  # 200 records: five chunks


@pytest.fixture
def chunked(store_url: str, make_settings: Callable[..., Settings]) -> Iterator[Adapters]:
    """Adapters whose sources are cut into chunks of 40 rows."""
    built = bootstrap(make_settings(database_url=store_url, chunk_rows=CHUNK_ROWS))
    yield built
    built.close()


def labelled_csv(
    path: Path, *, labels: list[int] | None = None, column: str = "is_anomaly"
) -> Path:
    """Normal rows with far outliers, labelled at OUTLIERS plus two normal-looking rows
    labelled anomalies (a model cannot find those), and a record id column."""
    rows = rows_with_outliers(n=200, outliers=OUTLIERS, seed=5)
    if labels is None:
        labels = [int(i in (*OUTLIERS, 10, 11)) for i in range(len(rows))]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["record_id", "f0", column, "f1", "f2", "f3"])
        for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
            writer.writerow([f"r{i}", row[0], label, *row[1:]])
    return path


def register(
    adapters: Adapters, path: Path, *, name: str = "lab", label: str | None = None
) -> None:
    described = adapters.sources.describe(str(path))
    if label is not None:
        described = labelled(described, label)
    adapters.store.register_dataset(replace(described, name=name), now=datetime.now(UTC))


def evaluation_kwargs(job_id: str = "eval-1", model: str = "m", **extra: Any) -> dict[str, Any]:
    return {"job_id": job_id, "model": model, "dataset": "lab", "actor": "ada", **extra}


def count(adapters: Adapters, table: Any, *conditions: Any) -> int:
    with engine_of(adapters).connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(table).where(*conditions)) or 0)


def test_an_evaluation_scores_every_chunk_and_its_figures_are_scikit_learns(
    chunked: Adapters, tmp_path: Path
) -> None:
    # Given a model and a 200-record dataset labelled in a column between the features
    version = train(chunked)
    register(chunked, labelled_csv(tmp_path / "lab.csv"), label="is_anomaly")
    assert chunked.store.get_dataset("lab").n_features == 4

    # When it is evaluated in five chunks
    run = run_evaluation(chunked, evaluation_kwargs())

    # Then the run succeeded, every record was scored once, in file order
    assert run.status == "succeeded", run.error
    assert run.chunks_total == 5
    scored = chunked.store.evaluation_scores("eval-1")
    assert scored.record_index.tolist() == list(range(200))
    assert scored.record_ids == [f"r{i}" for i in range(200)]
    assert int(scored.labels.sum()) == 6
    # and the stored figures are scikit-learn's on those scores, at the version's threshold
    stored = chunked.store.evaluation_of("eval-1")
    assert stored is not None
    assert (stored.model_name, stored.model_version, stored.purpose, stored.actor) == (
        "m",
        version.version,
        "evaluate",
        "ada",
    )
    assert (stored.n_records, stored.n_positive, stored.threshold) == (200, 6, version.threshold)
    assert stored.metrics["average_precision"] == pytest.approx(
        average_precision_score(scored.labels, scored.scores), abs=1e-9
    )
    assert stored.metrics["roc_auc"] == pytest.approx(
        roc_auc_score(scored.labels, scored.scores), abs=1e-9
    )
    flagged = scored.scores > version.threshold
    assert stored.metrics["alerts_per_1000"] == pytest.approx(1000 * flagged.mean())
    # the four far outliers rank on top; the two normal-looking "anomalies" do not
    assert stored.metrics["precision_at_k"] == pytest.approx(4 / 6)
    # and no anomaly was written, no detection job recorded
    assert count(chunked, AnomalyRow) == 0
    assert count(chunked, DetectionJobRow) == 0


def test_evaluation_scores_are_those_detection_stores_and_the_label_is_no_feature(
    chunked: Adapters, tmp_path: Path
) -> None:
    # Given a labelled dataset, evaluated
    train(chunked)
    register(chunked, labelled_csv(tmp_path / "lab.csv"), label="is_anomaly")
    run_evaluation(chunked, evaluation_kwargs())

    # When a detection job scores the same dataset (fanned out the same way)
    summary = run_detection(
        chunked, {"job_id": "det-1", "model": "m", "dataset": "lab"}, default_job_id="x"
    )

    # Then it read four features (the label is not one), and every anomaly it stored has
    # exactly the score the evaluation gave that record
    assert summary.n_records == 200
    scored = chunked.store.evaluation_scores("eval-1")
    found = chunked.store.list_anomalies(job_id="det-1", limit=1_000)
    assert {a.record_index for a in found} >= set(OUTLIERS)
    assert [a.score for a in found] == [scored.scores[a.record_index] for a in found]
    assert [a.record_id for a in found] == [f"r{a.record_index}" for a in found]


def test_a_redelivered_chunk_counts_once_and_the_figures_are_stored_once(
    chunked: Adapters, tmp_path: Path
) -> None:
    train(chunked)
    register(chunked, labelled_csv(tmp_path / "lab.csv"), label="is_anomaly")
    chunks = plan_evaluation(chunked, evaluation_kwargs())
    assert len(chunks) == 5

    # When the first chunk is delivered twice and the last one twice after every chunk
    finished = [run_evaluation_chunk(chunked, chunks[0])]
    finished += [run_evaluation_chunk(chunked, c) for c in chunks]
    finished += [run_evaluation_chunk(chunked, chunks[-1])]
    again = plan_evaluation(chunked, evaluation_kwargs())  # the plan redelivered, too

    # Then one chunk finished the run, 200 records were scored, one evaluation stored
    assert [f.status if f else None for f in finished] == [None] * 5 + ["succeeded", None]
    assert again == []
    assert len(chunked.store.evaluation_scores("eval-1").scores) == 200
    assert count(chunked, EvaluationRow) == 1


def test_a_missing_label_column_is_named_with_the_columns_there_are(
    adapters: Adapters, tmp_path: Path
) -> None:
    path = labelled_csv(tmp_path / "lab.csv")
    described = adapters.sources.describe(str(path))

    with pytest.raises(InvalidLabels, match=r"no column 'label'.*are f0, is_anomaly, f1, f2, f3"):
        labelled(described, "label")


@pytest.mark.parametrize(
    ("labels", "label_column", "error"),
    [
        ([0] * 200, "is_anomaly", r"dataset 'lab' has no labelled anomalies \(0 of 200"),
        ([0] * 199 + [7], "is_anomaly", r"'is_anomaly' must hold 0.*record 199 has 7"),
        (None, None, r"dataset 'lab' has no label column; register it with"),
    ],
    ids=["one-class", "not-0-1", "no-label-column"],
)
def test_an_evaluation_that_cannot_be_judged_fails_with_what_to_do(
    adapters: Adapters,
    tmp_path: Path,
    labels: list[int] | None,
    label_column: str | None,
    error: str,
) -> None:
    train(adapters)
    path = labelled_csv(tmp_path / "lab.csv", labels=labels)
    if label_column is None:  # registered without --label-column: the model is 5 wide
        train(adapters, records=np.zeros((50, 5)).tolist())
    register(adapters, path, label=label_column)

    run = run_evaluation(adapters, evaluation_kwargs())

    assert run.status == "failed"
    assert run.error_type == "invalid_labels"
    assert run.error is not None
    assert re.search(error, run.error), run.error
    assert count(adapters, EvaluationRow) == 0


def test_evaluations_are_listed_newest_first_per_model(adapters: Adapters, tmp_path: Path) -> None:
    train(adapters)
    train(adapters, params={"n_estimators": 5})
    register(adapters, labelled_csv(tmp_path / "lab.csv"), label="is_anomaly")
    run_evaluation(adapters, evaluation_kwargs("e1", "m@1"))
    run_evaluation(adapters, evaluation_kwargs("e2", "m@2", purpose="promotion", actor="bob"))

    found = adapters.store.list_evaluations("m")

    assert [(e.job_id, e.model_version, e.purpose, e.actor) for e in found] == [
        ("e2", 2, "promotion", "bob"),
        ("e1", 1, "evaluate", "ada"),
    ]
    assert adapters.store.list_evaluations("other") == []


def test_an_alias_move_keeps_who_why_and_the_evidence(adapters: Adapters) -> None:
    train(adapters)
    train(adapters)
    now = datetime.now(UTC)
    evidence = {"dataset": "lab", "passed": False, "forced": True, "candidate": {"version": 2}}
    adapters.store.set_alias("m", "champion", 1, now=now)
    moved = adapters.store.set_alias(
        "m", "champion", 2, now=now, actor="ada", reason="new sensor", evidence=evidence
    )

    history = adapters.store.alias_history("m")

    assert (moved.actor, moved.reason, moved.evidence) == ("ada", "new sensor", evidence)
    assert [(m.version, m.actor, m.reason, m.evidence) for m in history] == [
        (2, "ada", "new sensor", evidence),
        (1, None, None, None),
    ]
    assert adapters.store.get_model(ModelRef("m", alias="champion")).version == 2


def test_a_model_trained_on_a_labelled_dataset_does_not_learn_the_label(
    adapters: Adapters, tmp_path: Path
) -> None:
    # Given a labelled dataset (four features, the label between them)
    register(adapters, labelled_csv(tmp_path / "lab.csv"), label="is_anomaly")

    # When a model is trained on it
    whole = train(adapters, model="whole", dataset="lab", records=None)

    # Then the model has the four features, and scores the dataset without the label
    assert whole.n_features == 4
    assert run_evaluation(adapters, evaluation_kwargs(model="whole")).status == "succeeded"
