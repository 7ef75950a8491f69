"""Engine construction for PostgreSQL (psycopg 3) and the embedded SQLite file."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc, text
from sqlalchemy.engine import make_url

PING_AFTER_IDLE_SECONDS = 1.0
"""A pooled connection idle for longer than this is pinged before it is handed out."""


def normalize_url(url: str) -> str:
    """Point bare ``postgresql://`` / ``postgres://`` URLs at the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def build_engine(url: str, *, pool_size: int = 5, idle_in_transaction_timeout: float = 0) -> Engine:
    """An engine tuned for the dialect. Call it after fork: engines do not survive one.

    ``idle_in_transaction_timeout`` (seconds; 0 = the server's setting): PostgreSQL ends
    a session of this engine that sits that long inside a transaction, waiting for its
    client. A worker host cut off from the network mid-write looks exactly like that to
    the server, and its open transaction would otherwise keep the job rows locked (so
    the job, redelivered to another worker, blocks) until TCP keepalive gives up: hours.
    """
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        connect_args={"application_name": "pynomaly-workers", "connect_timeout": 10},
    )
    ping_when_idle(engine, after=PING_AFTER_IDLE_SECONDS)
    if idle_in_transaction_timeout > 0:
        milliseconds = max(1, round(idle_in_transaction_timeout * 1000))
        event.listen(engine, "connect", partial(_idle_in_transaction_timeout, ms=milliseconds))
    return engine


def ping_when_idle(engine: Engine, *, after: float) -> None:
    """Ping a pooled connection before handing it out, as ``pool_pre_ping`` does, but
    only if it sat in the pool longer than ``after`` seconds.

    ``pool_pre_ping`` costs a round trip on every checkout: a quarter of a small batch's
    database time. A connection in steady use was answered moments ago; if the server
    went away since, the statement fails with a disconnect, SQLAlchemy discards the
    whole pool, and the job is retried like any other transient failure. A connection
    that idled (the likely case after a server restart or a network blip) is pinged,
    and replaced if the ping fails."""
    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info["pynomaly_checked_in"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("pynomaly_checked_in")
        if since is not None and time.monotonic() - since <= after:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as error:  # any failure: the pool reconnects and tries again
            raise exc.DisconnectionError(f"connection failed its ping: {error}") from error


def _idle_in_transaction_timeout(dbapi_connection: Any, _record: Any, *, ms: int) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(
        "SELECT set_config('idle_in_transaction_session_timeout', %s, false)", (f"{ms}ms",)
    )
    cursor.close()
    dbapi_connection.commit()  # a SET inside a transaction rolled back would not stick


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the one writer; busy_timeout makes concurrent worker
    # processes wait for the write lock instead of failing with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class SqlProbe:
    """:class:`~pynomaly_workers.domain.ports.DatabaseProbe`: ``SELECT 1``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
