"""The PostgreSQL engine's session settings, against the real server."""

from __future__ import annotations

import pytest
from sqlalchemy import exc, text

from pynomaly_workers.adapters.stores.engine import build_engine
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
