"""``subscriptions`` (webhook subscriptions) and ``deliveries`` (what was sent, and replay)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from pynomaly_workers.cli.context import load_adapters, load_settings
from pynomaly_workers.cli.output import emit, fail, json_option, table
from pynomaly_workers.domain.notifications import SubscriptionError

if TYPE_CHECKING:
    from pynomaly_workers.domain.ports import NotificationStore


@click.group()
def subscriptions() -> None:
    """Webhook subscriptions: where incident notifications are POSTed."""


@subscriptions.command("add")
@click.argument("name")
@click.option("--url", required=True, help="Where to POST (http:// or https://).")
@click.option("--model", default=None, help="Only incidents of this model name.")
@click.option(
    "--min-severity",
    type=float,
    default=0.0,
    show_default=True,
    help="Tell of an incident once its maximum severity reaches this.",
)
@click.option("--secret", default=None, help="whsec_... (generated and printed once if left out).")
@json_option
def subscriptions_add(
    name: str, url: str, model: str | None, min_severity: float, secret: str | None, as_json: bool
) -> None:
    """Add subscription NAME."""
    from pynomaly_workers.services.notifications import add_subscription

    adapters = load_adapters()
    try:
        stored, generated = add_subscription(
            adapters, name=name, url=url, model=model, min_severity=min_severity, secret=secret
        )
    except SubscriptionError as exc:
        fail(str(exc))
    shown = {**stored.public(), **({"secret": generated} if generated else {})}

    def human() -> None:
        click.echo(f"subscription {stored.name}: {stored.url} ({_scope(shown)})")
        if generated:
            click.echo(f"secret: {generated}")
            click.echo("(shown once: give it to the receiver to verify signatures)")

    emit(shown, as_json=as_json, human=human)


def _scope(subscription: dict[str, Any]) -> str:
    model = subscription["model"] or "every model"
    return f"{model}, severity >= {subscription['min_severity']:g}"


@subscriptions.command("list")
@json_option
def subscriptions_list(as_json: bool) -> None:
    """List subscriptions (never their secrets)."""
    found = [s.public() for s in _store().list_subscriptions()]
    emit(
        found,
        as_json=as_json,
        human=lambda: click.echo(
            table(
                [
                    [
                        s["name"],
                        s["url"],
                        s["model"] or "*",
                        s["min_severity"],
                        "yes" if s["enabled"] else f"no: {s['disabled_reason']}",
                    ]
                    for s in found
                ],
                ["name", "url", "model", "min severity", "enabled"],
            )
        ),
    )


@subscriptions.command("remove")
@click.argument("name")
@json_option
def subscriptions_remove(name: str, as_json: bool) -> None:
    """Remove subscription NAME with its notifications and their attempts."""
    try:
        removed = _store().remove_subscription(name)
    except SubscriptionError as exc:
        fail(str(exc))
    emit(
        removed.public(),
        as_json=as_json,
        human=lambda: click.echo(f"removed subscription {removed.name}"),
    )


@subscriptions.command("test")
@click.argument("name")
@json_option
def subscriptions_test(name: str, as_json: bool) -> None:
    """POST one signed com.pynomaly.test event to NAME now and show the answer."""
    from pynomaly_workers.domain.notifications import describe
    from pynomaly_workers.services.notifications import send_test

    try:
        webhook_id, result = send_test(load_adapters(), name)
    except SubscriptionError as exc:
        fail(str(exc))
    ok = result.status_code is not None and 200 <= result.status_code < 300
    answer = {
        "webhook_id": webhook_id,
        "status_code": result.status_code,
        "error": result.error,
        "duration_ms": round(result.duration_s * 1000, 1),
        "ok": ok,
    }
    emit(
        answer,
        as_json=as_json,
        human=lambda: click.echo(
            f"{name}: {describe(result)} in {answer['duration_ms']} ms "
            f"(webhook-id {webhook_id}){'' if ok else ' - not accepted'}"
        ),
    )
    if not ok:
        sys.exit(1)


def _store() -> NotificationStore:
    store = load_adapters().notifications
    if store is None:  # bootstrap always wires it
        fail("notifications are not configured")
    return store


@click.group(invoke_without_command=True)
@click.option("--failed", is_flag=True, help="Only the failed and cancelled ones.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@json_option
@click.pass_context
def deliveries(ctx: click.Context, failed: bool, limit: int, as_json: bool) -> None:
    """The newest notifications and how their delivery went."""
    if ctx.invoked_subcommand is not None:
        return
    found = [d.to_dict() for d in _store().deliveries(failed=failed, limit=limit)]
    emit(
        found,
        as_json=as_json,
        human=lambda: click.echo(
            table(
                [
                    [
                        d["id"],
                        d["subscription"],
                        d["incident_id"],
                        d["event"],
                        d["status"],
                        d["attempts"],
                        d["next_attempt_at"],
                        (d["last_error"] or "")[:60],
                    ]
                    for d in found
                ],
                ["id", "subscription", "incident", "event", "status", "attempts", "next", "error"],
            )
        ),
    )


@deliveries.command("replay")
@click.argument("notification_id", type=int)
@json_option
def deliveries_replay(notification_id: int, as_json: bool) -> None:
    """Send failed or cancelled notification ID again (same body, same webhook-id)."""
    from pynomaly_workers.client import client_app
    from pynomaly_workers.services.notifications import dispatch
    from pynomaly_workers.tasks.notifications import delivery_sender

    adapters = load_adapters()
    try:
        replayed = _store().replay_notification(notification_id, now=adapters.clock.now())
    except SubscriptionError as exc:
        fail(str(exc))
    dispatch(delivery_sender(client_app(load_settings())), [replayed.id])
    emit(
        replayed.to_dict(),
        as_json=as_json,
        human=lambda: click.echo(
            f"notification {replayed.id} ({replayed.event} of incident {replayed.incident_id} "
            f"to {replayed.subscription}) is pending again; webhook-id {replayed.webhook_id}"
        ),
    )
