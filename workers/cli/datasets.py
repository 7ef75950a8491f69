"""``datasets``: register and list datasets."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click

from pynomaly_workers.cli.context import load_adapters
from pynomaly_workers.cli.inputs import is_object_uri
from pynomaly_workers.cli.output import emit, fail, json_option, table
from pynomaly_workers.domain.errors import PynomalyError


@click.group()
def datasets() -> None:
    """Register and list datasets."""


@datasets.command("add")
@click.argument("name")
@click.argument("path")
@click.option(
    "--label-column",
    default=None,
    help="The column that marks anomalies (1) and normal records (0), for 'evaluate'; "
    "it is never read as a feature.",
)
@json_option
def datasets_add(name: str, path: str, label_column: str | None, as_json: bool) -> None:
    """Register the CSV/Parquet file PATH (a path, file:// URI or s3://bucket/key) as
    dataset NAME."""
    from dataclasses import replace

    from pynomaly_workers.domain.models import check_model_name
    from pynomaly_workers.services.evaluation import labelled

    adapters = load_adapters()
    uri = path if is_object_uri(path) or path.startswith("file://") else str(Path(path).resolve())
    try:
        described = adapters.sources.describe(uri)
        if label_column is not None:
            described = labelled(described, label_column)
    except PynomalyError as exc:
        fail(str(exc))
    dataset = adapters.store.register_dataset(
        replace(described, name=check_model_name(name)), now=adapters.clock.now()
    )
    emit(
        asdict(dataset),
        as_json=as_json,
        human=lambda: click.echo(
            f"dataset {dataset.name}: {dataset.n_rows} rows x {dataset.n_features} features "
            f"({dataset.format}, {dataset.uri})"
            + (f", labels in {dataset.label_column!r}" if dataset.label_column else "")
        ),
    )


@datasets.command("list")
@json_option
def datasets_list(as_json: bool) -> None:
    """List registered datasets."""
    found = load_adapters().store.list_datasets()
    emit(
        [asdict(d) for d in found],
        as_json=as_json,
        human=lambda: click.echo(
            table(
                [[d.name, d.format, d.n_rows, d.n_features, d.label_column, d.uri] for d in found],
                ["name", "format", "rows", "features", "label", "uri"],
            )
        ),
    )
