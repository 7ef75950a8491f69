"""``models threshold``: set a version's threshold by intent (alerts per day, precision on
labelled anomalies, contamination), see what it would have done first, roll it back, and
read its history. The version stays as registered: each change is its own record."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import click

from pynomaly_workers.cli.context import load_adapters
from pynomaly_workers.cli.output import emit, fail, json_option, table
from pynomaly_workers.domain.errors import InvalidInput

if TYPE_CHECKING:
    from pynomaly_workers.domain.thresholds import Intent, Projection, ThresholdChange
    from pynomaly_workers.services.context import Adapters
    from pynomaly_workers.services.thresholds import ThresholdPlan

DEFAULT_DAYS = 7.0


@click.command("threshold")
@click.argument("model", metavar="NAME@VERSION")
@click.option("--alerts-per-day", type=float, default=None, help="About this many alerts a day.")
@click.option(
    "--precision",
    type=float,
    default=None,
    help="At least this share of the labelled anomalies above it labelled 'anomaly'.",
)
@click.option(
    "--contamination",
    type=float,
    default=None,
    help="The training-score quantile at 1 - C, as if trained with contamination C.",
)
@click.option(
    "--days",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_DAYS,
    show_default=True,
    help="Project over the scores the workers counted in the last D days.",
)
@click.option("--dry-run", is_flag=True, help="Only project: change nothing.")
@click.option("--rollback", is_flag=True, help="Put back the threshold before the last change.")
@click.option("--history", is_flag=True, help="Every change of the version's threshold.")
@click.option("--reason", default=None, help="Why (required to apply or roll back; kept).")
@click.option("--by", default=None, help="Who (default: your login name).")
@json_option
def threshold(
    model: str,
    alerts_per_day: float | None,
    precision: float | None,
    contamination: float | None,
    days: float,
    dry_run: bool,
    rollback: bool,
    history: bool,
    reason: str | None,
    by: str | None,
    as_json: bool,
) -> None:
    """Set NAME@VERSION's threshold by intent: --alerts-per-day N, --precision P or
    --contamination C. It projects, from the score counts the workers keep and from
    triage's labels, the alerts per day the threshold would have raised over the last
    --days and its precision on labelled anomalies; without --dry-run it applies it
    (workers on PostgreSQL use it once it commits, on SQLite within
    PYNOMALY_MODEL_REF_TTL_SECONDS). --rollback undoes the last
    change, --history lists them."""
    intents = {
        "alerts_per_day": alerts_per_day,
        "precision": precision,
        "contamination": contamination,
    }
    given = {kind: value for kind, value in intents.items() if value is not None}
    modes = [name for name, on in (("--history", history), ("--rollback", rollback)) if on]
    if len(modes) + bool(given) != 1 or len(given) > 1:
        fail(
            "say what to do, once: one of --alerts-per-day N, --precision P or "
            "--contamination C (with --dry-run to only project), or --rollback, or --history"
        )
    try:
        if history:
            _history(model, as_json=as_json)
        elif rollback:
            _rollback(model, reason=reason, by=by, days=days, as_json=as_json)
        else:
            ((kind, value),) = given.items()
            _set(
                model,
                kind,
                value,
                days=days,
                dry_run=dry_run,
                reason=reason,
                by=by,
                as_json=as_json,
            )
    except InvalidInput as exc:
        fail(str(exc))


def _set(
    model: str,
    kind: str,
    value: float,
    *,
    days: float,
    dry_run: bool,
    reason: str | None,
    by: str | None,
    as_json: bool,
) -> None:
    from pynomaly_workers.domain.thresholds import check_intent
    from pynomaly_workers.services import thresholds as service

    intent = check_intent(kind, value)
    if not dry_run and not reason:
        fail("say why with --reason (it is kept in the history), or pass --dry-run to only project")
    adapters = load_adapters()
    plan = service.plan_threshold(adapters, model, intent, days=days)
    change = None
    if not dry_run:
        assert reason is not None
        change = service.apply_threshold(adapters, plan, actor=_who(by), reason=reason)
    pickup = picked_up(adapters)
    emit(
        _plan_dict(plan, change),
        as_json=as_json,
        human=lambda: _print_plan(plan, change, pickup=pickup),
    )


def _rollback(
    model: str, *, reason: str | None, by: str | None, days: float, as_json: bool
) -> None:
    from pynomaly_workers.services import thresholds as service

    if not reason:
        fail("say why with --reason (it is kept in the history)")
    adapters = load_adapters()
    change = service.rollback_threshold(adapters, model, actor=_who(by), reason=reason, days=days)
    emit(
        _change_dict(change),
        as_json=as_json,
        human=lambda: click.echo(
            f"{change.model}@{change.version}: threshold {change.previous_threshold:.6g} -> "
            f"{change.threshold:.6g} (rollback, change #{change.id}); workers use it "
            f"{picked_up(adapters)}"
        ),
    )


def _history(model: str, *, as_json: bool) -> None:
    from pynomaly_workers.services import thresholds as service

    version, changes = service.threshold_history(load_adapters(), model)
    trained = (
        version.trained_threshold if version.trained_threshold is not None else version.threshold
    )

    def human() -> None:
        click.echo(
            f"{version.label}: threshold {version.threshold:.6g} in force, trained {trained:.6g}"
        )
        if not changes:
            click.echo("never changed")
            return
        click.echo(
            table(
                [
                    [
                        c.id,
                        c.at,
                        c.action,
                        f"{c.previous_threshold:.6g}",
                        f"{c.threshold:.6g}",
                        _intent_text(c),
                        c.actor,
                        c.reason,
                    ]
                    for c in changes
                ],
                ["change", "when", "action", "from", "to", "intent", "who", "why"],
            )
        )

    emit(
        {
            "model": version.name,
            "version": version.version,
            "threshold": version.threshold,
            "trained_threshold": trained,
            "changes": [_change_dict(c) for c in changes],
        },
        as_json=as_json,
        human=human,
    )


def _who(by: str | None) -> str:
    from pynomaly_workers.cli.incidents import who

    return by or who()


def _intent_text(change: ThresholdChange) -> str:
    intent = change.intent
    if intent.get("kind") == "rollback":
        return f"rollback of #{intent.get('of_change')}"
    return f"{intent.get('kind')} {intent.get('value')} over {intent.get('days')} d"


def _change_dict(change: ThresholdChange) -> dict[str, Any]:
    return asdict(change)


def _plan_dict(plan: ThresholdPlan, change: ThresholdChange | None) -> dict[str, Any]:
    return {
        "model": plan.version.name,
        "version": plan.version.version,
        "intent": plan.intent.to_dict(),
        "threshold": plan.threshold,
        "projection": plan.projection.to_dict(),
        "applied": change is not None,
        "change": _change_dict(change) if change is not None else None,
    }


def picked_up(adapters: Adapters) -> str:
    """When workers see a registry change: PostgreSQL tells them (LISTEN), SQLite not."""
    if getattr(adapters.models, "watch", None) is not None:
        return "as soon as it commits (they LISTEN for registry changes)"
    ttl = adapters.settings.model_ref_ttl_seconds
    return f"within {ttl:g} s (PYNOMALY_MODEL_REF_TTL_SECONDS)"


def _print_plan(plan: ThresholdPlan, change: ThresholdChange | None, *, pickup: str) -> None:
    p, version = plan.projection, plan.version
    click.echo(
        f"{version.label}: threshold {p.current_threshold:.6g} -> {plan.threshold:.6g} "
        f"for {_asked(plan.intent)}"
    )
    for line in _projection_lines(p):
        click.echo(f"  {line}")
    if change is None:
        click.echo(
            "dry run: nothing changed; run it without --dry-run (and with --reason) to apply it"
        )
        return
    click.echo(
        f"applied as change #{change.id}: workers use it {pickup}; undo it with "
        f"'pynomaly-workers models threshold {version.label} --rollback --reason ...'"
    )


def _asked(intent: Intent) -> str:
    return {
        "alerts_per_day": f"{intent.value:g} alerts a day",
        "precision": f"precision {intent.value:g} on labelled anomalies",
        "contamination": f"contamination {intent.value:g} of the training scores",
    }[intent.kind]


def _projection_lines(p: Projection) -> list[str]:
    exact = "" if p.alerts_exact else "about "
    lines = [
        f"alerts: {exact}{p.alerts_per_day:.4g} a day ({p.alerts:.0f} over {p.days_observed:.3g} "
        f"days, {p.records} records scored), against {p.current_alerts_per_day:.4g} a day now",
    ]
    if p.precision is None:
        lines.append("precision: no labelled anomaly above it")
    else:
        lines.append(
            f"precision on labelled anomalies: {p.precision:.3f} ({p.confirmed} of {p.labelled} "
            "labelled 'anomaly')"
        )
    lines += [f"note: {note}" for note in p.notes]
    return lines


PRECISION_HEADERS = ("labelled A", "prec A", "labelled B", "prec B")


def with_precision(
    adapters: Adapters, name: str, pairs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """``models compare``'s version pairs with each one's alert precision: the champion's
    over its labelled stored anomalies, the challenger's over its shadow flags whose
    record the champion stored and someone labelled (over every job it shadowed)."""
    from pynomaly_workers.services.thresholds import alert_precision

    found = {p.version: p for p in alert_precision(adapters, name=name)}
    out = []
    for pair in pairs:
        champion = found.get(pair["champion_version"])
        challenger = found.get(pair["challenger_version"])
        out.append(
            {
                **pair,
                "champion_labelled": champion.labelled if champion else 0,
                "champion_precision": champion.precision if champion else None,
                "challenger_shadow_labelled": challenger.shadow_labelled if challenger else 0,
                "challenger_shadow_precision": challenger.shadow_precision if challenger else None,
            }
        )
    return out


def precision_cells(pair: dict[str, Any]) -> list[Any]:
    """The :data:`PRECISION_HEADERS` cells of one compared pair."""
    return [
        pair["champion_labelled"],
        pair["champion_precision"],
        pair["challenger_shadow_labelled"],
        pair["challenger_shadow_precision"],
    ]
