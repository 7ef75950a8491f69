"""Bulk work yields the CPU to small jobs: it runs at a higher nice value.

The bulk lane keeps a pool process free for one-record jobs, but on a host whose cores
all score chunks, that process (and the consumer, PostgreSQL and Redis serving it) must
still win a core when a job arrives: at equal priority the scheduler shares the cores
among everything runnable, and a one-record job took 12 ms at p50 instead of 5.

Linux keeps a nice value per thread, and an unprivileged thread may raise its own but
never lower it again. So bulk work runs on a thread of its own that raises its nice
value and then ends: the pool process's main thread, which later runs small jobs, keeps
its priority. Whatever the bulk thread starts (a forked training child, ONNX Runtime's
threads) inherits the lower priority. With nothing else to run, a niced thread gets the
whole core: bulk work is never slower on an otherwise idle host.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def run_niced(work: Callable[[], T], *, nice: int) -> T:
    """``work()``'s result (or exception), computed on a thread ``nice`` steps below
    this one's priority; ``nice`` 0, or a platform without per-thread priorities,
    runs it here."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return work()
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            lower_this_thread(nice)
            outcome.append(work())
        except BaseException as exc:  # re-raised on the calling thread
            failure.append(exc)

    context = contextvars.copy_context()  # the job id the log lines carry, and the like
    thread = threading.Thread(target=context.run, args=(run,), name="pynomaly-bulk", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def lower_this_thread(nice: int) -> None:
    """Raise the calling thread's nice value by ``nice`` (Linux: ``setpriority`` on the
    thread's id); a failure is logged, never raised."""
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(current + nice, 19))
    except OSError as exc:
        log.debug("could not lower the bulk thread's priority: %s", exc)
