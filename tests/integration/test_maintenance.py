"""Maintenance on the real PostgreSQL (and SQLite where it applies): locks and the run
record, view refreshes beside readers, VACUUM, reindex by bloat, retention by detection
time, slow statements, cache stats and the stale-job sweeper."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import Engine, text

from pynomaly_workers.adapters.stores import maintenance
from pynomaly_workers.adapters.stores.maintenance import MATERIALIZED_VIEWS, TABLES, SqlMaintenance
from pynomaly_workers.adapters.stores.sql import SqlStore
from pynomaly_workers.bootstrap import bootstrap
from pynomaly_workers.domain.drift import DriftCounts
from pynomaly_workers.domain.ports import AnomalyBatch, ModelDraft
from pynomaly_workers.domain.scoring import fit_score_stats
from pynomaly_workers.domain.shadow import ShadowTally
from pynomaly_workers.services.context import Adapters, SystemClock
from pynomaly_workers.services.maintenance import (
    TASKS,
    InvalidMaintenance,
    run_maintenance,
)
from pynomaly_workers.settings import Settings
from tests.factories import train

pytestmark = pytest.mark.integration
NOW = datetime.now(UTC).replace(microsecond=0)
DAYS = 30
CUTOFF = NOW - timedelta(days=DAYS)


def empty_views(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE anomalies, detection_jobs, detection_chunks, models, model_artifacts, "
                "datasets, metrics, maintenance_runs CASCADE"
            )
        )
        for view in MATERIALIZED_VIEWS:
            conn.execute(text(f"REFRESH MATERIALIZED VIEW {view}"))


@pytest.fixture
def pg(clean_pg: str, redis_url: str, make_settings: Callable[..., Settings]) -> Iterator[Adapters]:
    """Adapters on the migrated, empty PostgreSQL schema (views emptied before and after)
    with the prediction cache on the test Redis."""
    services = bootstrap(make_settings(database_url=clean_pg, cache_url=redis_url))
    empty_views(engine_of(services))
    yield services
    empty_views(engine_of(services))
    services.close()


@pytest.fixture
def either(adapters: Adapters) -> Adapters:
    """Adapters on SQLite, then on PostgreSQL."""
    return adapters


def engine_of(services: Adapters) -> Engine:
    """The engine behind the maintenance adapter (tests reach into the database)."""
    return services.maintenance.engine  # type: ignore[attr-defined, no-any-return]


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


def add_anomalies(
    services: Adapters, model_id: int, *, job_id: str, detected: list[datetime], at: datetime
) -> None:
    """Anomalies of one job with record time ``at``, stored at the ``detected`` times."""
    n = len(detected)
    services.store.add_anomalies(
        AnomalyBatch(
            job_id=job_id,
            model_id=model_id,
            record_index=np.arange(n, dtype=np.int64),
            score=np.full(n, 2.0),
            severity=np.full(n, 0.8),
            timestamp=[at] * n,
            record_id=[None] * n,
        )
    )
    with engine_of(services).begin() as conn:
        for index, when in enumerate(detected):
            conn.execute(
                text(
                    "UPDATE anomalies SET detected_at = :when "
                    "WHERE job_id = :job AND record_index = :i"
                ),
                {"when": when.isoformat(sep=" "), "job": job_id, "i": index},
            )


class FrozenClock(SystemClock):
    """The real monotonic clock; wall time stopped at NOW."""

    def now(self) -> datetime:
        return NOW


def count(services: Adapters, table: str) -> int:
    with engine_of(services).connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def runs(services: Adapters, task: str) -> list[str]:
    return [r["outcome"] for r in services.maintenance.runs(task=task)]


# -- locks and the record ---------------------------------------------------------------
@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_second_copy_records_skipped_while_the_first_holds_the_lock(
    pg: Adapters, task: str
) -> None:
    # Given a first copy of the task holding its lock (on its own connection)
    with pg.maintenance.try_lock(task) as first:
        assert first

        # When a second copy runs meanwhile
        second = run_maintenance(pg, task)

    # Then it did nothing and recorded "skipped"; once the first is done, a run works
    third = run_maintenance(pg, task)
    assert second.outcome == "skipped"
    assert second.rows_affected == 0
    assert third.outcome == "succeeded"
    assert runs(pg, task) == ["succeeded", "skipped"]


def test_two_copies_at_once_one_works_one_skips(pg: Adapters) -> None:
    # Given a transaction holding a lock the refresh waits for (datasets, which
    # mv_dataset_summary reads), so the first copy is still running when the second starts
    blocker = engine_of(pg).connect()
    outcomes: list[str] = []
    first = threading.Thread(
        target=lambda: outcomes.append(run_maintenance(pg, "refresh_views").outcome)
    )
    try:
        blocker.execute(text("LOCK TABLE datasets IN ACCESS EXCLUSIVE MODE"))
        first.start()
        wait_for(lambda: blocked_on_lock(engine_of(pg)), what="the first copy to wait")

        # When a second copy runs while the first is inside the task
        second = run_maintenance(pg, "refresh_views")
    finally:
        blocker.rollback()
        blocker.close()
        first.join(timeout=60)

    # Then one did the work and one recorded "skipped"
    assert not first.is_alive(), "the first copy still runs 60 s after the lock was released"
    assert second.outcome == "skipped"
    assert outcomes == ["succeeded"]
    assert sorted(runs(pg, "refresh_views")) == ["skipped", "succeeded"]


def test_a_failed_run_is_recorded_and_raised(pg: Adapters) -> None:
    # Given a view dropped from under the refresh
    with engine_of(pg).begin() as conn:
        conn.execute(text("DROP MATERIALIZED VIEW mv_anomaly_counts_hourly"))
    try:
        # When refresh_views runs
        with pytest.raises(Exception, match="mv_anomaly_counts_hourly"):
            run_maintenance(pg, "refresh_views")
    finally:
        restore_counts_view(engine_of(pg))

    # Then the failure is on record with its error
    [record] = pg.maintenance.runs(task="refresh_views")
    assert record["outcome"] == "failed"
    assert "mv_anomaly_counts_hourly" in record["detail"]["error"]


def restore_counts_view(engine: Engine) -> None:
    from importlib import import_module

    migration = import_module("pynomaly_workers.migrations.versions.0007_read_side_and_maintenance")
    with engine.begin() as conn:
        for statement in migration.COUNTS_VIEW:
            conn.execute(text(statement))


def test_an_unknown_task_says_which_exist(pg: Adapters) -> None:
    with pytest.raises(InvalidMaintenance, match="choose from refresh_views"):
        run_maintenance(pg, "defragment")


def wait_for(condition: Callable[[], bool], *, what: str, timeout: float = 20.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def blocked_on_lock(engine: Engine) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database() AND query LIKE 'REFRESH%'"
                )
            ).scalar()
        )


# -- views ------------------------------------------------------------------------------
def test_refresh_views_publishes_new_rows(pg: Adapters) -> None:
    # Given a model, a finished job and a recent anomaly, not yet in the views
    model_id = register_model(pg.store)  # type: ignore[arg-type]
    pg.store.enqueue_job("job-1", model="m", now=NOW)
    add_anomalies(pg, model_id, job_id="job-1", detected=[NOW], at=NOW - timedelta(hours=1))
    assert pg.reads.recent_anomalies(now=NOW) == []

    # When the views are refreshed
    run = run_maintenance(pg, "refresh_views")

    # Then every view was refreshed concurrently and shows the new rows
    assert run.detail == {"refreshed": dict.fromkeys(MATERIALIZED_VIEWS, "concurrently")}
    assert [a.job_id for a in pg.reads.recent_anomalies(now=NOW)] == ["job-1"]
    assert pg.reads.counts_per_model(since=NOW - timedelta(hours=24))[0]["anomalies"] == 1


def test_a_never_populated_view_is_refreshed_plainly(pg: Adapters) -> None:
    # Given a view left unpopulated (CONCURRENTLY refuses one)
    with engine_of(pg).begin() as conn:
        conn.execute(text("REFRESH MATERIALIZED VIEW mv_dataset_summary WITH NO DATA"))

    # When the views are refreshed
    report = pg.maintenance.refresh_views()

    # Then that one was refreshed plainly, the others concurrently
    assert report["refreshed"]["mv_dataset_summary"] == "plain"
    assert report["refreshed"]["mv_model_performance"] == "concurrently"
    assert pg.reads.dataset_summary() == []


def test_views_refresh_while_a_reader_holds_them_and_readers_keep_reading(
    pg: Adapters,
) -> None:
    # Given data to refresh and a reader inside a transaction that has read every view
    model_id = register_model(pg.store)  # type: ignore[arg-type]
    add_anomalies(pg, model_id, job_id="j", detected=[NOW] * 200, at=NOW - timedelta(hours=1))
    reader = engine_of(pg).connect()
    for view in MATERIALIZED_VIEWS:
        reader.execute(text(f"SELECT count(*) FROM {view}"))
    answered: list[int] = []
    stop = threading.Event()

    def read_in_a_loop() -> None:
        with engine_of(pg).connect() as conn:
            while not stop.is_set():
                answered.append(len(conn.execute(text("SELECT * FROM mv_recent_anomalies")).all()))
                conn.rollback()

    looping = threading.Thread(target=read_in_a_loop)
    looping.start()

    # When the views are refreshed (a plain REFRESH would wait for the open reader)
    done = threading.Event()

    def refresh() -> None:
        pg.maintenance.refresh_views()
        done.set()

    refresher = threading.Thread(target=refresh)
    refresher.start()
    finished = done.wait(timeout=30)
    stop.set()
    looping.join()
    reader.rollback()
    reader.close()
    refresher.join()

    # Then the refresh finished with the reader's transaction still open, the looping
    # reader was answered meanwhile (old or new rows, never an error), and the new rows
    # are published
    assert finished, "refresh_views waited for a reader: not CONCURRENTLY"
    assert answered
    assert set(answered) <= {0, 200}
    assert len(pg.reads.recent_anomalies(now=NOW, limit=500)) == 200


# -- vacuum and reindex -----------------------------------------------------------------
def test_vacuum_analyze_vacuums_every_table(pg: Adapters) -> None:
    run = run_maintenance(pg, "vacuum_analyze")

    assert run.detail == {"vacuumed": list(TABLES)}
    with engine_of(pg).connect() as conn:
        vacuumed = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_user_tables WHERE schemaname = current_schema() "
                "AND last_vacuum IS NOT NULL AND last_analyze IS NOT NULL"
            )
        ).scalar_one()
    assert vacuumed == len(TABLES)


def index_file(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT relfilenode FROM pg_class WHERE oid = CAST(:n AS regclass)"),
                {"n": name},
            ).scalar_one()
        )


def test_reindex_rebuilds_only_bloated_indexes(pg: Adapters) -> None:
    # Given 60k anomalies of which 95% are deleted and vacuumed (their indexes keep
    # their pages, mostly empty), and 60k jobs left alone (indexes as big, not bloated)
    engine = engine_of(pg)
    model_id = register_model(pg.store)  # type: ignore[arg-type]
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO anomalies (job_id, record_index, model_id, timestamp, score, "
                "severity, status) SELECT 'j', g, :m, now(), 1, 0.5, 'active' "
                "FROM generate_series(1, 60000) g"
            ),
            {"m": model_id},
        )
        conn.execute(
            text(
                "INSERT INTO detection_jobs (job_id, status, attempts, created_at) "
                "SELECT 'job-' || g, 'queued', 0, now() FROM generate_series(1, 60000) g"
            )
        )
        conn.execute(text("DELETE FROM anomalies WHERE record_index % 20 <> 0"))
    pg.maintenance.vacuum_analyze()
    watched = ("pk_anomalies", "pk_detection_jobs", "pk_models")
    before = {name: index_file(engine, name) for name in watched}

    # When reindex runs
    run = run_maintenance(pg, "reindex")

    # Then the bloated anomalies index was rebuilt (and is no longer bloated); the big
    # healthy jobs index and the small models index were left alone
    assert "pk_anomalies" in run.detail["reindexed"]
    assert run.detail["measured"]["pk_anomalies"] >= 0.3
    assert run.detail["measured"]["pk_detection_jobs"] < 0.3
    assert {"pk_detection_jobs", "pk_models"}.isdisjoint(run.detail["reindexed"])
    after = {name: index_file(engine, name) for name in watched}
    assert after["pk_anomalies"] != before["pk_anomalies"]
    assert (after["pk_detection_jobs"], after["pk_models"]) == (
        before["pk_detection_jobs"],
        before["pk_models"],
    )
    pg.maintenance.vacuum_analyze()
    bloat = SqlMaintenance(engine).index_bloat()
    assert bloat["pk_anomalies"]["bloat"] < 0.3


# -- retention --------------------------------------------------------------------------
def test_retention_deletes_by_detection_time_exactly(either: Adapters) -> None:
    # Given anomalies detected on both sides of the cutoff; the young ones carry an old
    # record timestamp (back-filled history), the old ones a recent one; and the clock
    # stopped at NOW so the cutoff is exact
    services = either
    services.clock = FrozenClock()
    model_id = register_model(services.store)  # type: ignore[arg-type]
    old = [CUTOFF - timedelta(days=1), CUTOFF - timedelta(seconds=1)]
    young = [CUTOFF + timedelta(seconds=1), CUTOFF + timedelta(hours=1), NOW]
    add_anomalies(services, model_id, job_id="old", detected=old, at=NOW)
    add_anomalies(services, model_id, job_id="young", detected=young, at=NOW - timedelta(days=400))

    # When retention keeps DAYS days
    run = run_maintenance(services, "retention", days=DAYS)

    # Then exactly the old detections are gone
    assert run.detail["anomalies_deleted"] == 2
    left = services.reads.top_anomalies(limit=100)
    assert sorted(a.job_id for a in left) == ["young"] * 3


def test_retention_deletes_old_finished_jobs_chunks_metrics_and_runs(pg: Adapters) -> None:
    # Given old and new jobs in every status, chunks, metrics and past runs
    old, new = CUTOFF - timedelta(days=1), CUTOFF + timedelta(hours=1)
    for status in ("queued", "running", "succeeded", "failed"):
        for label, created in (("old", old), ("new", new)):
            job_in(pg, f"{label}-{status}", status=status, created=created)
    with engine_of(pg).begin() as conn:
        conn.execute(
            text(
                "INSERT INTO detection_chunks VALUES "
                "('old-running', 0, 1, 0, 0, '{}', :old), ('new-running', 0, 1, 0, 0, '{}', :new),"
                "('new-succeeded', 0, 1, 0, 0, '{}', :new)"
            ),
            {"old": old, "new": new},
        )
    pg.maintenance.record_metrics([{"metric_name": "x", "value": 1.0, "labels": {}}], now=old)
    pg.maintenance.record_metrics([{"metric_name": "x", "value": 2.0, "labels": {}}], now=new)
    for started in (old, new):
        pg.maintenance.record_run(
            task="vacuum_analyze",
            started_at=started,
            duration_ms=1.0,
            outcome="succeeded",
            rows_affected=0,
            detail={},
        )

    # When retention runs
    report = run_maintenance(pg, "retention", days=DAYS).detail

    # Then the old finished jobs, old chunks and chunks of finished jobs, old metrics and
    # old runs are gone; unfinished and recent jobs stay
    assert (report["jobs_deleted"], report["chunks_deleted"]) == (2, 2)
    assert (report["metrics_deleted"], report["maintenance_runs_deleted"]) == (1, 1)
    assert {j.job_id for j in pg.store.list_jobs(limit=100)} == {
        "old-queued",
        "old-running",
        "new-queued",
        "new-running",
        "new-succeeded",
        "new-failed",
    }
    assert count(pg, "detection_chunks") == 1
    assert [r["started_at"] for r in pg.maintenance.runs(task="vacuum_analyze")] == [new]


def test_retention_deletes_old_drift_and_shadow_records(either: Adapters) -> None:
    # Given a model with drift counts, a drift report and shadow results, old and new
    version = train(either)
    old, new = CUTOFF - timedelta(days=1), CUTOFF + timedelta(hours=1)
    counts = DriftCounts(
        n_records=1, n_flagged=0, features=np.zeros((4, 3), np.int64), scores=np.zeros(3, np.int64)
    )
    either.store.add_drift_counts({(version.id, old): counts, (version.id, new): counts}, now=new)
    for when, job in ((old, "old-job"), (new, "new-job")):
        either.store.save_drift_report(version.id, {"k": 1}, drifted=False, now=when)
        either.store.add_shadow(
            job,
            0,
            champion_id=version.id,
            challenger_id=version.id,
            tally=ShadowTally(n_records=1),
            flagged=[(3, 1.0, 0.9)],
            now=when,
        )

    # When retention runs
    report = run_maintenance(either, "retention", days=DAYS).detail

    # Then exactly the old ones are gone
    assert (report["drift_windows_deleted"], report["drift_reports_deleted"]) == (1, 1)
    assert (report["shadow_results_deleted"], report["shadow_anomalies_deleted"]) == (1, 1)
    for table in ("drift_windows", "drift_reports", "shadow_results", "shadow_anomalies"):
        assert count(either, table) == 1, table


def job_in(services: Adapters, job_id: str, *, status: str, created: datetime) -> None:
    services.store.enqueue_job(job_id, model="m", now=created)
    if status != "queued":
        services.store.claim_job(job_id, model="m", now=created)
    if status in ("succeeded", "failed"):
        with engine_of(services).begin() as conn:
            conn.execute(
                text("UPDATE detection_jobs SET status = :s, finished_at = :t WHERE job_id = :j"),
                {"s": status, "t": created, "j": job_id},
            )


def test_retention_deletes_in_short_batches(
    either: Adapters, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given more old anomalies than one batch holds
    monkeypatch.setattr(maintenance, "_RETENTION_BATCH", 2)
    model_id = register_model(either.store)  # type: ignore[arg-type]
    add_anomalies(either, model_id, job_id="old", detected=[CUTOFF - timedelta(days=1)] * 5, at=NOW)

    # When retention runs
    report = run_maintenance(either, "retention", days=DAYS).detail

    # Then every batch was taken, and the longest is reported
    assert report["anomalies_deleted"] == 5
    assert report["longest_batch_ms"] > 0
    assert either.reads.top_anomalies() == []


@pytest.mark.parametrize("days", [0, -3])
def test_retention_refuses_days_below_one(pg: Adapters, days: int) -> None:
    # Given an anomaly detected just now
    model_id = register_model(pg.store)  # type: ignore[arg-type]
    add_anomalies(pg, model_id, job_id="j", detected=[NOW], at=NOW)

    # When retention is asked to keep fewer than one day
    with pytest.raises(InvalidMaintenance, match=r"at least 1, got -?\d+.*pass days=1 or more"):
        run_maintenance(pg, "retention", days=days)

    # Then nothing was deleted, and the refusal is on record
    assert len(pg.reads.top_anomalies()) == 1
    assert runs(pg, "retention") == ["failed"]


# -- the sweeper ------------------------------------------------------------------------
def test_the_sweeper_requeues_or_fails_jobs_left_running(pg: Adapters) -> None:
    # Given jobs left running long past the hard time limit (one with attempts left,
    # one without) and one that started a moment ago
    limit = pg.settings.task_time_limit + pg.settings.stale_job_grace_seconds
    long_ago = NOW - timedelta(seconds=limit + 60)
    for job_id, attempts in (("stale-1", 1), ("stale-3", 3)):
        job_in(pg, job_id, status="running", created=long_ago)
        with engine_of(pg).begin() as conn:
            conn.execute(
                text("UPDATE detection_jobs SET attempts = :a WHERE job_id = :j"),
                {"a": attempts, "j": job_id},
            )
    # (the clock, not NOW: NOW is fixed at import, and a slow suite reaches this test more
    # than a time limit later, when a job started at NOW is stale too)
    job_in(pg, "fresh", status="running", created=datetime.now(UTC))

    # When the sweeper runs
    run = run_maintenance(pg, "sweep_stale_jobs")

    # Then the one with attempts left is queued again, the other failed with a reason
    assert run.detail == {"requeued": ["stale-1"], "failed": ["stale-3"], "evaluations_failed": []}
    jobs = {j.job_id: j for j in pg.store.list_jobs(limit=10)}
    assert jobs["stale-1"].status == "queued"
    assert jobs["stale-1"].started_at is None
    assert jobs["stale-3"].status == "failed"
    assert jobs["stale-3"].error_type == "StaleJob"
    assert "hard time limit" in (jobs["stale-3"].error or "")
    assert jobs["fresh"].status == "running"


def test_the_sweeper_fails_evaluations_left_running(pg: Adapters) -> None:
    # Given an evaluation started long past the hard time limit and one started now
    limit = pg.settings.task_time_limit + pg.settings.stale_job_grace_seconds
    for job_id, started in (("eval-old", NOW - timedelta(seconds=limit + 60)), ("eval-new", None)):
        who = {"model": "m", "dataset": "d", "purpose": "evaluate", "actor": "ada"}
        pg.store.claim_evaluation(job_id, **who, now=started or datetime.now(UTC))

    # When the sweeper runs
    run = run_maintenance(pg, "sweep_stale_jobs")

    # Then the old one failed, saying why, and the new one still runs
    assert run.detail["evaluations_failed"] == ["eval-old"]
    old = pg.store.get_evaluation_run("eval-old")
    assert old is not None
    assert (old.status, old.error_type) == ("failed", "StaleJob")
    assert "hard time limit" in (old.error or "")
    new = pg.store.get_evaluation_run("eval-new")
    assert new is not None
    assert new.status == "running"


# -- slow statements and cache stats ----------------------------------------------------
def test_slow_queries_without_the_extension_says_not_available(pg: Adapters) -> None:
    # Given this server, which does not preload pg_stat_statements
    with engine_of(pg).connect() as conn:
        preloaded = conn.execute(text("SHOW shared_preload_libraries")).scalar_one()
    assert "pg_stat_statements" not in preloaded, "this test needs a server without it"

    # When slow_queries runs
    run = run_maintenance(pg, "slow_queries")

    # Then it succeeds, says why nothing was collected, and stores nothing
    assert run.outcome == "succeeded"
    assert run.detail["available"] is False
    assert "pg_stat_statements" in run.detail["reason"]
    assert count(pg, "metrics") == 0


def test_slow_queries_on_sqlite_says_not_available(
    sqlite_url: str, make_settings: Callable[..., Settings]
) -> None:
    services = bootstrap(make_settings(database_url=sqlite_url))

    run = run_maintenance(services, "slow_queries")

    services.close()
    assert run.outcome == "succeeded"
    assert run.detail == {
        "available": False,
        "reason": "pg_stat_statements is a PostgreSQL extension",
    }


def test_cache_stats_stores_the_cache_servers_figures(pg: Adapters) -> None:
    # Given some hits and misses on the prediction cache
    matrix = np.arange(6, dtype=float).reshape(3, 2)
    assert pg.cache is not None
    pg.cache.set_many("h" * 32, matrix[:2], np.array([1.0, 2.0]))
    pg.cache.get_many("h" * 32, matrix)

    # When cache_stats runs
    run = run_maintenance(pg, "cache_stats")

    # Then the figures are in metrics
    assert run.detail["available"] is True
    assert run.detail["keyspace_hits"] >= 2
    assert run.detail["keyspace_misses"] >= 1
    assert run.detail["used_memory_bytes"] > 0
    with engine_of(pg).connect() as conn:
        names = set(conn.execute(text("SELECT metric_name FROM metrics")).scalars())
    assert {"prediction_cache.used_memory_bytes", "prediction_cache.evicted_keys"} <= names
    assert {"prediction_cache.keyspace_hits", "prediction_cache.keyspace_misses"} <= names


def test_cache_stats_without_a_cache_says_so(either: Adapters) -> None:
    run = run_maintenance(either, "cache_stats")

    assert run.detail["available"] is False
    assert "PYNOMALY_CACHE_URL" in run.detail["reason"]


def test_drift_counts_of_many_versions_add_up_across_flushes(either: Adapters) -> None:
    # Given counts for three versions in two windows, flushed twice (a worker serving
    # many models flushes them all at once)
    versions = [train(either, model=f"drift-many-{i}") for i in range(3)]
    windows = (CUTOFF + timedelta(hours=1), CUTOFF + timedelta(hours=2))

    def counts(n: int) -> DriftCounts:
        return DriftCounts(
            n_records=n,
            n_flagged=1,
            features=np.full((4, 3), n, np.int64),
            scores=np.full(3, n, np.int64),
        )

    for flush in (1, 2):
        pending = {
            (v.id, w): counts(10 * flush + i) for i, v in enumerate(versions) for w in windows
        }
        either.store.add_drift_counts(pending, now=windows[1])

    # When they are read back
    stored = either.store.drift_windows(since=CUTOFF)

    # Then each (version, window) holds the sum of both flushes, once
    for i, version in enumerate(versions):
        rows = stored[version.id]
        assert len(rows) == 2
        assert [r.n_records for r in rows] == [30 + 2 * i] * 2
        assert all(int(r.scores[0]) == 30 + 2 * i for r in rows)
        assert all(r.n_flagged == 2 for r in rows)
