"""Two real ``pynomaly-workers beat`` processes on Redis: one enqueues each tick, and
after the leader is killed with SIGKILL the other takes over within the stated bound,
without doubling a tick."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest
import redis

from pynomaly_workers.contract import PING_TASK
from pynomaly_workers.schedules import DEFAULT_INTERVALS, failover_bound_seconds
from pynomaly_workers.settings import Settings
from tests.conftest import REDIS_URL, _require_redis

pytestmark = pytest.mark.e2e
BEAT_DB = 11
TICK_S = 1.0
# Two ticks closer than this were sent for one slot: a doubled tick.
DOUBLED_S = 0.5


@dataclass(frozen=True, slots=True)
class Tick:
    """One enqueued ``refresh_views`` message: when the test popped it, who sent it."""

    at: float
    origin: str


def beat_env(tmp_path: Path) -> dict[str, str]:
    url = f"{REDIS_URL.rstrip('/')}/{BEAT_DB}"
    only_refresh = {name: 0 for name in DEFAULT_INTERVALS} | {"refresh_views": TICK_S}
    return {
        **os.environ,
        "PYNOMALY_BROKER_URL": url,
        "PYNOMALY_RESULT_BACKEND": url,
        "PYNOMALY_HOME": str(tmp_path / "home"),
        "PYNOMALY_ENVIRONMENT": "test",
        "PYNOMALY_MAINTENANCE_INTERVALS": json.dumps(only_refresh),
        "PYNOMALY_SCHEDULE_JITTER_SECONDS": "0",
    }


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[redis.Redis]:
    _require_redis()
    client = redis.Redis.from_url(f"{REDIS_URL.rstrip('/')}/{BEAT_DB}")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def two_beats(tmp_path: Path, broker: redis.Redis) -> Iterator[dict[int, subprocess.Popen[bytes]]]:
    """Two beat processes started a moment apart, by pid."""
    env = beat_env(tmp_path)
    processes, logs = {}, []
    for n in (1, 2):
        logs.append((tmp_path / f"beat-{n}.log").open("wb"))
        process = subprocess.Popen(
            [sys.executable, "-m", "pynomaly_workers.cli", "beat"],
            env=env,
            stdout=logs[-1],
            stderr=subprocess.STDOUT,
        )
        processes[process.pid] = process
    yield processes
    for process in processes.values():
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
    for log in logs:
        log.close()


def collect(
    broker: redis.Redis,
    *,
    seconds: float,
    enough: Callable[[list[Tick]], bool] | None = None,
) -> list[Tick]:
    """Pop every message beat enqueues on the maintenance queue for ``seconds``, or
    until the ticks popped are ``enough``."""
    ticks: list[Tick] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0 and not (enough and enough(ticks)):
        popped = broker.brpop(["maintenance"], timeout=max(1, int(min(left, 1))))
        if popped is not None:
            headers = json.loads(popped[1])["headers"]
            if headers["task"] == PING_TASK:
                continue  # beat's heartbeat (pynomaly_beat_last_tick), not a maintenance tick
            assert headers["task"] == "pynomaly.maintenance.refresh_views"
            ticks.append(Tick(at=time.monotonic(), origin=headers["origin"]))
    return ticks


def steady_ticks(ticks: list[Tick]) -> int:
    """Ticks from two seconds after the first on (the first may come with a catch-up)."""
    return sum(t.at >= ticks[0].at + 2 for t in ticks) if ticks else 0


def pid_of(origin: str) -> int:
    """Celery's origin header is ``gen<pid>@<host>``."""
    return int(origin.split("@", maxsplit=1)[0].removeprefix("gen"))


def closest_gap(ticks: list[Tick]) -> float:
    return min(b.at - a.at for a, b in pairwise(ticks))


@pytest.mark.timeout(180)
def test_two_beats_enqueue_each_tick_once_and_a_standby_takes_over(
    two_beats: dict[int, subprocess.Popen[bytes]], broker: redis.Redis
) -> None:
    bound = failover_bound_seconds(Settings())
    # Given two beats, both started; wait until one is ticking (both start within
    # seconds: ten steady ticks are enough to tell that one of them sends them all)
    first = collect(broker, seconds=30, enough=lambda ticks: steady_ticks(ticks) >= 10)

    # Then one process sent every tick, once per second
    assert len({t.origin for t in first}) == 1, {t.origin for t in first}
    leader = pid_of(first[0].origin)
    assert leader in two_beats
    assert closest_gap(first) > DOUBLED_S
    steady = [t for t in first if t.at >= first[0].at + 2]
    span = steady[-1].at - steady[0].at
    assert len(steady) == pytest.approx(span / TICK_S + 1, abs=2)

    # When the leader is killed with SIGKILL (its lock is left to expire)
    os.kill(leader, signal.SIGKILL)
    killed_at = time.monotonic()
    two_beats[leader].wait(timeout=10)
    after = collect(
        broker,
        seconds=bound + 8,
        enough=lambda ticks: sum(pid_of(t.origin) != leader for t in ticks) >= 5,
    )

    # Then the standby enqueues within the bound, and no tick is doubled
    standby = [t for t in after if pid_of(t.origin) != leader]
    assert standby, "the standby never took over"
    assert {pid_of(t.origin) for t in standby} <= set(two_beats) - {leader}
    assert standby[0].at - killed_at <= bound + TICK_S + 1.0
    late_from_leader = [t for t in after if pid_of(t.origin) == leader]
    assert all(t.at - killed_at < 0.5 for t in late_from_leader)  # already in flight
    assert closest_gap([*first, *after]) > DOUBLED_S
    assert len(standby) >= 4
