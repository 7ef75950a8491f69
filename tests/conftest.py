"""Shared fixtures: real PostgreSQL and Redis from the environment, fresh state per test.

Service URLs come from ``PYNOMALY_TEST_DATABASE_URL`` and ``PYNOMALY_TEST_REDIS_URL``
(defaults: this machine's PostgreSQL database ``test`` and Redis). A missing service fails
the tests that need it with a message saying how to start it; nothing is skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from pynomaly_workers.adapters.stores.engine import build_engine, normalize_url
from pynomaly_workers.adapters.stores.sql import SqlStore
from pynomaly_workers.bootstrap import bootstrap
from pynomaly_workers.migrate import upgrade
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.settings import Settings

DATABASE_URL = os.environ.get(
    "PYNOMALY_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("PYNOMALY_TEST_REDIS_URL", "redis://127.0.0.1:6379")
TABLES = (
    "evaluation_chunks",
    "evaluation_runs",
    "evaluations",
    "model_thresholds",
    "threshold_changes",
    "suppression_rules",
    "incident_inbox",
    "incident_events",
    "anomaly_labels",
    "delivery_attempts",
    "notifications",
    "subscriptions",
    "incidents",
    "anomalies",
    "detection_chunks",
    "detection_jobs",
    "drift_reports",
    "drift_windows",
    "model_alias_moves",
    "model_aliases",
    "shadow_anomalies",
    "shadow_results",
    "models",
    "model_artifacts",
    "datasets",
    "metrics",
    "maintenance_runs",
)
HOW_TO_START = "start it with 'make services' (or bash .ci/services)"


def _require_postgres() -> None:
    engine = create_engine(normalize_url(DATABASE_URL), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        pytest.fail(f"PostgreSQL at {DATABASE_URL} is not answering ({exc}); {HOW_TO_START}")
    finally:
        engine.dispose()


def _require_redis() -> None:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as exc:
        pytest.fail(f"Redis at {REDIS_URL} is not answering ({exc}); {HOW_TO_START}")
    finally:
        client.close()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh schema in the test database, migrated by Alembic; dropped afterwards."""
    _require_postgres()
    schema = f"pyn_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(normalize_url(DATABASE_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in DATABASE_URL else "?"
    url = f"{normalize_url(DATABASE_URL)}{separator}options={quote(f'-csearch_path={schema}')}"
    upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def clean_pg(pg_url: str) -> Iterator[str]:
    """The migrated PostgreSQL schema, empty before the test and emptied after it (the
    end-to-end tests share the session's schema and leave their rows in it)."""
    _truncate(pg_url)
    yield pg_url
    _truncate(pg_url)


def _truncate(url: str) -> None:
    engine = build_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite file for this test."""
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    upgrade(url)
    return url


@pytest.fixture
def redis_url() -> Iterator[str]:
    """Redis database 15, flushed before and after the test."""
    _require_redis()
    url = f"{REDIS_URL.rstrip('/')}/15"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings for a test: embedded home under tmp_path unless overridden."""

    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "home": tmp_path / "home",
            "environment": "test",
            "model_ref_ttl_seconds": 0,  # see a retrained version at once
            # Tests write their source files under tmp_path: that is the allowed root.
            "source_roots": (tmp_path,),
        }
        values.update(overrides)
        return Settings(**values)

    return factory


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each SQL backend in turn, migrated and empty."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
        upgrade(url)
        return url
    return str(request.getfixturevalue("clean_pg"))


@pytest.fixture
def adapters(store_url: str, make_settings: Callable[..., Settings]) -> Iterator[Adapters]:
    """Wired adapters on each SQL backend (no prediction cache)."""
    built = bootstrap(make_settings(database_url=store_url))
    yield built
    built.close()


@pytest.fixture
def sql_store(store_url: str) -> Iterator[SqlStore]:
    """The SQL store on each backend."""
    engine = build_engine(store_url)
    yield SqlStore(engine)
    engine.dispose()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3-compatible server on loopback for the whole run."""
    from tests.s3 import moto_server

    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded random generator."""
    return np.random.default_rng(1234)


def normal_rows(rng: np.random.Generator, n: int, width: int = 4) -> list[list[float]]:
    """``n`` rows of standard-normal features."""
    return [[float(v) for v in row] for row in rng.normal(size=(n, width))]
