"""Maintenance as plain functions: each run takes its task's lock, does its work and
leaves one row in ``maintenance_runs`` (``succeeded``, ``skipped`` or ``failed``).

The Celery tasks (``pynomaly.maintenance.<name>``) and ``pynomaly-workers maintenance run
NAME`` both call :func:`run_maintenance`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from pynomaly_workers.contract import FAILED, SUCCEEDED
from pynomaly_workers.domain.errors import InvalidInput
from pynomaly_workers.services.context import Adapters as Services
from pynomaly_workers.services.drift import check_drift
from pynomaly_workers.services.thresholds import refresh_precision_gauges

log = logging.getLogger(__name__)

SKIPPED = "skipped"
"""A run's outcome: SUCCEEDED and FAILED (the contract's words for a job) or SKIPPED."""


class InvalidMaintenance(InvalidInput):
    """A maintenance run asked for something that cannot be done (bad name, bad days)."""


@dataclass(frozen=True, slots=True)
class MaintenanceRun:
    """What one run did."""

    task: str
    started_at: datetime
    duration_ms: float
    outcome: str
    rows_affected: int
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the task's result)."""
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        return data


Work = Callable[..., tuple[int, dict[str, Any]]]


def retention_cutoff(*, days: int, now: datetime) -> datetime:
    """``now`` minus ``days``; days below 1 would delete what was detected today."""
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise InvalidMaintenance(
            f"retention days must be a whole number of at least 1, got {days!r}: it deletes "
            "what was detected more than that many days ago; pass days=1 or more "
            "(PYNOMALY_RETENTION_DAYS sets the default)"
        )
    return now - timedelta(days=days)


def _refresh_views(services: Services) -> tuple[int, dict[str, Any]]:
    report = services.maintenance.refresh_views()
    return len(report.get("refreshed", {})), report


def _vacuum_analyze(services: Services) -> tuple[int, dict[str, Any]]:
    report = services.maintenance.vacuum_analyze()
    return len(report.get("vacuumed", report.get("analyzed", []))), report


def _reindex(services: Services) -> tuple[int, dict[str, Any]]:
    report = services.maintenance.reindex(threshold=services.settings.reindex_bloat_threshold)
    return len(report.get("reindexed", [])), report


def _retention(services: Services, days: int | None = None) -> tuple[int, dict[str, Any]]:
    keep = services.settings.retention_days if days is None else days
    cutoff = retention_cutoff(days=keep, now=services.clock.now())
    report = services.maintenance.retention(cutoff=cutoff)
    report["days"] = keep
    return sum(v for k, v in report.items() if k.endswith("_deleted")), report


def _drift(services: Services, model: str | None = None) -> tuple[int, dict[str, Any]]:
    reports = check_drift(services, model=model)
    drifted = [r["model"] for r in reports if r["drifted"]]
    # The model-quality gauges from triage's labels are refreshed on the same schedule.
    labelled = refresh_precision_gauges(services, name=model)
    return len(reports), {"checked": len(reports), "drifted": drifted, "labelled": labelled}


def _slow_queries(services: Services) -> tuple[int, dict[str, Any]]:
    found = services.maintenance.slow_statements(limit=services.settings.slow_queries_top)
    if not found["available"]:
        return 0, found
    rows = [
        {
            "metric_name": "pg_stat_statements.mean_exec_ms",
            "value": float(s["mean_exec_time"]),
            "labels": {
                "queryid": str(s["queryid"]),
                "calls": int(s["calls"]),
                "total_exec_ms": float(s["total_exec_time"]),
                "rows": int(s["rows"]),
                "query": s["query"],
            },
        }
        for s in found["statements"]
    ]
    stored = services.maintenance.record_metrics(rows, now=services.clock.now())
    return stored, {"available": True, "statements": stored}


def _cache_stats(services: Services) -> tuple[int, dict[str, Any]]:
    cache = services.cache
    stats = getattr(cache, "stats", None)
    if cache is None or stats is None:
        return 0, {
            "available": False,
            "reason": "no prediction cache (PYNOMALY_CACHE_URL is empty)",
        }
    values: dict[str, float] = stats()
    rows = [
        {"metric_name": f"prediction_cache.{name}", "value": value, "labels": {}}
        for name, value in values.items()
    ]
    stored = services.maintenance.record_metrics(rows, now=services.clock.now())
    return stored, {"available": True, **values}


def _sweep_stale_jobs(services: Services) -> tuple[int, dict[str, Any]]:
    settings = services.settings
    now = services.clock.now()
    grace = settings.task_time_limit + settings.stale_job_grace_seconds
    report = services.maintenance.sweep_stale_jobs(
        stale_before=now - timedelta(seconds=grace),
        max_attempts=settings.stale_job_max_attempts,
        now=now,
        reason=(
            f"still running {grace} s after it started (hard time limit "
            f"{settings.task_time_limit} s): the worker running it died or hung, and "
            f"it had used its {settings.stale_job_max_attempts} attempts; submit it again "
            "with a new job_id"
        ),
    )
    swept = len(report["requeued"]) + len(report[FAILED]) + len(report["evaluations_failed"])
    return swept, report


TASKS: dict[str, Work] = {
    "refresh_views": _refresh_views,
    "vacuum_analyze": _vacuum_analyze,
    "reindex": _reindex,
    "retention": _retention,
    "drift": _drift,
    "slow_queries": _slow_queries,
    "cache_stats": _cache_stats,
    "sweep_stale_jobs": _sweep_stale_jobs,
}


def run_maintenance(services: Services, name: str, **options: Any) -> MaintenanceRun:
    """Run one maintenance task under its lock and record the run. A run that finds the
    lock taken records ``skipped`` and returns at once; one that fails records
    ``failed`` and re-raises (the task's retry policy decides what next)."""
    work = TASKS.get(name)
    if work is None:
        raise InvalidMaintenance(f"no maintenance task {name!r}; choose from {', '.join(TASKS)}")
    started_at, started = services.clock.now(), services.clock.monotonic()

    def finish(outcome: str, rows: int, detail: dict[str, Any]) -> MaintenanceRun:
        return MaintenanceRun(
            task=name,
            started_at=started_at,
            duration_ms=(services.clock.monotonic() - started) * 1000.0,
            outcome=outcome,
            rows_affected=rows,
            detail=detail,
        )

    with services.maintenance.try_lock(name) as taken:
        if not taken:
            return _record(services, finish(SKIPPED, 0, _held(name)))
        try:
            rows, detail = work(services, **options)
        except Exception as exc:
            error = {"error": str(exc)[:2000], "error_type": type(exc).__name__}
            _record(services, finish(FAILED, 0, error), quiet=True)
            raise
    return _record(services, finish(SUCCEEDED, rows, detail))


def _held(name: str) -> dict[str, Any]:
    return {"reason": f"another {name} run holds its lock"}


def _record(services: Services, run: MaintenanceRun, *, quiet: bool = False) -> MaintenanceRun:
    try:
        services.maintenance.record_run(**asdict(run))
    except Exception:
        if not quiet:
            raise
        # The database that failed the run may refuse its record too: log, and let the
        # run's own error propagate.
        log.exception("could not record the failed %s run", run.task)
    return run
