"""The beat schedule from settings: intervals, jitter, and which scheduler beat runs."""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable

import pytest
from pydantic import ValidationError

from pynomaly_workers.schedules import (
    DEFAULT_INTERVALS,
    REDBEAT_SCHEDULER,
    InvalidSchedule,
    beat_config,
    beat_schedule,
    failover_bound_seconds,
    intervals,
    jitter,
)
from pynomaly_workers.services.maintenance import TASKS
from pynomaly_workers.settings import Settings


def test_every_maintenance_task_has_a_default_interval() -> None:
    assert set(DEFAULT_INTERVALS) == set(TASKS)


def test_overrides_merge_over_the_defaults_and_zero_turns_a_task_off(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        maintenance_intervals={"refresh_views": 60, "reindex": 0}, schedule_jitter_seconds=0
    )

    schedule = beat_schedule(settings)

    assert schedule["refresh-views"]["schedule"] == 60
    assert schedule["refresh-views"]["task"] == "pynomaly.maintenance.refresh_views"
    assert schedule["refresh-views"]["options"]["queue"] == "maintenance"
    assert "reindex" not in schedule
    assert schedule["retention"]["schedule"] == DEFAULT_INTERVALS["retention"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"defragment": 60}, "unknown task(s) defragment; choose from refresh_views"),
        ({"retention": -1}, "retention must be 0 (off) or a positive number"),
    ],
)
def test_bad_intervals_say_what_is_wrong(
    make_settings: Callable[..., Settings], overrides: dict[str, float], message: str
) -> None:
    with pytest.raises(InvalidSchedule, match=re.escape(message)):
        intervals(make_settings(maintenance_intervals=overrides))


@pytest.mark.parametrize("name", sorted(DEFAULT_INTERVALS))
def test_jitter_is_fixed_per_task_and_bounded(name: str) -> None:
    interval = DEFAULT_INTERVALS[name]

    first = jitter(name, interval=interval, spread=30)

    assert first == jitter(name, interval=interval, spread=30)  # every beat agrees
    assert 0 <= first <= min(30, interval / 10)


def test_jitter_spreads_tasks_of_equal_interval() -> None:
    assert jitter("retention", interval=86_400, spread=30) != jitter(
        "vacuum_analyze", interval=86_400, spread=30
    )


def test_a_redis_broker_gets_the_locked_scheduler(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(broker_url="redis://127.0.0.1:6382/3", beat_lock_timeout=10)

    config = beat_config(settings)

    assert config["beat_scheduler"] == REDBEAT_SCHEDULER
    assert config["redbeat_redis_url"] == "redis://127.0.0.1:6382/3"
    assert config["redbeat_lock_timeout"] == 10
    assert config["beat_max_loop_interval"] == 2
    assert failover_bound_seconds(settings) == 12


def test_the_embedded_default_runs_one_local_beat(make_settings: Callable[..., Settings]) -> None:
    config = beat_config(make_settings())

    assert "beat_scheduler" not in config
    assert config["beat_schedule"]


def test_a_lock_shorter_than_two_loops_is_refused(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ValidationError, match="at least twice PYNOMALY_BEAT_MAX_LOOP_INTERVAL"):
        make_settings(beat_lock_timeout=3, beat_max_loop_interval=2)


def test_beat_verifies_the_certificate_of_a_tls_lock_redis(
    make_settings: Callable[..., Settings],
) -> None:
    config = beat_config(make_settings(beat_redis_url="rediss://:pw@127.0.0.1:6382/3"))

    assert config["redbeat_redis_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
