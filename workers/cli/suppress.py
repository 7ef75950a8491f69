"""``suppress``: rules under which matching anomalies are stored but marked suppressed,
never notified and left out of incidents, until the rule expires or is removed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from pynomaly_workers.cli.context import load_adapters
from pynomaly_workers.cli.output import emit, fail, json_option, table

if TYPE_CHECKING:
    from pynomaly_workers.domain.suppression import SuppressionRule


@click.group()
def suppress() -> None:
    """Suppression rules: anomalies they match are kept, marked, and never notified."""


@suppress.command("add")
@click.option("--model", required=True, help="Model name (every version of it).")
@click.option("--entity", default=None, help="Only anomalies of this entity.")
@click.option("--feature", default=None, help="Only anomalies whose FEATURE lies in --between.")
@click.option(
    "--between",
    type=(float, float),
    default=None,
    metavar="LO HI",
    help="The feature's range, bounds included (with --feature).",
)
@click.option(
    "--until",
    required=True,
    help="When the rule ends: ISO-8601 (2026-12-24T18:00:00Z; UTC without an offset) or "
    "a duration from now (30m, 2h, 3d, 1w).",
)
@click.option("--reason", required=True, help="Why these anomalies are expected (kept).")
@click.option("--by", default=None, help="Who (default: your login name).")
@json_option
def suppress_add(
    model: str,
    entity: str | None,
    feature: str | None,
    between: tuple[float, float] | None,
    until: str,
    reason: str,
    by: str | None,
    as_json: bool,
) -> None:
    """Suppress anomalies of --model (of --entity, with --feature in --between) --until."""
    from pynomaly_workers.cli.incidents import who
    from pynomaly_workers.domain.errors import InvalidInput
    from pynomaly_workers.services.suppression import add_rule

    adapters = load_adapters()
    try:
        rule = add_rule(
            adapters,
            model=model,
            entity=entity,
            feature=feature,
            between=between,
            until=until,
            reason=reason,
            actor=by or who(),
        )
    except InvalidInput as exc:
        fail(str(exc))
    ttl = adapters.settings.suppression_ttl_seconds
    emit(
        rule.to_dict(at=adapters.clock.now()),
        as_json=as_json,
        human=lambda: click.echo(
            f"suppression rule {rule.id}: {_scope(rule)} until {rule.until:%Y-%m-%d %H:%M:%S} "
            f"UTC (workers apply it within {ttl:g} s)"
        ),
    )


def _scope(rule: SuppressionRule) -> str:
    parts = [f"model {rule.model_name}"]
    if rule.entity is not None:
        parts.append(f"entity {rule.entity}")
    if rule.feature is not None:
        parts.append(f"{rule.feature} in [{rule.low:g}, {rule.high:g}]")
    return ", ".join(parts)


@suppress.command("list")
@click.option("--all", "everything", is_flag=True, help="Expired and removed rules too.")
@click.option("--model", default=None, help="Only this model's rules.")
@json_option
def suppress_list(everything: bool, model: str | None, as_json: bool) -> None:
    """The live rules, newest first, with how many anomalies each suppressed."""
    from pynomaly_workers.services.suppression import list_rules

    adapters = load_adapters()
    now = adapters.clock.now()
    found = [r.to_dict(at=now) for r in list_rules(adapters, model=model, ended=everything)]
    emit(found, as_json=as_json, human=lambda: click.echo(_table(found)))


def _table(found: list[dict[str, Any]]) -> str:
    return table(
        [
            [
                r["id"],
                r["model"],
                r["entity"] or "*",
                f"{r['feature']} in [{r['low']:g}, {r['high']:g}]" if r["feature"] else "*",
                r["until"],
                r["state"] if r["state"] != "removed" else f"removed by {r['removed_by']}",
                r["suppressed_count"],
                r["actor"],
                r["reason"][:60],
            ]
            for r in found
        ],
        ["id", "model", "entity", "feature", "until (UTC)", "state", "suppressed", "by", "reason"],
    )


@suppress.command("remove")
@click.argument("rule_id", type=int)
@click.option("--by", default=None, help="Who (default: your login name).")
@json_option
def suppress_remove(rule_id: int, by: str | None, as_json: bool) -> None:
    """End rule RULE_ID now; it is kept, with who removed it and what it suppressed."""
    from pynomaly_workers.cli.incidents import who
    from pynomaly_workers.domain.errors import InvalidInput
    from pynomaly_workers.services.suppression import remove_rule

    adapters = load_adapters()
    try:
        rule = remove_rule(adapters, rule_id, by=by or who())
    except InvalidInput as exc:
        fail(str(exc))
    emit(
        rule.to_dict(at=adapters.clock.now()),
        as_json=as_json,
        human=lambda: click.echo(
            f"removed suppression rule {rule.id} ({_scope(rule)}); it had suppressed "
            f"{rule.suppressed_count} anomalies"
        ),
    )
