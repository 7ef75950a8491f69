"""``demo``: train and detect end to end through a real worker."""

from __future__ import annotations

import click

from pynomaly_workers.cli.context import load_settings
from pynomaly_workers.cli.detection import print_summary
from pynomaly_workers.cli.output import emit, fail, json_option
from pynomaly_workers.domain.errors import PynomalyError


@click.command()
@click.option("--timeout", type=float, default=180, show_default=True)
@json_option
def demo(timeout: float, as_json: bool) -> None:
    """Train and detect end to end through a real worker on this machine."""
    from pynomaly_workers.demo import DemoFailed, run_demo

    try:
        outcome = run_demo(load_settings(), timeout=timeout, echo=None if as_json else click.echo)
    except (DemoFailed, PynomalyError) as exc:
        fail(str(exc))
    emit(outcome, as_json=as_json, human=lambda: print_summary(outcome["summary"]))
