"""``evaluate``: how well a model version ranks a labelled dataset's anomalies, scored
through the workers; and what ``models alias --require-better`` uses for its evidence."""

from __future__ import annotations

import csv
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pynomaly_workers.cli.context import load_adapters
from pynomaly_workers.cli.incidents import who
from pynomaly_workers.cli.output import emit, fail, json_option, table
from pynomaly_workers.contract import EVALUATE_TASK, EVALUATION_PURPOSES, FAILED, FINAL_STATUSES

if TYPE_CHECKING:
    from pynomaly_workers.domain.ports import StoredEvaluation
    from pynomaly_workers.services.context import Adapters

METRIC_LABELS = {
    "average_precision": "average precision",
    "roc_auc": "ROC-AUC",
    "precision": "precision at the threshold",
    "recall": "recall at the threshold",
    "f1": "F1 at the threshold",
    "precision_at_k": "precision at k",
    "alerts_per_1000": "alerts per 1,000 records",
}


def submit_evaluation(
    adapters: Adapters, *, model: str, dataset: str, purpose: str, actor: str
) -> str:
    """Record and publish one ``pynomaly.evaluate``; its job id."""
    from pynomaly_workers.client import client_app, close_app, publish

    job_id = f"eval-{uuid.uuid4().hex}"
    kwargs = {
        "job_id": job_id,
        "model": model,
        "dataset": dataset,
        "purpose": purpose,
        "actor": actor,
    }
    adapters.store.enqueue_evaluation(
        job_id, model=model, dataset=dataset, purpose=purpose, actor=actor, now=adapters.clock.now()
    )
    app = client_app(adapters.settings)
    try:
        publish(app, EVALUATE_TASK, kwargs=kwargs)
    finally:
        close_app(app)
    return job_id


def wait_evaluation(adapters: Adapters, job_id: str, *, timeout: float) -> StoredEvaluation:
    """Poll the run until it ends; its stored figures, or exit with its error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = adapters.store.get_evaluation_run(job_id)
        if run is not None and run.status in FINAL_STATUSES:
            if run.status == FAILED:
                fail(f"evaluation {job_id} of {run.model} failed ({run.error_type}): {run.error}")
            stored = adapters.store.evaluation_of(job_id)
            assert stored is not None, f"evaluation {job_id} succeeded without figures"
            return stored
        time.sleep(0.1)
    fail(
        f"evaluation {job_id} did not finish within {timeout:.0f}s; is a worker running? "
        "('pynomaly-workers health' checks)"
    )


def write_scores(adapters: Adapters, job_id: str, path: Path) -> int:
    """Every scored record as CSV (record_index, record_id, score, label), scores written
    exactly (shortest round-trip text); how many records."""
    scored = adapters.store.evaluation_scores(job_id)
    ids = scored.record_ids or [None] * len(scored.scores)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["record_index", "record_id", "score", "label"])
        for index, record_id, score, label in zip(
            scored.record_index.tolist(),
            ids,
            scored.scores.tolist(),
            scored.labels.tolist(),
            strict=True,
        ):
            writer.writerow(
                [index, "" if record_id is None else record_id, repr(score), int(label)]
            )
    return len(scored.scores)


def print_evaluation(stored: StoredEvaluation) -> None:
    """One evaluation's figures, for people."""
    click.echo(
        f"{stored.model_name}@{stored.model_version} on dataset {stored.dataset_name}: "
        f"{stored.n_records} records, {stored.n_positive} labelled anomalies, "
        f"threshold {stored.threshold:.6g}"
    )
    for key, label in METRIC_LABELS.items():
        shown = f"{label} (k={stored.n_positive})" if key == "precision_at_k" else label
        click.echo(f"  {shown:<32} {stored.metrics[key]:.4f}")


def evaluations_table(found: list[StoredEvaluation]) -> str:
    """Evaluations one a line, newest first."""
    return table(
        [
            [
                e.model_version,
                e.dataset_name,
                e.metrics["average_precision"],
                e.metrics["roc_auc"],
                e.metrics["precision"],
                e.metrics["recall"],
                e.metrics["f1"],
                e.metrics["precision_at_k"],
                e.metrics["alerts_per_1000"],
                e.purpose,
                e.actor,
                e.created_at,
            ]
            for e in found
        ],
        [
            "version",
            "dataset",
            "AP",
            "ROC-AUC",
            "prec",
            "recall",
            "F1",
            "P@k",
            "alerts/1k",
            "purpose",
            "by",
            "when",
        ],
    )


def evaluation_dict(stored: StoredEvaluation) -> dict[str, Any]:
    """An evaluation as JSON-ready data."""
    return asdict(stored)


@click.command()
@click.argument("model")
@click.option("--dataset", required=True, help="A dataset registered with --label-column.")
@click.option(
    "--scores-out",
    type=click.Path(path_type=Path, dir_okay=False, writable=True),
    default=None,
    help="Write record_index, record_id, score, label of every record here (CSV), to "
    "check the figures.",
)
@click.option("--by", default=None, help="Who asked (default: your login name).")
@click.option("--timeout", type=float, default=600, show_default=True)
@json_option
def evaluate(
    model: str,
    dataset: str,
    scores_out: Path | None,
    by: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Score labelled dataset --dataset with MODEL (name, name@version or name@alias)
    through the workers and report average precision, ROC-AUC, precision/recall/F1 at
    the version's threshold, precision at k (k = labelled anomalies) and alerts per
    1,000 records. Nothing is written to anomalies; the figures are kept (models
    history)."""
    adapters = load_adapters()
    job_id = submit_evaluation(
        adapters, model=model, dataset=dataset, purpose=EVALUATION_PURPOSES[0], actor=by or who()
    )
    stored = wait_evaluation(adapters, job_id, timeout=timeout)
    data = evaluation_dict(stored)
    if scores_out is not None:
        written = write_scores(adapters, job_id, scores_out)
        data["scores_out"] = str(scores_out)
    emit(data, as_json=as_json, human=lambda: print_evaluation(stored))
    if scores_out is not None and not as_json:
        click.echo(f"scores of {written} records in {scores_out}")
