"""``train`` and ``train-many``: register model versions trained on a worker."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from pynomaly_workers.cli.context import load_adapters, load_settings
from pynomaly_workers.cli.inputs import input_kwargs, input_options, is_object_uri
from pynomaly_workers.cli.output import emit, fail, json_option, table
from pynomaly_workers.cli.progress import progress_display
from pynomaly_workers.cli.waiting import wait_result, wait_training
from pynomaly_workers.contract import ALGORITHMS, FAILED, TRAIN_TASK, TRAINING_QUEUE


def _parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            fail(
                f"--param {pair!r} must look like key=value (value as JSON, e.g. n_estimators=200)"
            )
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


@click.command()
@click.option("--model", required=True, help="Name to register the new version under.")
@click.option(
    "--algorithm",
    type=click.Choice(ALGORITHMS),
    default="iforest",
    show_default=True,
)
@input_options
@click.option("--contamination", type=float, default=0.01, show_default=True)
@click.option("--param", "params", multiple=True, help="Estimator parameter key=value.")
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.option("--timeout", type=float, default=600, show_default=True)
@json_option
def train(
    model: str,
    algorithm: str,
    records_file: Path | None,
    dataset: str | None,
    source: str | None,
    contamination: float,
    params: tuple[str, ...],
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Train a model version on a worker (pynomaly.train)."""
    from pynomaly_workers.client import client_app, publish

    kwargs = {
        "model": model,
        "algorithm": algorithm,
        "contamination": contamination,
        "params": _parse_params(params),
        **input_kwargs(records_file, dataset, source),
    }
    app = client_app(load_settings())
    result = publish(app, TRAIN_TASK, kwargs=kwargs, queue=TRAINING_QUEUE)
    if not wait:
        emit(
            {"task_id": result.id},
            as_json=as_json,
            human=lambda: click.echo(f"queued training task {result.id}"),
        )
        return
    summary = wait_result(result, timeout=timeout, what="training")
    emit(summary, as_json=as_json, human=lambda: _print_training(summary))


def _print_training(summary: dict[str, Any]) -> None:
    onnx = "yes" if summary["onnx"] else "no"
    click.echo(
        f"registered {summary['model']}@{summary['model_version']} ({summary['algorithm']}): "
        f"{summary['n_training_rows']} rows x {summary['n_features']} features, "
        f"threshold {summary['threshold']:.5f}, ONNX {onnx}"
        + (
            f" (parity error {summary['parity_max_error']:.2e})"
            if summary["parity_max_error"] is not None
            else ""
        )
    )


@click.command("train-many")
@click.option(
    "--file",
    "models_file",
    required=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="JSON file: a list with one pynomaly.train arguments object per model "
    '(model, algorithm, records | dataset | source, ...), or {"models": [...]}.',
)
@click.option(
    "--task-id",
    default=None,
    help="Idempotency key (default: generated). Resending with the same id registers no "
    "model twice and trains only the models not yet registered.",
)
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.option("--timeout", type=float, default=900, show_default=True)
@json_option
def train_many(
    models_file: Path, task_id: str | None, wait: bool, timeout: float, as_json: bool
) -> None:
    """Train many models in one message (pynomaly.train_many), each registered as its
    own version. A model that cannot be trained fails alone; exit 1 if any failed."""
    from pynomaly_workers.client import client_app, submit_training_many

    app = client_app(load_settings())
    models = _load_models_file(models_file)
    submission = submit_training_many(models=models, task_id=task_id, app=app)
    if not wait:
        emit(
            {"task_id": submission.task_id},
            as_json=as_json,
            human=lambda: click.echo(f"queued training task {submission.task_id}"),
        )
        return
    result = app.AsyncResult(submission.task_id)
    display = progress_display(sys.stderr, as_json=as_json)
    store = load_adapters().store if display is not None else None
    summary = wait_training(
        result,
        count=lambda: store.count_trained_by(submission.task_id) if store else 0,
        total=len(models),
        timeout=timeout,
        display=display,
    )
    emit(summary, as_json=as_json, human=lambda: _print_training_many(summary))
    if summary["n_failed"]:
        fail(
            f"{summary['n_failed']} of {summary['n_models']} models failed (see why above); "
            f"fix them in {models_file} without reordering it and resend it with --task-id "
            f"{submission.task_id}: the registered ones are not trained again"
        )


def _load_models_file(path: Path) -> list[Any]:
    """The items of a train-many file, local ``source`` paths made absolute like
    ``train --source`` makes them."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        fail(f"cannot read models from {path}: {exc}")
    items = data.get("models") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        fail(
            f"{path} must hold a non-empty JSON list of training arguments (one object per "
            'model, e.g. {"model": "m", "dataset": "d"}) or {"models": [...]}'
        )
    return [_absolute_source(item) for item in items]


def _absolute_source(item: Any) -> Any:
    source = item.get("source") if isinstance(item, dict) else None
    if not isinstance(source, str) or is_object_uri(source) or source.startswith("file://"):
        return item
    return {**item, "source": str(Path(source).resolve())}


def _print_training_many(summary: dict[str, Any]) -> None:
    rows = [
        [
            index,
            item["model"],
            item.get("model_version"),
            item["status"],
            _training_outcome(item),
        ]
        for index, item in enumerate(summary["models"])
    ]
    click.echo(table(rows, ["#", "model", "version", "status", "detail"]))
    click.echo(
        f"\nregistered {summary['n_succeeded']} of {summary['n_models']} models"
        + (f"; {summary['n_failed']} failed" if summary["n_failed"] else "")
    )


def _training_outcome(item: dict[str, Any]) -> str:
    if item["status"] == FAILED:
        return f"{item['error_type']}: {item['error']}"
    onnx = "ONNX" if item["onnx"] else "no ONNX"
    return (
        f"{item['algorithm']}, {item['n_training_rows']} rows x {item['n_features']} "
        f"features, {onnx}"
    )
