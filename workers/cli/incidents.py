"""``incidents``: triage by the people on call (list, show, ack, resolve, label)."""

from __future__ import annotations

import getpass
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import click

from pynomaly_workers.cli.context import load_adapters
from pynomaly_workers.cli.output import emit, fail, json_option, table
from pynomaly_workers.domain.errors import InvalidInput
from pynomaly_workers.domain.incidents import (
    INCIDENT_STATUSES,
    LABELS,
    check_label,
    severity_band,
)

if TYPE_CHECKING:
    from pynomaly_workers.domain.ports import IncidentDetail, IncidentRecord
    from pynomaly_workers.services.context import Adapters


def who() -> str:
    """Who is at the keyboard, when --by is not given."""
    return getpass.getuser()


def by_option(func: Any) -> Any:
    func = click.option("--comment", default=None, help="Why (kept in the history).")(func)
    return click.option("--by", default=None, help="Who (default: your login name).")(func)


def _features(incident: IncidentRecord) -> str:
    return ", ".join(name for name, _ in incident.top_features[:3]) or "-"


def incident_rows(found: list[IncidentRecord]) -> str:
    return table(
        [
            [
                i.id,
                i.status,
                f"{i.model_name}@{i.model_version}",
                i.entity,
                i.anomaly_count,
                f"{i.max_severity:.2f} {severity_band(i.max_severity)}",
                i.first_ts,
                i.last_ts,
                _features(i),
            ]
            for i in found
        ],
        ["id", "status", "model", "entity", "anomalies", "severity", "first", "last", "why"],
    )


@click.group(invoke_without_command=True)
@click.option("--status", type=click.Choice(INCIDENT_STATUSES), default=None)
@click.option("--model", default=None, help="Model name (every version).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@json_option
@click.pass_context
def incidents(
    ctx: click.Context, status: str | None, model: str | None, limit: int, as_json: bool
) -> None:
    """List incidents, newest first; see ``incidents show ID`` and the triage commands."""
    if ctx.invoked_subcommand is not None:
        return
    adapters = load_adapters()
    found = adapters.store.list_incidents(status=status, model=model, limit=limit)  # type: ignore[arg-type]
    emit(
        [asdict(i) for i in found], as_json=as_json, human=lambda: click.echo(incident_rows(found))
    )


@incidents.command()
@click.argument("incident_id", type=int)
@click.option("--top", type=click.IntRange(0, 1_000), default=10, show_default=True)
@json_option
def show(incident_id: int, top: int, as_json: bool) -> None:
    """An incident: its figures, history, label counts and most severe anomalies."""
    adapters = load_adapters()
    detail = _guard(lambda: adapters.store.get_incident(incident_id, top=top))
    emit(asdict(detail), as_json=as_json, human=lambda: _print_detail(detail))


def _print_detail(detail: IncidentDetail) -> None:
    i = detail.incident
    click.echo(f"incident {i.id}: {i.status}")
    click.echo(f"  model      {i.model_name}@{i.model_version}")
    click.echo(f"  entity     {i.entity or '-'}")
    click.echo(f"  anomalies  {i.anomaly_count}, from {i.first_ts} to {i.last_ts}")
    click.echo(f"  severity   {i.max_severity:.3f} ({severity_band(i.max_severity)})")
    features = ", ".join(f"{n} {w:.3g}" for n, w in i.top_features) or "-"
    click.echo(f"  features   {features}")
    labels = ", ".join(f"{k} {v}" for k, v in sorted(detail.labels.items())) or "none"
    click.echo(f"  labels     {labels}")
    click.echo("\nhistory:")
    click.echo(
        table(
            [[e.at, e.kind, e.actor, e.comment, _detail(e.detail)] for e in detail.events],
            ["at", "what", "who", "why", "detail"],
        )
    )
    click.echo("\nmost severe anomalies:")
    click.echo(
        table(
            [
                [a.id, a.job_id, a.record_index, a.record_id, a.timestamp, a.severity]
                for a in detail.top_anomalies
            ],
            ["id", "job_id", "record", "record_id", "timestamp", "severity"],
        )
    )


def _detail(detail: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in detail.items()) or "-"


@incidents.command()
@click.argument("incident_id", type=int)
@by_option
@json_option
def ack(incident_id: int, by: str | None, comment: str | None, as_json: bool) -> None:
    """Acknowledge an open incident: someone is on it."""
    from pynomaly_workers.services import incidents as service

    adapters = load_adapters()
    done = _guard(
        lambda: service.acknowledge(adapters, incident_id, by=by or who(), comment=comment)
    )
    emit(
        asdict(done),
        as_json=as_json,
        human=lambda: click.echo(f"incident {done.id} acknowledged by {done.acknowledged_by}"),
    )


@incidents.command()
@click.argument("incident_id", type=int)
@by_option
@json_option
def resolve(incident_id: int, by: str | None, comment: str | None, as_json: bool) -> None:
    """Resolve a live incident (subscribers are told)."""
    from pynomaly_workers.services import incidents as service

    adapters = load_adapters()
    done, queued = _guard(
        lambda: service.resolve(adapters, incident_id, by=by or who(), comment=comment)
    )
    _dispatch(adapters, queued)
    emit(
        asdict(done) | {"notified": len(queued)},
        as_json=as_json,
        human=lambda: click.echo(
            f"incident {done.id} resolved by {done.resolved_by}"
            + (f"; {len(queued)} notification(s) queued" if queued else "")
        ),
    )


@incidents.command("label")
@click.argument("incident_id", type=int)
@click.option("--as", "label", type=click.Choice(LABELS), required=True)
@by_option
@json_option
def label_incident(
    incident_id: int, label: str, by: str | None, comment: str | None, as_json: bool
) -> None:
    """Label every anomaly of an incident (earlier labels are kept in the history)."""
    from pynomaly_workers.services import incidents as service

    adapters = load_adapters()
    count = _guard(
        lambda: service.label_incident(
            adapters,
            incident_id,
            label=check_label(label),
            by=by or who(),
            comment=comment,
        )
    )
    emit(
        {"incident_id": incident_id, "label": label, "anomalies": count},
        as_json=as_json,
        human=lambda: click.echo(f"labelled {count} anomalies of incident {incident_id} {label}"),
    )


def _dispatch(adapters: Adapters, ids: list[int]) -> None:
    """Send the notifications a resolve queued, and end its Alertmanager alert now."""
    from pynomaly_workers.client import client_app
    from pynomaly_workers.services.notifications import dispatch
    from pynomaly_workers.tasks.alerting import request_sync
    from pynomaly_workers.tasks.notifications import delivery_sender

    app = client_app(adapters.settings)
    dispatch(delivery_sender(app), ids)
    request_sync(app, adapters.settings)


def _guard(action: Any) -> Any:
    """Run a triage step; a user's mistake (unknown id, wrong state) is a message."""
    try:
        return action()
    except InvalidInput as exc:
        fail(str(exc))
