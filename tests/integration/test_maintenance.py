"""SqlMaintenance on PostgreSQL and SQLite: view refreshes, VACUUM/ANALYZE, retention."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import Engine, text

from pynomaly_workers.adapters.stores import maintenance
from pynomaly_workers.adapters.stores.engine import build_engine
from pynomaly_workers.adapters.stores.maintenance import (
    MATERIALIZED_VIEWS,
    TABLES,
    SqlMaintenance,
)
from pynomaly_workers.adapters.stores.sql import SqlStore
from pynomaly_workers.domain.jobs import JobSummary
from pynomaly_workers.domain.ports import AnomalyBatch, Dataset, ModelDraft
from pynomaly_workers.domain.scoring import fit_score_stats

pytestmark = pytest.mark.integration
NOW = datetime.now(UTC).replace(microsecond=0)
CUTOFF = NOW - timedelta(days=30)


@pytest.fixture
def pg_engine(clean_pg: str) -> Iterator[Engine]:
    """The migrated, empty PostgreSQL schema with its views refreshed before and after, so
    neither this test nor a later one sees view rows of tables since emptied."""
    engine = build_engine(clean_pg)
    empty_views(engine)
    yield engine
    empty_views(engine)
    engine.dispose()


def empty_views(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("TRUNCATE anomalies, detection_jobs, models, model_artifacts, datasets CASCADE")
        )
        for view in MATERIALIZED_VIEWS:
            conn.execute(text(f"REFRESH MATERIALIZED VIEW {view}"))


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    engine = build_engine(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    """Each SQL backend in turn (``store_url`` is parametrized over SQLite and PostgreSQL)."""
    built = build_engine(store_url)
    yield built
    built.dispose()


def register_model(store: SqlStore) -> int:
    stats = fit_score_stats(np.linspace(0.0, 1.0, 101), contamination=0.1)
    draft = ModelDraft(
        name="m",
        algorithm="iforest",
        artifact=b"model",
        onnx=None,
        n_features=2,
        stats=stats,
        params={},
        parity_max_error=None,
        parity_tolerance=None,
        n_training_rows=101,
    )
    return store.register_model(draft, now=NOW).id


def add_anomalies(store: SqlStore, model_id: int, *, job_id: str, at: list[datetime]) -> None:
    n = len(at)
    store.add_anomalies(
        AnomalyBatch(
            job_id=job_id,
            model_id=model_id,
            record_index=np.arange(n, dtype=np.int64),
            score=np.full(n, 2.0),
            severity=np.full(n, 0.8),
            timestamp=at,
            record_id=[None] * n,
        )
    )


def job_in(store: SqlStore, job_id: str, *, status: str, created: datetime, model_id: int) -> None:
    """A job created at ``created`` and left in ``status``."""
    store.enqueue_job(job_id, model="m", now=created)
    if status == "queued":
        return
    store.claim_job(job_id, model="m", now=created)
    if status == "failed":
        store.fail_job(job_id, error="bad", error_type="InvalidRecords", now=created)
    elif status == "succeeded":
        summary = JobSummary(
            job_id=job_id,
            model="m",
            model_version=1,
            n_records=10,
            n_anomalies=2,
            threshold=0.9,
            cache_hits=0,
            duration_ms=5.0,
            top_anomalies=[],
        )
        store.complete_job(summary, model_id=model_id, now=created, extra={"dataset_name": "ds"})


def view_rows(engine: Engine, view: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {view}")).scalar_one())


# -- views ------------------------------------------------------------------------------
def test_refresh_views_on_postgres_publishes_new_rows(pg_engine: Engine) -> None:
    # Given a model, a dataset, a finished job and a recent anomaly, not yet in the views
    store = SqlStore(pg_engine)
    model_id = register_model(store)
    store.register_dataset(
        Dataset(name="ds", uri="file:///ds.csv", format="csv", n_rows=10, n_features=2), now=NOW
    )
    job_in(store, "job-1", status="succeeded", created=NOW, model_id=model_id)
    add_anomalies(store, model_id, job_id="job-1", at=[NOW - timedelta(hours=1)])
    assert [view_rows(pg_engine, v) for v in MATERIALIZED_VIEWS] == [0, 0, 0]

    # When the views are refreshed
    report = SqlMaintenance(pg_engine).refresh_views()

    # Then every view was refreshed and shows the new rows
    assert report == {"refreshed": list(MATERIALIZED_VIEWS)}
    assert [view_rows(pg_engine, v) for v in MATERIALIZED_VIEWS] == [1, 1, 1]
    with pg_engine.connect() as conn:
        jobs, records = conn.execute(
            text("SELECT jobs_succeeded, records_scored FROM mv_model_performance")
        ).one()
        summary = conn.execute(text("SELECT jobs, anomalies_found FROM mv_dataset_summary")).one()
    assert (jobs, records) == (1, 10)
    assert tuple(summary) == (1, 2)


def test_refresh_views_on_sqlite_is_skipped(sqlite_engine: Engine) -> None:
    report = SqlMaintenance(sqlite_engine).refresh_views()

    assert "skipped" in report
    assert "refreshed" not in report


def test_vacuum_analyze_on_postgres_vacuums_every_table(pg_engine: Engine) -> None:
    # When the tables are vacuumed
    report = SqlMaintenance(pg_engine).vacuum_analyze()

    # Then each table reports it
    assert report == {"vacuumed": list(TABLES)}
    with pg_engine.connect() as conn:
        vacuumed = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_user_tables WHERE schemaname = current_schema() "
                "AND last_vacuum IS NOT NULL AND last_analyze IS NOT NULL"
            )
        ).scalar_one()
    assert vacuumed == len(TABLES)


def test_vacuum_analyze_on_sqlite_analyzes(sqlite_engine: Engine) -> None:
    # Given a table with rows, so ANALYZE has something to record
    store = SqlStore(sqlite_engine)
    add_anomalies(store, register_model(store), job_id="job-1", at=[NOW, NOW])

    # When the database is analyzed
    report = SqlMaintenance(sqlite_engine).vacuum_analyze()

    # Then SQLite has planner statistics
    assert report == {"analyzed": list(TABLES)}
    with sqlite_engine.connect() as conn:
        analyzed = conn.execute(text("SELECT DISTINCT tbl FROM sqlite_stat1")).scalars().all()
    assert "anomalies" in analyzed


# -- retention --------------------------------------------------------------------------
def test_retention_deletes_only_old_anomalies(engine: Engine) -> None:
    # Given anomalies on both sides of the cutoff
    store = SqlStore(engine)
    model_id = register_model(store)
    old = [CUTOFF - timedelta(days=1), CUTOFF - timedelta(seconds=1)]
    new = [CUTOFF, CUTOFF + timedelta(seconds=1), NOW]
    add_anomalies(store, model_id, job_id="old", at=old)
    add_anomalies(store, model_id, job_id="new", at=new)

    # When retention runs
    report = SqlMaintenance(engine).retention(cutoff=CUTOFF)

    # Then only the anomalies before the cutoff are gone
    assert report["anomalies_deleted"] == 2
    assert {a.job_id for a in store.list_anomalies(limit=100)} == {"new"}
    assert len(store.list_anomalies(limit=100)) == 3


def test_retention_deletes_only_old_finished_jobs(engine: Engine) -> None:
    # Given old and new jobs in every status
    store = SqlStore(engine)
    model_id = register_model(store)
    old, new = CUTOFF - timedelta(days=1), CUTOFF + timedelta(hours=1)
    for status in ("queued", "running", "succeeded", "failed"):
        for label, created in (("old", old), ("new", new)):
            job_in(store, f"{label}-{status}", status=status, created=created, model_id=model_id)

    # When retention runs
    report = SqlMaintenance(engine).retention(cutoff=CUTOFF)

    # Then old finished jobs are gone; unfinished and recent ones stay
    assert report["jobs_deleted"] == 2
    assert report["cutoff"] == CUTOFF.isoformat()
    assert {j.job_id for j in store.list_jobs(limit=100)} == {
        "old-queued",
        "old-running",
        "new-queued",
        "new-running",
        "new-succeeded",
        "new-failed",
    }


def test_retention_deletes_in_batches(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given more old anomalies than one batch holds
    monkeypatch.setattr(maintenance, "_RETENTION_BATCH", 2)
    store = SqlStore(engine)
    add_anomalies(store, register_model(store), job_id="old", at=[CUTOFF - timedelta(days=1)] * 5)

    # When retention runs
    report = SqlMaintenance(engine).retention(cutoff=CUTOFF)

    # Then every batch was taken
    assert report["anomalies_deleted"] == 5
    assert store.list_anomalies() == []
