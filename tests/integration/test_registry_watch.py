"""Hearing registry changes from PostgreSQL (migration 0014's triggers, LISTEN)."""

from __future__ import annotations

import gc
import time
import warnings
from collections.abc import Callable

import pytest
from sqlalchemy import text

from pynomaly_workers.adapters.stores import registry_watch
from pynomaly_workers.adapters.stores.engine import build_engine
from pynomaly_workers.adapters.stores.registry_watch import PgRegistryWatch

pytestmark = pytest.mark.integration


def eventually(check: Callable[[], bool], *, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE models SET active = active WHERE false",
        "DELETE FROM model_aliases WHERE false",
        "UPDATE model_thresholds SET threshold = threshold WHERE false",
    ],
)
def test_a_registry_change_is_heard_once_it_commits_not_before(pg_url: str, statement: str) -> None:
    # Given a watch on the migrated schema
    engine = build_engine(pg_url)
    watch = PgRegistryWatch(engine)
    try:
        start = watch.generation()
        assert start is not None

        # When another session changes a registry table inside a transaction
        with engine.connect() as conn:
            transaction = conn.begin()
            conn.execute(text(statement))
            # Then nothing is heard before the commit
            time.sleep(0.2)
            assert watch.generation() == start
            transaction.commit()

        # and the change is heard after it
        assert eventually(lambda: (watch.generation() or 0) > start)
    finally:
        watch.close()
        engine.dispose()


def test_a_change_in_another_schema_is_not_ours(pg_url: str) -> None:
    engine = build_engine(pg_url)
    watch = PgRegistryWatch(engine)
    try:
        start = watch.generation()
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_notify('pynomaly_registry', 'some_other_schema')"))
        time.sleep(0.3)
        assert watch.generation() == start
    finally:
        watch.close()
        engine.dispose()


def test_a_lost_connection_falls_back_to_the_ttl_and_comes_back(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a watch that tries to reconnect at once
    monkeypatch.setattr(registry_watch, "RECONNECT_SECONDS", 0.0)
    engine = build_engine(pg_url)
    watch = PgRegistryWatch(engine)
    try:
        start = watch.generation()
        assert start is not None
        backend = watch._conn.info.backend_pid

        # When the server ends its listening session
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})

        # Then it cannot tell for a moment (the loader re-reads after its TTL)
        assert eventually(lambda: watch.generation() is None or watch._conn is None)
        # and then listens again on a new session, with a newer generation: what was
        # resolved meanwhile may predate a change it did not hear
        assert eventually(lambda: (watch.generation() or 0) > start)
        assert watch._conn.info.backend_pid != backend
    finally:
        watch.close()
        engine.dispose()


def test_a_connection_that_cannot_listen_is_closed_not_left_to_the_collector(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a watch whose LISTEN fails after the connection opened
    monkeypatch.setattr(registry_watch, "CHANNEL", "no such channel")
    engine = build_engine(pg_url)
    watch = PgRegistryWatch(engine)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # When it tries to listen
            assert watch.generation() is None
            gc.collect()
        # Then it falls back to the TTL and left no open connection to be collected
        assert watch._conn is None
        assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    finally:
        watch.close()
        engine.dispose()
