"""``anomalies``: the stored anomalies, most severe or newest first."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import click

from pynomaly_workers.cli.context import load_adapters
from pynomaly_workers.cli.output import emit, fail, json_option, table

if TYPE_CHECKING:
    from pynomaly_workers.domain.ports import AnomalyRecord
    from pynomaly_workers.services.context import Adapters


def _top_features(explanation: dict[str, Any] | None, *, k: int = 3) -> str:
    """The first features of an anomaly's explanation, e.g. ``temp 4.1, rpm 0.3``."""
    if not explanation:
        return "-"
    top = explanation.get("top", [])[:k]
    return ", ".join(f"{item['feature']} {item['contribution']:.3g}" for item in top)


@click.command()
@click.option("--job-id", default=None, help="Only this job's anomalies.")
@click.option("--model", default=None, help="Model name (every version).")
@click.option("--min-severity", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option(
    "--newest",
    is_flag=True,
    help="Newest first instead of most severe first: the last --hours of --model "
    "(its active version), or the last 7 days of every model (mv_recent_anomalies).",
)
@click.option("--hours", type=click.FloatRange(min=0, min_open=True), default=24.0)
@click.option("--limit", type=click.IntRange(1, 100_000), default=20, show_default=True)
@json_option
def anomalies(
    job_id: str | None,
    model: str | None,
    min_severity: float,
    newest: bool,
    hours: float,
    limit: int,
    as_json: bool,
) -> None:
    """List stored anomalies, most severe (then newest) first."""
    adapters = load_adapters()
    if newest:
        found = _newest_anomalies(adapters, model=model, hours=hours, limit=limit)
    else:
        found = adapters.reads.top_anomalies(
            min_severity=min_severity, model=model, job_id=job_id, limit=limit
        )
    emit(
        [asdict(a) for a in found],
        as_json=as_json,
        human=lambda: click.echo(
            table(
                [
                    [
                        a.job_id,
                        a.record_index,
                        a.record_id,
                        a.score,
                        a.severity,
                        a.timestamp,
                        _top_features(a.explanation),
                    ]
                    for a in found
                ],
                ["job_id", "record", "record_id", "score", "severity", "timestamp", "why"],
            )
        ),
    )


def _newest_anomalies(
    adapters: Adapters, *, model: str | None, hours: float, limit: int
) -> list[AnomalyRecord]:
    from datetime import timedelta

    now = adapters.clock.now()
    if model is None:
        return adapters.reads.recent_anomalies(now=now, limit=limit)
    active = [m for m in adapters.reads.model_performance(name=model) if m.active]
    if not active:
        fail(f"no active version of model {model!r}; 'pynomaly-workers models' lists them")
    return adapters.reads.anomalies_of_model(
        model_id=active[0].model_id, since=now - timedelta(hours=hours), limit=limit
    )
