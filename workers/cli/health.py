"""``health``: the liveness, readiness and deep probes."""

from __future__ import annotations

import sys
from typing import Any

import click

from pynomaly_workers.cli.context import load_adapters, load_settings
from pynomaly_workers.cli.output import emit, json_option


@click.command()
@click.option(
    "--liveness",
    "mode",
    flag_value="liveness",
    help="Local and cheap: this host's worker runs and its consumer loop is not stuck "
    "(a broker outage does not fail it).",
)
@click.option(
    "--readiness",
    "mode",
    flag_value="readiness",
    help="The broker and the database answer and the schema is at the migrations' head.",
)
@click.option(
    "--queues",
    default=None,
    help="Deep check through these queues (any worker may answer) instead of this "
    "host's worker's own queue.",
)
@click.option(
    "--worker",
    "worker_name",
    default=None,
    help="Worker whose own queue the canary goes to (default: celery@<this host>).",
)
@click.option("--timeout", type=float, default=15, show_default=True)
@json_option
def health(
    mode: str | None,
    queues: str | None,
    worker_name: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Probe the system; exit 0 when healthy, 1 when not.

    Without --liveness/--readiness: the deep check. The database answers, and a canary
    task round-trips through this host's worker (its own queue), proving that worker
    consumes; or through each of --queues."""
    settings = load_settings()
    if mode == "liveness":
        from pynomaly_workers.probes import check_liveness

        report = {"ok": (live := check_liveness(settings))["ok"], "checks": {"liveness": live}}
    elif mode == "readiness":
        from pynomaly_workers.probes import check_readiness

        report = check_readiness(settings, timeout=min(timeout, 10))
    else:
        from pynomaly_workers.services.health import check_health

        report = check_health(
            load_adapters(),
            queues=queues.split(",") if queues else [],
            worker=None if queues else (worker_name or _this_worker()),
            timeout=timeout,
        )
    emit(report, as_json=as_json, human=lambda: _print_health(report))
    if not report["ok"]:
        sys.exit(1)


def _this_worker() -> str:
    import socket

    return f"celery@{socket.gethostname()}"


def _print_health(report: dict[str, Any]) -> None:
    for name, check in report["checks"].items():
        mark = click.style("ok", fg="green") if check["ok"] else click.style("FAIL", fg="red")
        click.echo(f"{mark:>4}  {name}: {check['detail']}")
