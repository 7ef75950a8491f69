"""Which lane a piece of detection work takes, and in what order bulk work runs.

A worker that consumes ``detection`` runs two lanes over one prefork pool:

* the **small lane**: ``pynomaly.detect`` jobs of at most ``PYNOMALY_SMALL_JOB_MAX_RECORDS``
  inline records, micro-batched, on whichever pool process is idle;
* the **bulk lane**: everything that takes a pool process for long (fan-out chunks, jobs
  that read a file or carry many records, training, maintenance), at most
  ``pool size - 1`` at a time, so one process is always left for the small lane.

Bulk work is taken least-attained-service first: chunk ``i`` of a job is published with
a priority that falls as ``i`` grows, so the first chunks of a job sent later run before
the later chunks of a long job sent earlier (the queue is FIFO within a level). Pure
functions: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

LEVELS: Final = 4
"""Priority levels of the bulk queue: kombu's Redis transport keeps one list per level
(its default ``priority_steps`` 0, 3, 6, 9), so producers need no extra setting."""
FILE_INPUTS: Final = ("source", "dataset")


def is_small_job(kwargs: Mapping[str, Any], *, max_records: int) -> bool:
    """True for a detection job the small lane runs: inline records, at most
    ``max_records`` of them. A job that reads a file (``source``, ``dataset``) or carries
    more records is bulk work. A malformed job is small: the small lane fails it at
    once with its reason."""
    if any(key in kwargs for key in FILE_INPUTS):
        return False
    records = kwargs.get("records")
    return not isinstance(records, list) or len(records) <= max_records


def bulk_level(chunk_index: int, *, width: int) -> int:
    """The priority level (0 first) of a job's chunk ``chunk_index``: 0 for its first
    ``width`` chunks (one round of the bulk lane), then 1 for the next round, 2 for the
    two after, 3 for the rest. Rounds double per level, so a job's share falls as it
    has been served: a short job sent during a long one overtakes the long one's tail."""
    rounds = max(chunk_index, 0) // max(width, 1)
    return min(rounds.bit_length(), LEVELS - 1)


def message_priority(level: int, *, amqp: bool) -> int:
    """The broker priority of ``level``: on Redis 0 is served first (kombu's lists),
    on RabbitMQ 9 (AMQP; quorum queues of RabbitMQ 4 serve 5-9 before 0-4, those of
    3.x ignore it and stay FIFO)."""
    step = 3 * min(max(level, 0), LEVELS - 1)
    return 9 - step if amqp else step


@dataclass(frozen=True, slots=True)
class PoolLayout:
    """How many pool processes a worker runs, and how many of them bulk work may use."""

    processes: int
    bulk_slots: int


def pool_layout(*, cores: int, concurrency: int, small_lane: bool) -> PoolLayout:
    """The pool for ``cores``: ``concurrency`` processes if set (0 = choose), else one
    per core plus one for the small lane when this worker runs it; bulk work may use
    all processes but that one (never fewer than one)."""
    processes = concurrency or max(cores, 1) + (1 if small_lane else 0)
    bulk = processes - 1 if small_lane and processes > 1 else processes
    return PoolLayout(processes=processes, bulk_slots=bulk)
