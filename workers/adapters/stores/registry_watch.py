"""Hearing of model registry changes from PostgreSQL, so a worker can keep what a model
name resolves to for long and still see a new version, a moved alias or a changed
threshold at once.

Migration 0014 makes every statement that changes ``models``, ``model_aliases`` or
``model_thresholds`` send ``NOTIFY pynomaly_registry, '<schema>'``. PostgreSQL delivers
a notification when the transaction that sent it commits, never before: a process that
hears one re-reads what it resolved, and a read made before the commit can no longer be
taken for fresh. Each worker process (after fork) holds one connection that only
LISTENs; checking it is a ``poll()`` of its socket, no round trip.

While that connection is down (or on SQLite), :meth:`PgRegistryWatch.generation`
answers None and the loader falls back to re-reading after its TTL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import time
from typing import Any

from sqlalchemy import Engine

log = logging.getLogger(__name__)

CHANNEL = "pynomaly_registry"
_INHERITED: list[Any] = []
"""Connections a forked process inherited: never used, never finalized there."""
RECONNECT_SECONDS = 5.0
"""The least time between two attempts to open the listening connection."""


class PgRegistryWatch:
    """:class:`~pynomaly_workers.domain.ports.RegistryWatch` on PostgreSQL ``LISTEN``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pid = 0
        self._conn: Any = None
        self._poller: Any = None
        self._schema = ""
        self._generation = 0
        self._next_attempt = 0.0

    def generation(self) -> int | None:
        """A number that grows each time the registry of this schema changed (as heard
        so far); None when changes cannot be heard now."""
        if self._pid != os.getpid():  # forked: the parent's connection is not ours
            if self._conn is not None:  # kept, unused: dropping it would finalize it here
                _INHERITED.append(self._conn)
            self._conn, self._pid = None, os.getpid()
        if self._conn is None and not self._connect():
            return None
        try:
            if self._readable():
                self._drain()
        except Exception as exc:  # the server went away: fall back until it is back
            log.warning("lost the registry LISTEN connection (%s); re-reading after the TTL", exc)
            self._close()
            return None
        return self._generation

    def _readable(self) -> bool:
        return bool(self._poller.poll(0))

    def _drain(self) -> None:
        mine = 0
        for notify in self._conn.notifies(timeout=0):
            if notify.payload in ("", self._schema):
                mine += 1
        if mine:
            self._generation += 1
        elif self._conn.closed:
            raise ConnectionError("the connection was closed")

    def _connect(self) -> bool:
        now = time.monotonic()
        if now < self._next_attempt:
            return False
        self._next_attempt = now + RECONNECT_SECONDS
        conn = None
        try:
            import psycopg

            cargs, cparams = self.engine.dialect.create_connect_args(self.engine.url)
            conn = psycopg.connect(*cargs, **{**cparams, "autocommit": True})
            self._schema = str(conn.execute("SELECT current_schema()").fetchone()[0])  # type: ignore[index]
            conn.execute(f"LISTEN {CHANNEL}")
        except Exception as exc:
            if conn is not None:  # connected, then failed: not left open for the collector
                with contextlib.suppress(Exception):
                    conn.close()
            log.warning("cannot LISTEN for registry changes (%s); re-reading after the TTL", exc)
            return False
        self._conn = conn
        self._poller = select.poll()  # one per connection: checked on every micro-batch
        self._poller.register(conn.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
        # What was resolved before now may predate a change we could not hear.
        self._generation += 1
        return True

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing else to do
                conn.close()

    def close(self) -> None:
        """Close the listening connection (a new one opens on the next call)."""
        if self._pid == os.getpid():
            self._close()
