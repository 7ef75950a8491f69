"""The beat schedule, and the guarantee that one beat ticks at a time.

Intervals come from settings (``PYNOMALY_MAINTENANCE_INTERVALS``, merged over
:data:`DEFAULT_INTERVALS`). With a Redis for it (the broker, or
``PYNOMALY_BEAT_REDIS_URL``), beat runs celery-redbeat's scheduler: the schedule's state
(each entry's last run) lives in Redis, and only the process holding the Redis lock
ticks. The leader renews the lock every tick (at most ``PYNOMALY_BEAT_MAX_LOOP_INTERVAL``
apart) to ``PYNOMALY_BEAT_LOCK_TIMEOUT`` seconds; a standby polls for it every
``max loop interval``. So after the leader dies a standby ticks within
``lock timeout + max loop interval`` (12 s by default), and continues from the last run
recorded in Redis: the leader records an entry's run before it sends it, so a tick is
never sent twice (a leader killed between the two loses that one tick instead).
Without Redis (the embedded default) beat uses Celery's local scheduler: run one.
"""

from __future__ import annotations

import zlib
from typing import Any

from pynomaly_workers.contract import (
    ALERTMANAGER_TASK,
    FOLD_INCIDENTS_TASK,
    MAINTENANCE_QUEUE,
    NOTIFICATIONS_QUEUE,
    PING_TASK,
    RESOLVE_IDLE_TASK,
    SWEEP_NOTIFICATIONS_TASK,
    maintenance_task,
)
from pynomaly_workers.settings import Settings

MINUTE, HOUR, DAY = 60.0, 3_600.0, 86_400.0
# Seconds between runs of each ``pynomaly.maintenance.<name>`` task.
DEFAULT_INTERVALS: dict[str, float] = {
    "refresh_views": 5 * MINUTE,
    "cache_stats": 1 * MINUTE,
    "sweep_stale_jobs": 5 * MINUTE,
    "slow_queries": 1 * HOUR,
    "drift": 1 * HOUR,
    "vacuum_analyze": 1 * DAY,
    "retention": 1 * DAY,
    "reindex": 7 * DAY,
}
BEAT_TICK_SECONDS = 60.0
SWEEP_NOTIFICATIONS_SECONDS = 60.0
"""How often beat looks for notifications whose delivery message was lost."""
REDBEAT_SCHEDULER = "redbeat.RedBeatScheduler"
REDBEAT_PREFIX = "pynomaly:beat:"


class InvalidSchedule(ValueError):
    """PYNOMALY_MAINTENANCE_INTERVALS names a task that does not exist, or a bad value."""


def intervals(settings: Settings) -> dict[str, float]:
    """Seconds between runs per task: the defaults with the settings' overrides."""
    unknown = set(settings.maintenance_intervals) - set(DEFAULT_INTERVALS)
    if unknown:
        raise InvalidSchedule(
            f"PYNOMALY_MAINTENANCE_INTERVALS names unknown task(s) {', '.join(sorted(unknown))}; "
            f"choose from {', '.join(DEFAULT_INTERVALS)}"
        )
    merged = {**DEFAULT_INTERVALS, **settings.maintenance_intervals}
    negative = [name for name, seconds in merged.items() if seconds < 0]
    if negative:
        raise InvalidSchedule(
            f"PYNOMALY_MAINTENANCE_INTERVALS: {', '.join(negative)} must be 0 (off) or "
            "a positive number of seconds"
        )
    return merged


