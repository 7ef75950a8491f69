"""Which lane detection work takes, the bulk lane's order, and the pool it leaves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kombu.transport import redis as kombu_redis

from pynomaly_workers.adapters.queues import PRIORITY_SEPARATOR, PRIORITY_STEPS, priority_lists
from pynomaly_workers.contract import BULK_QUEUE, DETECTION_QUEUE, MAINTENANCE_QUEUE, TRAINING_QUEUE
from pynomaly_workers.domain.lanes import (
    LEVELS,
    PoolLayout,
    bulk_level,
    is_small_job,
    message_priority,
    pool_layout,
)
from pynomaly_workers.lanes import bulk_lane_queues, from_bulk_lane
from pynomaly_workers.tasks.detection import LaneSorter, seconds_until


@pytest.mark.parametrize(
    ("kwargs", "small"),
    [
        pytest.param({"records": [[1.0]]}, True, id="one-record"),
        pytest.param({"records": [[1.0]] * 1000}, True, id="at-the-limit"),
        pytest.param({"records": [[1.0]] * 1001}, False, id="past-the-limit"),
        pytest.param({"source": "/data/x.csv"}, False, id="a-file"),
        pytest.param({"dataset": "d"}, False, id="a-dataset"),
        pytest.param({"records": "garbage"}, True, id="malformed-fails-in-the-small-lane"),
        pytest.param({}, True, id="no-input-fails-in-the-small-lane"),
    ],
)
def test_a_job_is_small_by_its_inline_records(kwargs: dict[str, Any], small: bool) -> None:
    assert is_small_job(kwargs, max_records=1000) is small


@pytest.mark.parametrize(
    ("index", "width", "level"),
    [
        (0, 2, 0),
        (1, 2, 0),
        (2, 2, 1),
        (3, 2, 1),
        (4, 2, 2),
        (7, 2, 2),
        (8, 2, 3),
        (1_000, 2, 3),
        (0, 1, 0),
        (1, 1, 1),
        (5, 0, 3),  # a width of 0 counts as 1
        (-1, 2, 0),
    ],
)
def test_later_chunks_of_a_job_get_lower_levels(index: int, width: int, level: int) -> None:
    assert bulk_level(index, width=width) == level


def test_a_late_jobs_first_round_goes_before_an_early_jobs_tail() -> None:
    # Given a 30-chunk job queued first and a 1-chunk job after it, FIFO within a level
    queue = [("big", i) for i in range(30)] + [("late", 0)]

    # When the bulk lane takes them by level
    order = sorted(queue, key=lambda item: bulk_level(item[1], width=2))

    # Then the late job runs third, right after the big job's first round
    assert order.index(("late", 0)) == 2


@pytest.mark.parametrize(
    ("level", "redis", "amqp"), [(0, 0, 9), (1, 3, 6), (2, 6, 3), (3, 9, 0), (9, 9, 0)]
)
def test_levels_map_to_each_brokers_priority_order(level: int, redis: int, amqp: int) -> None:
    assert message_priority(level, amqp=False) == redis
    assert message_priority(level, amqp=True) == amqp


def test_every_level_has_a_redis_list_of_its_own() -> None:
    # kombu keeps one list per priority step; two levels on one step would be FIFO
    steps = {
        kombu_redis.Channel.priority(_channel(), message_priority(n, amqp=False))
        for n in range(LEVELS)
    }
    assert len(steps) == LEVELS


def _channel() -> Any:
    channel: Any = object.__new__(kombu_redis.Channel)
    channel.priority_steps = kombu_redis.PRIORITY_STEPS
    return channel


def test_queue_depth_reads_the_lists_kombu_writes() -> None:
    assert list(PRIORITY_STEPS) == kombu_redis.PRIORITY_STEPS
    assert kombu_redis.Channel.sep == PRIORITY_SEPARATOR
    assert priority_lists("q") == ["q", "q\x06\x163", "q\x06\x166", "q\x06\x169"]


@pytest.mark.parametrize(
    ("cores", "concurrency", "small_lane", "layout"),
    [
        pytest.param(2, 0, True, PoolLayout(3, 2), id="default: a core each and one more"),
        pytest.param(8, 0, True, PoolLayout(9, 8), id="eight-cores"),
        pytest.param(2, 0, False, PoolLayout(2, 2), id="no-small-lane"),
        pytest.param(2, 4, True, PoolLayout(4, 3), id="explicit-concurrency"),
        pytest.param(2, 1, True, PoolLayout(1, 1), id="one-process-shares"),
        pytest.param(0, 0, True, PoolLayout(2, 1), id="unknown-cores"),
    ],
)
def test_the_pool_keeps_one_process_for_small_jobs(
    cores: int, concurrency: int, small_lane: bool, layout: PoolLayout
) -> None:
    assert pool_layout(cores=cores, concurrency=concurrency, small_lane=small_lane) == layout


@pytest.mark.parametrize(
    ("selected", "bulk"),
    [
        (
            [DETECTION_QUEUE, TRAINING_QUEUE, MAINTENANCE_QUEUE],
            [BULK_QUEUE, TRAINING_QUEUE, MAINTENANCE_QUEUE],
        ),
        ([DETECTION_QUEUE], [BULK_QUEUE]),
        ([DETECTION_QUEUE, MAINTENANCE_QUEUE], [BULK_QUEUE, MAINTENANCE_QUEUE]),
        ([TRAINING_QUEUE, MAINTENANCE_QUEUE], []),
    ],
)
def test_long_queues_move_to_the_bulk_lane_only_beside_detection(
    selected: list[str], bulk: list[str]
) -> None:
    assert bulk_lane_queues(selected) == bulk


class _Message:
    def __init__(self, channel: Any) -> None:
        self.channel = channel


class _Channel:
    pass


def test_the_bulk_lane_is_told_by_its_channel_not_by_the_message() -> None:
    lane = _Channel()
    lane.pynomaly_bulk_lane = True  # type: ignore[attr-defined]
    assert from_bulk_lane(_Message(lane))
    assert not from_bulk_lane(_Message(_Channel()))
    assert not from_bulk_lane(object())


def test_the_sorter_keeps_only_what_the_lane_does_not_take() -> None:
    taken: list[int] = []

    def take(item: int) -> bool:
        if item % 2:
            taken.append(item)
            return True
        return False

    buffer = LaneSorter(take)
    for item in range(5):
        buffer.put(item)

    assert taken == [1, 3]
    assert [buffer.get_nowait() for _ in range(buffer.qsize())] == [0, 2, 4]


def test_a_countdown_retry_waits_until_its_eta() -> None:
    soon = datetime.now(UTC) + timedelta(seconds=30)
    assert 29 < seconds_until(soon) <= 30
    assert 29 < seconds_until(soon.isoformat()) <= 30
    assert seconds_until(None) == 0
    assert seconds_until(datetime.now(UTC) - timedelta(seconds=5)) == 0
