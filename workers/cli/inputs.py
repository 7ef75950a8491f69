"""Where a command's records come from: a JSON file, a dataset or a source."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from pynomaly_workers.cli.output import F, fail


def _load_records_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        fail(f"cannot read records from {path}: {exc}")
    if isinstance(data, list):
        return {"records": data}
    if isinstance(data, dict) and "records" in data:
        return {
            k: data[k] for k in ("records", "record_ids", "timestamps", "entities") if k in data
        }
    fail(f"{path} must hold a JSON list of rows or an object with a 'records' key")


def is_object_uri(uri: str) -> bool:
    """True for ``s3://bucket/key`` (passed to the workers as it is)."""
    return uri.startswith("s3://")


def input_kwargs(
    records_file: Path | None, dataset: str | None, source: str | None
) -> dict[str, Any]:
    given = [v for v in (records_file, dataset, source) if v]
    if len(given) != 1:
        fail("give exactly one of --records-file, --dataset or --source")
    if records_file:
        return _load_records_file(records_file)
    if source:
        return {"source": source if is_object_uri(source) else str(Path(source).resolve())}
    return {"dataset": dataset}


def input_options(func: F) -> F:
    """Adds --records-file / --dataset / --source."""
    func = click.option(
        "--source", help="CSV/Parquet path readable by the workers, or s3://bucket/key."
    )(func)
    func = click.option("--dataset", help="Name of a registered dataset.")(func)
    return click.option(
        "--records-file",
        type=click.Path(path_type=Path, exists=True, dir_okay=False),
        help="JSON file: a list of rows, or {records, record_ids, timestamps, entities}.",
    )(func)