def jitter(name: str, *, interval: float, spread: float) -> float:
    """A fixed share of ``spread`` for this task (the same in every beat process, so two
    beats agree on the schedule), at most a tenth of the interval."""
    share = (zlib.crc32(name.encode()) % 1000) / 1000.0
    return min(spread, interval / 10.0) * share


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Celery's ``beat_schedule``: one entry per enabled maintenance task, beat's tick,
    and the Alertmanager sync when there is an Alertmanager."""
    schedule = {}
    for name, seconds in intervals(settings).items():
        if seconds <= 0:
            continue
        every = seconds + jitter(name, interval=seconds, spread=settings.schedule_jitter_seconds)
        schedule[name.replace("_", "-")] = {
            "task": maintenance_task(name),
            "schedule": every,
            # A tick nobody ran before the next one is due is dropped, not stacked.
            "options": {"queue": MAINTENANCE_QUEUE, "expires": max(1.0, every * 0.9)},
        }
    # Incident upkeep: the backstop fold (workers ask for one as they settle jobs with
    # anomalies, so this only matters if such a request was lost) and the resolver.
    fold_every = 10 * settings.incident_fold_seconds
    resolve_every = min(60.0, settings.incident_resolve_after_seconds / 4)
    schedule["incidents-fold"] = {
        "task": FOLD_INCIDENTS_TASK,
        "schedule": fold_every,
        "options": {"queue": NOTIFICATIONS_QUEUE, "expires": max(1.0, fold_every * 0.9)},
    }
    schedule["incidents-resolve-idle"] = {
        "task": RESOLVE_IDLE_TASK,
        "schedule": resolve_every,
        "options": {"queue": NOTIFICATIONS_QUEUE, "expires": max(1.0, resolve_every * 0.9)},
    }
    # Beat's heartbeat: a maintenance worker records its arrival as
    # pynomaly_beat_last_tick_timestamp_seconds, so "beat stopped" can be alerted on.
    schedule["beat-tick"] = {
        "task": PING_TASK,
        "schedule": BEAT_TICK_SECONDS,
        "kwargs": {"source": "beat"},
        "options": {"queue": MAINTENANCE_QUEUE, "expires": BEAT_TICK_SECONDS - 5},
    }
    schedule["sweep-notifications"] = {
        "task": SWEEP_NOTIFICATIONS_TASK,
        "schedule": SWEEP_NOTIFICATIONS_SECONDS,
        "options": {"queue": NOTIFICATIONS_QUEUE, "expires": SWEEP_NOTIFICATIONS_SECONDS - 5},
    }
    return schedule | alertmanager_entry(settings)


def alertmanager_expiry(settings: Settings) -> float:
    """An Alertmanager sync nobody ran within this is dropped: the next one does its work."""
    return max(1.0, settings.alertmanager_resend_seconds * 0.9)


def alertmanager_entry(settings: Settings) -> dict[str, dict[str, Any]]:
    """The Alertmanager sync every resend interval, only with ``PYNOMALY_ALERTMANAGER_URL``
    (each alert ends four intervals after its last post unless posted again)."""
    if not settings.alertmanager_url:
        return {}
    return {
        "alertmanager": {
            "task": ALERTMANAGER_TASK,
            "schedule": settings.alertmanager_resend_seconds,
            "options": {"queue": NOTIFICATIONS_QUEUE, "expires": alertmanager_expiry(settings)},
        }
    }


def beat_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for ``beat``: redbeat's locked scheduler when there is a Redis."""
    config: dict[str, Any] = {
        "beat_schedule": beat_schedule(settings),
        "beat_max_loop_interval": settings.beat_max_loop_interval,
    }
    url = settings.resolved_beat_redis_url
    if url:
        from pynomaly_workers.celery_config import tls_options

        config |= {
            # redbeat would otherwise take the broker's TLS options for its own Redis.
            "redbeat_redis_use_ssl": tls_options(url),
            "beat_scheduler": REDBEAT_SCHEDULER,
            "redbeat_redis_url": url,
            "redbeat_key_prefix": REDBEAT_PREFIX,
            "redbeat_lock_key": f"{REDBEAT_PREFIX}lock",
            "redbeat_lock_timeout": settings.beat_lock_timeout,
        }
    return config


def failover_bound_seconds(settings: Settings) -> int:
    """How long after the leading beat dies a standby has taken over, at most."""
    return settings.beat_lock_timeout + settings.beat_max_loop_interval
