"""Alembic migrations: a full round trip on SQLite and PostgreSQL, the guide's indexes, and
the materialized views (PostgreSQL) with the unique index each needs to refresh CONCURRENTLY.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.pool import NullPool

from pynomaly_workers.adapters.stores.engine import build_engine, normalize_url
from pynomaly_workers.adapters.stores.tables import Base
from pynomaly_workers.migrate import alembic_config, downgrade, upgrade
from tests.conftest import DATABASE_URL, HOW_TO_START

pytestmark = pytest.mark.integration

# The guide's indexes: name -> (table, the predicate of a partial index or None).
GUIDE_INDEXES = {
    "idx_anomalies_timestamp": ("anomalies", None),
    "idx_anomalies_composite": ("anomalies", None),
    # Full since 0003: a partial index serves no threshold below its predicate.
    "idx_anomalies_severity": ("anomalies", None),
    "idx_anomalies_model_severity": ("anomalies", None),
    "idx_anomalies_detected": ("anomalies", None),
    "idx_anomalies_active": ("anomalies", "status = 'active'"),
    "idx_datasets_created": ("datasets", None),
    "idx_datasets_status": ("datasets", None),
    "idx_models_algorithm": ("models", None),
    "idx_metrics_timestamp": ("metrics", None),
    "idx_metrics_rollup": ("metrics", "granularity = 'hour'"),
}
VIEWS = (
    "mv_recent_anomalies",
    "mv_model_performance",
    "mv_dataset_summary",
    "mv_anomaly_counts_hourly",
)
TABLES = {
    "anomalies",
    "anomaly_labels",
    "datasets",
    "delivery_attempts",
    "detection_chunks",
    "detection_jobs",
    "drift_reports",
    "drift_windows",
    "evaluation_chunks",
    "evaluation_runs",
    "evaluations",
    "incident_events",
    "incident_inbox",
    "incidents",
    "maintenance_runs",
    "metrics",
    "model_alias_moves",
    "model_aliases",
    "model_artifacts",
    "model_thresholds",
    "models",
    "notifications",
    "shadow_anomalies",
    "shadow_results",
    "subscriptions",
    "suppression_rules",
    "threshold_changes",
}


@contextmanager
def fresh_schema() -> Iterator[tuple[str, str]]:
    """An empty PostgreSQL schema, dropped afterwards: (url with search_path at it, name)."""
    admin = create_engine(normalize_url(DATABASE_URL), isolation_level="AUTOCOMMIT")
    schema = f"pyn_mig_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:
        admin.dispose()
        pytest.fail(f"PostgreSQL at {DATABASE_URL} is not answering ({exc}); {HOW_TO_START}")
    separator = "&" if "?" in DATABASE_URL else "?"
    options = quote(f"-csearch_path={schema}")
    try:
        yield f"{normalize_url(DATABASE_URL)}{separator}options={options}", schema
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def fresh_pg() -> Iterator[tuple[str, str]]:
    """An unmigrated schema for this test."""
    with fresh_schema() as pg:
        yield pg


@pytest.fixture(scope="module")
def migrated_pg() -> Iterator[tuple[str, str]]:
    """One freshly migrated schema shared by the read-only catalog checks."""
    with fresh_schema() as (url, schema):
        upgrade(url)
        yield url, schema


def connect(url: str) -> Engine:
    """An engine that keeps no connection open after use (schemas get dropped under it)."""
    return create_engine(normalize_url(url), poolclass=NullPool)


# -- catalog queries --------------------------------------------------------------------
def sqlite_tables(conn: Connection) -> set[str]:
    rows = conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'"))
    return {name for (name,) in rows if not name.startswith("sqlite_")}


def sqlite_indexes(conn: Connection) -> dict[str, tuple[str, str]]:
    """Index name -> (table, CREATE statement)."""
    rows = conn.execute(
        text(
            "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        )
    )
    return {name: (table, sql) for name, table, sql in rows}


def pg_tables(conn: Connection, schema: str) -> set[str]:
    rows = conn.execute(
        text("SELECT tablename FROM pg_tables WHERE schemaname = :s"), {"s": schema}
    )
    return {name for (name,) in rows}


def pg_indexes(conn: Connection, schema: str) -> dict[str, tuple[str, str]]:
    """Index name -> (table or view, CREATE statement)."""
    rows = conn.execute(
        text("SELECT indexname, tablename, indexdef FROM pg_indexes WHERE schemaname = :s"),
        {"s": schema},
    )
    return {name: (table, definition) for name, table, definition in rows}


def pg_views(conn: Connection, schema: str) -> set[str]:
    rows = conn.execute(
        text("SELECT matviewname FROM pg_matviews WHERE schemaname = :s"), {"s": schema}
    )
    return {name for (name,) in rows}


def assert_guide_indexes(indexes: dict[str, tuple[str, str]]) -> None:
    for name, (table, predicate) in GUIDE_INDEXES.items():
        assert name in indexes, f"{name} is missing"
        on_table, definition = indexes[name]
        assert on_table == table
        if predicate is None:
            assert "WHERE" not in definition.upper(), definition
        else:
            assert "WHERE" in definition.upper(), f"{name} should be partial: {definition}"
            assert predicate in _without_casts(definition), definition


def _without_casts(definition: str) -> str:
    """PostgreSQL prints ``((status)::text = 'active'::text)``; keep ``status = 'active'``."""
    for noise in ("(", ")", "::text"):
        definition = definition.replace(noise, "")
    return definition


# -- SQLite -----------------------------------------------------------------------------
def test_sqlite_upgrade_downgrade_upgrade(tmp_path: Path) -> None:
    # Given an empty SQLite file
    url = f"sqlite:///{tmp_path / 'migrations.sqlite3'}"
    engine = connect(url)

    # When it is migrated up, all the way down, and up again
    upgrade(url)
    with engine.connect() as conn:
        assert sqlite_tables(conn) == TABLES | {"alembic_version"}
        assert_guide_indexes(sqlite_indexes(conn))
    downgrade(url, revision="base")
    with engine.connect() as conn:
        assert sqlite_tables(conn) == {"alembic_version"}
        assert sqlite_indexes(conn) == {}
    upgrade(url)

    # Then the schema is whole again
    with engine.connect() as conn:
        assert sqlite_tables(conn) == TABLES | {"alembic_version"}
        assert_guide_indexes(sqlite_indexes(conn))
        head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head
    engine.dispose()


# -- PostgreSQL -------------------------------------------------------------------------
def test_postgres_upgrade_downgrade_upgrade(fresh_pg: tuple[str, str]) -> None:
    # Given an empty schema
    url, schema = fresh_pg
    engine = connect(url)

    # When it is migrated up, all the way down, and up again
    upgrade(url)
    with engine.connect() as conn:
        assert pg_tables(conn, schema) == TABLES | {"alembic_version"}
        assert pg_views(conn, schema) == set(VIEWS)
    downgrade(url, revision="base")
    with engine.connect() as conn:
        assert pg_tables(conn, schema) == {"alembic_version"}
        assert pg_views(conn, schema) == set()
        assert pg_indexes(conn, schema).keys() == {"alembic_version_pkc"}
    upgrade(url)

    # Then tables, the guide's indexes and the views are all back
    with engine.connect() as conn:
        assert pg_tables(conn, schema) == TABLES | {"alembic_version"}
        assert pg_views(conn, schema) == set(VIEWS)
        assert_guide_indexes(pg_indexes(conn, schema))
    engine.dispose()


@pytest.mark.parametrize("view", VIEWS)
def test_postgres_view_has_a_unique_index_and_refreshes_concurrently(
    migrated_pg: tuple[str, str], view: str
) -> None:
    # Given the migrated schema
    url, schema = migrated_pg
    engine = connect(url)
    with engine.connect() as conn:
        # Then the view exists with a unique index on it
        assert view in pg_views(conn, schema)
        definitions = [d for table, d in pg_indexes(conn, schema).values() if table == view]
        assert any(d.startswith("CREATE UNIQUE INDEX") for d in definitions), definitions

    # And it refreshes without blocking readers
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"REFRESH MATERIALIZED VIEW CONCURRENTLY {view}"))
    engine.dispose()


def test_postgres_schema_matches_the_table_definitions(migrated_pg: tuple[str, str]) -> None:
    # Given the migrated schema and the ORM tables the store uses
    url, _ = migrated_pg
    engine = build_engine(url)

    # When Alembic compares them
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()

    # Then the migration builds exactly what tables.py declares
    assert differences == []
