"""Incident upkeep: fold settled jobs' anomalies into incidents, resolve idle ones, and
triage. Runs on the ``notifications`` queue, never on the detection path: detection only
leaves each job with anomalies in the inbox (in the transaction that settles it)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from pynomaly_workers.domain.incidents import Label
from pynomaly_workers.domain.ports import FoldReport, IncidentRecord, LabelRecord
from pynomaly_workers.services.context import Adapters

FOLD_BATCH_JOBS = 500
"""Jobs folded per transaction: a transaction stays short however long the inbox is."""


def fold_pending(adapters: Adapters, *, budget_seconds: float = 20.0) -> FoldReport:
    """Fold the inbox, a batch per transaction, until it is empty or the budget is spent
    (the next fold goes on where this one stopped)."""
    gap = timedelta(seconds=adapters.settings.incident_gap_seconds)
    deadline = adapters.clock.monotonic() + budget_seconds
    total = FoldReport()
    while True:
        report = adapters.store.fold_inbox(gap=gap, now=adapters.clock.now(), limit=FOLD_BATCH_JOBS)
        total = _add(total, report)
        if not report.more or adapters.clock.monotonic() >= deadline:
            return replace(total, more=report.more)


def resolve_idle(adapters: Adapters) -> FoldReport:
    """Resolve the incidents that no anomaly joined for the resolve-after setting."""
    idle = timedelta(seconds=adapters.settings.incident_resolve_after_seconds)
    return adapters.store.resolve_idle(idle=idle, now=adapters.clock.now())


def acknowledge(
    adapters: Adapters, incident_id: int, *, by: str, comment: str | None
) -> IncidentRecord:
    return adapters.store.acknowledge_incident(
        incident_id, by=by, comment=comment, now=adapters.clock.now()
    )


def resolve(
    adapters: Adapters, incident_id: int, *, by: str, comment: str | None
) -> tuple[IncidentRecord, list[int]]:
    return adapters.store.resolve_incident(
        incident_id, by=by, comment=comment, now=adapters.clock.now()
    )


def label_anomaly(
    adapters: Adapters, anomaly_id: int, *, label: Label, by: str, comment: str | None
) -> LabelRecord:
    return adapters.store.label_anomaly(
        anomaly_id, label=label, by=by, comment=comment, now=adapters.clock.now()
    )


def label_incident(
    adapters: Adapters, incident_id: int, *, label: Label, by: str, comment: str | None
) -> int:
    return adapters.store.label_incident(
        incident_id, label=label, by=by, comment=comment, now=adapters.clock.now()
    )


def _add(a: FoldReport, b: FoldReport) -> FoldReport:
    return FoldReport(
        jobs=a.jobs + b.jobs,
        anomalies=a.anomalies + b.anomalies,
        opened=a.opened + b.opened,
        grown=a.grown + b.grown,
        resolved=a.resolved + b.resolved,
        notifications=[*a.notifications, *b.notifications],
        more=b.more,
    )
