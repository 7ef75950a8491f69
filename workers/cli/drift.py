"""``drift``: has each model's recent data drifted from its training data?"""

from __future__ import annotations

import sys
from typing import Any

import click

from pynomaly_workers.cli.context import load_adapters
from pynomaly_workers.cli.output import emit, json_option, table


@click.command()
@click.option("--model", default=None, help="Only this model name.")
@json_option
def drift(model: str | None, as_json: bool) -> None:
    """Has each model's recent data drifted from what it was trained on? Per feature: PSI,
    chi-squared p-value (Benjamini-Hochberg corrected), drifted; the score distribution;
    the flagged rate against the training contamination. Exit 3 if anything drifted."""
    from pynomaly_workers.services.drift import check_drift

    reports = check_drift(load_adapters(), model=model)
    emit(reports, as_json=as_json, human=lambda: _print_drift(reports))
    if any(r["drifted"] for r in reports):
        sys.exit(3)


def _print_drift(reports: list[dict[str, Any]]) -> None:
    if not reports:
        click.echo("no model scored anything in the look-back period")
    for report in reports:
        verdict = click.style("DRIFTED", fg="red") if report["drifted"] else "stable"
        click.echo(
            f"{report['model']}@{report['model_version']}: {verdict} "
            f"({report['n_records']} records, {report['status']})"
        )
        if report["status"] != "checked":
            continue
        rows = [
            [f["feature"], f["psi"], f["p_value"], f["q_value"], "yes" if f["drifted"] else ""]
            for f in report["features"]
        ]
        click.echo(table(rows, ["feature", "psi", "p", "q (BH)", "drifted"]))
        score, rate = report["score"], report["flag_rate"]
        click.echo(f"score: psi {score['psi']:.3f}, p {score['p_value']:.3g}")
        click.echo(
            f"flagged: {rate['observed']:.4f} vs {rate['expected']:.4f} (p {rate['p_value']:.3g})\n"
        )
