"""The PostgreSQL engine's session settings and connection checks, against the real
server."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import exc, text

from pynomaly_workers.adapters.stores.engine import PING_AFTER_IDLE_SECONDS, build_engine
from pynomaly_workers.demo import wait_for
from pynomaly_workers.tasks.base import is_transient

pytestmark = pytest.mark.integration


def test_a_session_left_inside_a_transaction_is_ended_by_the_server(pg_url: str) -> None:
    # Given an engine whose sessions may idle in a transaction for 0.3 s
    engine = build_engine(pg_url, idle_in_transaction_timeout=0.3)
    watcher = build_engine(pg_url)
    try:
        with engine.connect() as conn:
            assert (
                conn.execute(text("SHOW idle_in_transaction_session_timeout")).scalar() == "300ms"
            )
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
            # When the client goes silent inside its transaction (a host cut off)
            # (autocommit: within one transaction pg_stat_activity is a snapshot)
            with watcher.connect().execution_options(isolation_level="AUTOCOMMIT") as other:
                gone = wait_for(
                    lambda: (
                        not other.execute(
                            text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"), {"p": pid}
                        ).scalar()
                    ),
                    timeout=10,
                    interval=0.1,
                )
            # Then the server ended the session; the client finds out at its next step,
            # with an error the tasks retry
            assert gone, "the idle-in-transaction session was not ended within 10 s"
            with pytest.raises(exc.DBAPIError) as raised:
                conn.execute(text("SELECT 1"))
            assert is_transient(raised.value), repr(raised.value)
    finally:
        engine.dispose()
        watcher.dispose()


def test_without_a_timeout_the_servers_setting_stands(pg_url: str) -> None:
    engine = build_engine(pg_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW idle_in_transaction_session_timeout")).scalar() == "0"
    finally:
        engine.dispose()


def _terminate(pg_url: str, pid: int) -> None:
    admin = build_engine(pg_url)
    try:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    finally:
        admin.dispose()


def test_a_connection_that_idled_is_pinged_and_replaced_when_the_server_dropped_it(
    pg_url: str,
) -> None:
    # Given a pooled connection the server has ended while it sat in the pool
    engine = build_engine(pg_url)
    try:
        with engine.connect() as conn:
            old = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        assert old is not None
        _terminate(pg_url, old)
        time.sleep(PING_AFTER_IDLE_SECONDS + 0.2)
        # When it is checked out after idling: the ping fails, a new session answers
        with engine.connect() as conn:
            new = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        # Then the caller never saw the dead session
        assert new != old
    finally:
        engine.dispose()


def test_a_connection_in_steady_use_is_not_pinged_and_a_dead_one_fails_as_transient(
    pg_url: str,
) -> None:
    # Given a connection checked in a moment ago, whose session the server then ended
    engine = build_engine(pg_url)
    pings: list[object] = []
    ping = engine.dialect.do_ping

    def counting(dbapi_connection: Any) -> bool:
        pings.append(dbapi_connection)
        return bool(ping(dbapi_connection))

    engine.dialect.do_ping = counting  # type: ignore[method-assign]
    try:
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        assert len(pings) == 1  # a new connection is pinged once
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        assert len(pings) == 1, "a connection used moments ago was pinged (a round trip)"
        assert pid is not None
        _terminate(pg_url, pid)
        # When it is used at once: no ping, so the statement meets the dead session; the
        # error is one the tasks retry, and the pool is discarded
        with pytest.raises(exc.DBAPIError) as raised, engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        assert is_transient(raised.value), repr(raised.value)
        # Then the next checkout gets a new, working session
        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != pid
    finally:
        engine.dispose()
