"""Celery's prefork pool, with a warm shutdown that does not stall for 30 seconds.

At a warm shutdown Celery's pool forgets the jobs it has written to a process but not yet
seen accepted (their messages go back to the broker), and its result handler then reads
the processes' pipes only while jobs remain. A process that had already read such a job
runs it and reports it; nobody reads that report, and billiard's process waits for it to
be read (``Worker._ensure_messages_consumed``: 300 x 0.1 s) before it exits. The worker
then took 30 s or more to stop, which is as long as Kubernetes' default grace period: a
pod could be killed mid-shutdown. Seen in ``tests/faults/test_worker_crash.py`` about one
warm shutdown in fifteen under load.

:class:`ResultHandler` reads on after the last job, until every process has exited, so
each report is credited and each process exits as soon as its work is done. The job run
anyway is harmless: its message comes back and its ``job_id`` makes the second run a
no-op. ``celery_config`` makes it the workers' pool (Celery's ``worker_pool``).
"""

from __future__ import annotations

import select
from typing import Any

from billiard.pool import TERMINATE, WorkersJoined
from celery.concurrency import asynpool, prefork

_READ_WAIT_MS = 50


class ResultHandler(asynpool.ResultHandler):
    def on_stop_not_started(self) -> None:
        """Read results while jobs remain (Celery's loop), then the reports of jobs the
        shutdown forgot, until every process has exited."""
        super().on_stop_not_started()
        self.drain_until_exited()

    def drain_until_exited(self) -> None:
        handler: Any = self
        outqueues = set(handler.fileno_to_outq)
        while handler._state != TERMINATE:
            try:
                handler.join_exited_workers(shutdown=True)
            except WorkersJoined:
                return
            poller = select.poll()  # with no pipe left, poll() just waits
            for fd in outqueues:
                poller.register(fd, select.POLLIN)
            # A process's pipe is readable with a message, or at its end (EOF).
            for fd, _ in poller.poll(_READ_WAIT_MS):
                handler._flush_outqueue(
                    fd, outqueues.discard, handler.fileno_to_outq, handler.on_state_change
                )


class AsynPool(asynpool.AsynPool):
    ResultHandler = ResultHandler


class TaskPool(prefork.TaskPool):
    """Celery's prefork pool (``--pool prefork``) with :class:`ResultHandler`."""

    Pool = AsynPool
