"""``pynomaly-workers``: run workers, beat and Flower; train, detect and inspect.

Output is for people by default; ``--json`` prints one JSON document for machines.
Each command group lives in its own module here; :func:`main` assembles them.
"""

from __future__ import annotations

import click

from pynomaly_workers.cli import (
    anomalies,
    datasets,
    demo,
    detection,
    drift,
    evaluation,
    health,
    incidents,
    maintenance,
    migrate,
    models,
    processes,
    subscriptions,
    suppress,
    thresholds,
    training,
)


@click.group()
@click.version_option(package_name="pynomaly-workers")
def main() -> None:
    """Pynomaly Workers: distributed anomaly detection on Celery."""


models.models.add_command(thresholds.threshold)

for _command in (
    processes.worker,
    processes.beat,
    processes.flower,
    migrate.migrate,
    training.train,
    training.train_many,
    detection.detect,
    detection.jobs,
    evaluation.evaluate,
    models.models,
    anomalies.anomalies,
    incidents.incidents,
    datasets.datasets,
    drift.drift,
    maintenance.maintenance,
    health.health,
    demo.demo,
    subscriptions.subscriptions,
    subscriptions.deliveries,
    suppress.suppress,
):
    main.add_command(_command)

__all__ = ["main"]
