"""``anomalies``: the stored anomalies, most severe or newest first."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import click

from pynomaly_workers.cli.context import load_adapters
from pynomaly_workers.cli.output import emit, fail, json_option, table
from pynomaly_workers.domain.incidents import LABELS, check_label

if TYPE_CHECKING:
    from pynomaly_workers.domain.ports import AnomalyRecord
    from pynomaly_workers.services.context import Adapters


SUPPRESSED_CHOICES: dict[str, bool | None] = {"show": None, "only": True, "hide": False}


def _top_features(explanation: dict[str, Any] | None, *, k: int = 3) -> str:
    """The first features of an anomaly's explanation, e.g. ``temp 4.1, rpm 0.3``."""
    if not explanation:
        return "-"
    top = explanation.get("top", [])[:k]
    return ", ".join(f"{item['feature']} {item['contribution']:.3g}" for item in top)


@click.group(invoke_without_command=True)
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
@click.option(
    "--suppressed",
    type=click.Choice(SUPPRESSED_CHOICES),
    default="show",
    show_default=True,
    help="Anomalies a suppression rule matched (marked 'rule N'): show them among the "
    "others, list 'only' them, or 'hide' them.",
)
@json_option
@click.pass_context
def anomalies(
    ctx: click.Context,
    job_id: str | None,
    model: str | None,
    min_severity: float,
    newest: bool,
    hours: float,
    limit: int,
    suppressed: str,
    as_json: bool,
) -> None:
    """List stored anomalies, most severe (then newest) first; ``anomalies label`` labels one."""
    if ctx.invoked_subcommand is not None:
        return
    adapters = load_adapters()
    which = SUPPRESSED_CHOICES[suppressed]
    if newest:
        found = _newest_anomalies(adapters, model=model, hours=hours, limit=limit, which=which)
    else:
        found = adapters.reads.top_anomalies(
            min_severity=min_severity, model=model, job_id=job_id, limit=limit, suppressed=which
        )
    emit(
        [asdict(a) for a in found],
        as_json=as_json,
        human=lambda: click.echo(
            table(
                [
                    [
                        a.id,
                        a.job_id,
                        a.record_index,
                        a.record_id,
                        a.score,
                        a.severity,
                        a.timestamp,
                        a.entity,
                        f"rule {a.suppressed_by}" if a.suppressed_by is not None else "-",
                        _top_features(a.explanation),
                    ]
                    for a in found
                ],
                [
                    "id",
                    "job_id",
                    "record",
                    "record_id",
                    "score",
                    "severity",
                    "timestamp",
                    "entity",
                    "suppressed",
                    "why",
                ],
            )
        ),
    )


def _newest_anomalies(
    adapters: Adapters, *, model: str | None, hours: float, limit: int, which: bool | None
) -> list[AnomalyRecord]:
    from datetime import timedelta

    now = adapters.clock.now()
    if model is None:
        return adapters.reads.recent_anomalies(now=now, limit=limit, suppressed=which)
    active = [m for m in adapters.reads.model_performance(name=model) if m.active]
    if not active:
        fail(f"no active version of model {model!r}; 'pynomaly-workers models' lists them")
    return adapters.reads.anomalies_of_model(
        model_id=active[0].model_id,
        since=now - timedelta(hours=hours),
        limit=limit,
        suppressed=which,
    )


@anomalies.command("label")
@click.argument("anomaly_id", type=int)
@click.option("--as", "label", type=click.Choice(LABELS), required=True)
@click.option("--by", default=None, help="Who (default: your login name).")
@click.option("--comment", default=None, help="Why (kept in the history).")
@click.option("--history", is_flag=True, help="Print every label the anomaly was given.")
@json_option
def label(
    anomaly_id: int,
    label: str,
    by: str | None,
    comment: str | None,
    history: bool,
    as_json: bool,
) -> None:
    """Label one anomaly anomaly / not_anomaly / expected (the newest label counts;
    earlier ones are kept)."""
    from pynomaly_workers.cli.incidents import who
    from pynomaly_workers.domain.errors import InvalidInput
    from pynomaly_workers.services import incidents as service

    adapters = load_adapters()
    try:
        service.label_anomaly(
            adapters,
            anomaly_id,
            label=check_label(label),
            by=by or who(),
            comment=comment,
        )
    except InvalidInput as exc:
        fail(str(exc))
    labels = adapters.store.anomaly_labels(anomaly_id)
    shown = labels if history else labels[:1]
    emit(
        [asdict(x) for x in shown],
        as_json=as_json,
        human=lambda: click.echo(
            table(
                [[x.at, x.label, x.actor, x.comment, x.incident_id] for x in shown],
                ["at", "label", "who", "why", "incident"],
            )
        ),
    )
