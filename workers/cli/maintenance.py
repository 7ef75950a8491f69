"""``maintenance``: run maintenance tasks and see what ran."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

import click

from pynomaly_workers.cli.context import load_adapters, load_settings
from pynomaly_workers.cli.output import emit, fail, json_option, table
from pynomaly_workers.cli.waiting import wait_result
from pynomaly_workers.contract import FAILED, maintenance_task, queue_of
from pynomaly_workers.domain.errors import PynomalyError

MAINTENANCE_JOBS = (
    "refresh_views",
    "vacuum_analyze",
    "reindex",
    "retention",
    "drift",
    "slow_queries",
    "cache_stats",
    "sweep_stale_jobs",
)
"""What ``maintenance run`` accepts: the tasks of ``services/maintenance.py``."""


@click.group()
def maintenance() -> None:
    """Run maintenance tasks and see what ran."""


@maintenance.command("run")
@click.argument("name", type=click.Choice(MAINTENANCE_JOBS))
@click.option("--days", type=int, default=None, help="retention: keep this many days.")
@click.option("--inline", is_flag=True, help="Run here instead of on a maintenance worker.")
@click.option("--timeout", type=float, default=600, show_default=True)
@json_option
def maintenance_run(
    name: str, days: int | None, inline: bool, timeout: float, as_json: bool
) -> None:
    """Run one maintenance task now (under its lock, recorded in maintenance_runs)."""
    from pynomaly_workers.services.maintenance import retention_cutoff, run_maintenance

    if days is not None and name != "retention":
        fail("--days applies to 'maintenance run retention' only")
    options = {"days": days} if days is not None else {}
    if days is not None:
        try:
            retention_cutoff(days=days, now=datetime.now().astimezone())
        except PynomalyError as exc:
            fail(str(exc).replace("days=1", "--days 1"))
    if inline:
        report = run_maintenance(load_adapters(), name, **options).to_dict()
    else:
        from pynomaly_workers.client import client_app

        task = maintenance_task(name)
        result = client_app(load_settings()).send_task(task, kwargs=options, queue=queue_of(task))
        report = wait_result(result, timeout=timeout, what=f"maintenance {name}")
    emit(report, as_json=as_json, human=lambda: _print_run(report))
    if report["outcome"] == FAILED:
        sys.exit(1)


def _print_run(run: dict[str, Any]) -> None:
    click.echo(
        f"{run['task']}: {run['outcome']} in {run['duration_ms']:.0f} ms, "
        f"{run['rows_affected']} affected - {json.dumps(run['detail'], default=str)}"
    )


@maintenance.command("history")
@click.option("--task", type=click.Choice(MAINTENANCE_JOBS), default=None)
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@json_option
def maintenance_history(task: str | None, limit: int, as_json: bool) -> None:
    """The latest maintenance runs, newest first."""
    runs = load_adapters().maintenance.runs(task=task, limit=limit)
    emit(
        runs,
        as_json=as_json,
        human=lambda: click.echo(
            table(
                [
                    [
                        r["started_at"],
                        r["task"],
                        r["outcome"],
                        round(r["duration_ms"]),
                        r["rows_affected"],
                        json.dumps(r["detail"], default=str)[:80],
                    ]
                    for r in runs
                ],
                ["started", "task", "outcome", "ms", "rows", "detail"],
            )
        ),
    )
