"""Labelled evaluation and promotion on proof through real workers, on the WBC-style
set (scikit-learn's breast-cancer data, ODDS style: benign records normal, a seeded
sample of malignant ones anomalies)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from benchmarks.labelled import LABEL_COLUMN, Labelled, split, wbc, write_labelled_csv
from pynomaly_workers.demo import WorkerProcess
from pynomaly_workers.services.context import Adapters
from tests.e2e.test_cli import cli, cli_json
from tests.factories import rows_with_outliers, train

pytestmark = pytest.mark.e2e
TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def wbc_model(
    worker: WorkerProcess,
    e2e_adapters: Adapters,
    e2e_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    """Two versions of model 'wbc' trained on the training half (labels unused), and
    the test half registered as labelled dataset 'wbc-test'."""
    training, test = split(wbc(seed=0))
    folder = tmp_path_factory.mktemp("wbc")
    path = write_labelled_csv(folder / "wbc-test.csv", test)
    records = training.matrix.tolist()
    train(e2e_adapters, model="wbc", records=records, contamination=training.contamination)
    train(
        e2e_adapters,
        model="wbc",
        algorithm="elliptic",
        records=records,
        contamination=training.contamination,
    )
    added = cli_json(e2e_env, "datasets", "add", "wbc-test", str(path), "--label-column", "label")
    assert (added["n_rows"], added["n_features"], added["label_column"]) == (188, 30, "label")
    return "wbc"


def read_scores(path: Path) -> tuple[list[int], list[str], np.ndarray, np.ndarray]:
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    return (
        [int(r["record_index"]) for r in rows],
        [r["record_id"] for r in rows],
        np.array([float(r["score"]) for r in rows]),
        np.array([int(r["label"]) for r in rows]),
    )


def evaluate(env: dict[str, str], model: str, dataset: str, out: Path) -> dict[str, Any]:
    return cli_json(  # type: ignore[no-any-return]
        env, "evaluate", model, "--dataset", dataset, "--scores-out", str(out), "--by", "tester"
    )


def test_evaluate_reports_scikit_learns_figures_on_the_scores_it_writes(
    wbc_model: str, e2e_env: dict[str, str], e2e_adapters: Adapters, tmp_path: Path
) -> None:
    # When version 1 is evaluated on the labelled test half through the worker
    out = tmp_path / "scores.csv"
    found = evaluate(e2e_env, "wbc@1", "wbc-test", out)

    # Then the figures are scikit-learn's on the scores written, to 1e-9
    index, ids, scores, labels = read_scores(out)
    assert index == list(range(188))
    assert ids == [f"r{i}" for i in range(188)]
    assert (found["n_records"], found["n_positive"]) == (188, int(labels.sum())) == (188, 10)
    metrics = found["metrics"]
    assert abs(metrics["average_precision"] - average_precision_score(labels, scores)) < TOLERANCE
    assert abs(metrics["roc_auc"] - roc_auc_score(labels, scores)) < TOLERANCE
    flagged = scores > found["threshold"]
    assert metrics["recall"] == pytest.approx(flagged[labels == 1].mean())
    assert metrics["alerts_per_1000"] == pytest.approx(1000 * flagged.mean())

    # And a normal detect job on the same records stores exactly those scores
    summary = cli_json(e2e_env, "detect", "--model", "wbc@1", "--dataset", "wbc-test", "--wait")
    assert summary["n_records"] == 188
    stored = e2e_adapters.store.list_anomalies(job_id=summary["job_id"], limit=1_000)
    assert len(stored) == summary["n_anomalies"] == int(flagged.sum()) > 0
    assert [a.score for a in stored] == [scores[a.record_index] for a in stored]

    # And the evaluation wrote no anomaly of its own, and is listed with the model
    assert e2e_adapters.store.list_anomalies(job_id=found["job_id"], limit=10) == []
    human = cli(e2e_env, "models", "history", "wbc").stdout
    assert "evaluations" in human
    assert "wbc-test" in human
    assert "tester" in human


def test_a_fanned_out_evaluation_scores_what_a_fanned_out_detection_stores(
    worker: WorkerProcess,
    e2e_env: dict[str, str],
    e2e_adapters: Adapters,
    tmp_path: Path,
) -> None:
    # Given 5,000 labelled records (five chunks of 1,000 on the worker pool)
    train(e2e_adapters, model="fanned")
    rows = np.array(rows_with_outliers(n=5000, outliers=tuple(range(0, 5000, 250)), seed=9))
    labels = np.zeros(5000, dtype=bool)
    labels[::250] = True
    labels[7] = True  # one the model cannot see
    data = Labelled(rows, labels, [f"f{i}" for i in range(4)])
    path = write_labelled_csv(tmp_path / "big.csv", data)
    cli_json(e2e_env, "datasets", "add", "big-lab", str(path), "--label-column", LABEL_COLUMN)

    # When it is evaluated, then detected
    out = tmp_path / "scores.csv"
    found = evaluate(e2e_env, "fanned", "big-lab", out)
    summary = cli_json(e2e_env, "detect", "--model", "fanned", "--dataset", "big-lab", "--wait")

    # Then the run had five chunks, its figures are scikit-learn's, its scores detection's
    run = e2e_adapters.store.get_evaluation_run(found["job_id"])
    assert run is not None
    assert run.chunks_total == 5
    index, _, scores, got_labels = read_scores(out)
    assert index == list(range(5000))
    assert got_labels.tolist() == labels.astype(int).tolist()
    assert abs(found["metrics"]["average_precision"] - average_precision_score(labels, scores)) < (
        TOLERANCE
    )
    stored = e2e_adapters.store.list_anomalies(job_id=summary["job_id"], limit=10_000)
    assert len(stored) == summary["n_anomalies"] >= 20
    assert [a.score for a in stored] == [scores[a.record_index] for a in stored]


def test_promotion_is_refused_without_proof_and_a_forced_one_is_recorded(
    wbc_model: str, e2e_env: dict[str, str]
) -> None:
    # Given the two versions' average precision on the labelled set
    ap = {
        v: cli_json(e2e_env, "evaluate", f"wbc@{v}", "--dataset", "wbc-test")["metrics"][
            "average_precision"
        ]
        for v in (1, 2)
    }
    better, worse = sorted(ap, key=lambda v: ap[v], reverse=True)
    assert ap[better] > ap[worse]
    cli_json(e2e_env, "models", "alias", "wbc", "champion", str(better))

    # When the worse version is proposed as champion with --require-better
    refused = cli(
        e2e_env,
        "models",
        "alias",
        "wbc",
        "champion",
        str(worse),
        "--require-better",
        "--on",
        "wbc-test",
        check=False,
    )

    # Then it is refused with exit 4, both figures printed, and champion did not move
    assert refused.returncode == 4, refused.stderr
    assert f"{ap[worse]:.4f}" in refused.stderr
    assert f"{ap[better]:.4f}" in refused.stderr
    assert cli_json(e2e_env, "models", "history", "wbc", "--alias", "champion")[0]["version"] == (
        better
    )

    # When it is forced, with a reason
    forced = cli_json(
        e2e_env,
        "models",
        "alias",
        "wbc",
        "champion",
        str(worse),
        "--require-better",
        "--on",
        "wbc-test",
        "--force",
        "--reason",
        "keeps recall on the new sensors",
        "--by",
        "ada",
    )

    # Then it moved, and the move keeps who, why and both figures
    assert (forced["version"], forced["previous_version"]) == (worse, better)
    (last, *_) = cli_json(e2e_env, "models", "history", "wbc", "--alias", "champion")
    assert (last["actor"], last["reason"]) == ("ada", "keeps recall on the new sensors")
    evidence = last["evidence"]
    assert (evidence["passed"], evidence["forced"], evidence["dataset"]) == (
        False,
        True,
        "wbc-test",
    )
    assert evidence["candidate"]["version"] == worse
    assert evidence["current"]["version"] == better
    assert evidence["candidate"]["average_precision"] == pytest.approx(ap[worse], abs=TOLERANCE)
    assert evidence["current"]["average_precision"] == pytest.approx(ap[better], abs=TOLERANCE)

    # And moving back to the better version passes the check without --force
    back = cli_json(
        e2e_env,
        "models",
        "alias",
        "wbc",
        "champion",
        str(better),
        "--require-better",
        "--on",
        "wbc-test",
    )
    assert back["evidence"]["passed"] is True
    assert back["evidence"]["forced"] is False
    compared = cli_json(e2e_env, "models", "compare", "wbc", "--on", "wbc-test")
    assert {e["purpose"] for e in compared} == {"evaluate", "promotion"}
    assert json.dumps(compared)  # plain JSON
