"""The read side: each dashboard query answers correctly on both backends, and on
PostgreSQL uses the index or view it was shaped for (EXPLAIN, sequential scans off so
a small table plans as a large one would)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from pynomaly_workers.adapters.stores.engine import build_engine
from pynomaly_workers.adapters.stores.maintenance import MATERIALIZED_VIEWS, SqlMaintenance
from pynomaly_workers.adapters.stores.reads import POSTGRES, SqlReads, statement

pytestmark = pytest.mark.integration
NOW = datetime.now(UTC).replace(microsecond=0)
JOBS_PER_MODEL = 4
GROWING = {"anomalies", "detection_jobs", "mv_recent_anomalies"}
ROWS_PER_JOB = 500

# name -> (parameters, the index (or view) the plan must read, relations it must not)
PLANS: dict[str, tuple[dict[str, Any], str, set[str]]] = {
    "recent_anomalies": ({"limit": 50}, "ix_mv_recent_anomalies_ts", {"anomalies"}),
    "by_model_and_time": (
        {"model_id": 4, "since": NOW - timedelta(days=1), "limit": 50},
        "idx_anomalies_composite",
        set(),
    ),
    "top_severity": ({"min_severity": 0.0, "limit": 20}, "idx_anomalies_severity", set()),
    "top_severity_model": (
        {"min_severity": 0.5, "model": "model-1", "limit": 20},
        "idx_anomalies_model_severity",
        set(),
    ),
    "top_severity_job": (
        {"min_severity": 0.0, "job_id": "job-3", "limit": 20},
        "idx_anomalies_job_severity",
        set(),
    ),
    "model_performance": (
        {"name": None},
        "uq_mv_model_performance_model",
        {"detection_jobs"},
    ),
    "model_performance_of": (
        {"model_ids": [1, 3]},
        "uq_mv_model_performance_model",
        {"detection_jobs"},
    ),
    "dataset_summary": ({}, "mv_dataset_summary", {"detection_jobs"}),
    "counts_per_model": (
        {"since": NOW - timedelta(hours=24)},
        "mv_anomaly_counts_hourly",
        {"anomalies"},
    ),
}


def seed(engine: Engine) -> None:
    """4 models (2 names x 2 versions), 16 jobs, 8,000 anomalies over 10 days; the
    anomalies of model 4 are all older than two days."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO model_artifacts VALUES ('a', 'sklearn', 1, 'x', now());"
                "INSERT INTO models (name, version, algorithm, artifact_sha256, n_features, "
                "contamination, threshold, score_stats, params, n_training_rows, active, "
                "created_at) SELECT 'model-' || ((g + 1) / 2), 2 - g % 2, 'iforest', 'a', 4, "
                "0.1, 0.5, '{}', '{}', 100, g % 2 = 0, now() FROM generate_series(1, 4) g;"
                "INSERT INTO datasets (name, uri, format, n_rows, n_features, columns, status,"
                " created_at) VALUES ('ds', 'file:///ds.csv', 'csv', 10, 4, '{}', 'ready', now());"
                "INSERT INTO detection_jobs (job_id, status, model_id, dataset_name, n_records,"
                " n_anomalies, attempts, created_at, finished_at) SELECT 'job-' || g, "
                "'succeeded', 1 + g % 4, 'ds', 1000, 500, 1, now(), now() "
                "FROM generate_series(0, 15) g;"
            )
        )
        conn.execute(
            text(
                "INSERT INTO anomalies (job_id, record_index, model_id, timestamp, score, "
                "severity, status) SELECT 'job-' || j, r, 1 + j % 4, "
                ":now - ((r * 7919 % 10000) / 1000.0 + CASE WHEN j % 4 = 3 THEN 2 ELSE 0 END)"
                " * interval '1 day', 1.0, (r * 104729 % 1000) / 1000.0, 'active' "
                "FROM generate_series(0, :jobs - 1) j, generate_series(0, :rows - 1) r"
            ),
            {"now": NOW, "jobs": 4 * JOBS_PER_MODEL, "rows": ROWS_PER_JOB},
        )
    SqlMaintenance(engine).refresh_views()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))


@pytest.fixture(scope="module")
def seeded_pg(pg_url: str) -> Iterator[Engine]:
    """The seeded PostgreSQL schema; emptied (views too) afterwards."""
    engine = build_engine(pg_url)
    seed(engine)
    yield engine
    with engine.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE anomalies, detection_jobs, models, model_artifacts, datasets "
                "RESTART IDENTITY CASCADE"
            )
        )
        for view in MATERIALIZED_VIEWS:
            conn.execute(text(f"REFRESH MATERIALIZED VIEW {view}"))
    engine.dispose()


def plan_nodes(
    engine: Engine, name: str, params: dict[str, Any], *, suppressed: bool | None = None
) -> list[dict[str, Any]]:
    """Every node of the query's plan, with sequential scans off."""
    query = statement(name, dialect="postgresql", suppressed=suppressed)
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        compiled = query.compile(conn)
        sql = f"EXPLAIN (FORMAT JSON) {compiled}"
        raw = conn.exec_driver_sql(sql, compiled.construct_params(params)).scalar_one()
    plan = raw if isinstance(raw, list) else json.loads(raw)
    nodes, stack = [], [plan[0]["Plan"]]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.get("Plans", []))
    return nodes


@pytest.mark.parametrize("name", sorted(PLANS))
def test_each_dashboard_query_reads_its_index(seeded_pg: Engine, name: str) -> None:
    # Given the seeded, analyzed schema and the query's parameters
    params, intended, avoided = PLANS[name]

    # When PostgreSQL plans it
    nodes = plan_nodes(seeded_pg, name, params)

    # Then the plan reads the intended index (or view), scans none of the tables that
    # grow with the anomalies sequentially (a view with a row per model or dataset may
    # be), and never reads the raw tables a view stands in for
    indexes = {n.get("Index Name") for n in nodes}
    relations = {n.get("Relation Name") for n in nodes}
    scanned = {n.get("Relation Name") for n in nodes if n["Node Type"] == "Seq Scan"}
    assert intended in indexes | relations, json.dumps(nodes, indent=1)[:3000]
    assert not scanned & GROWING, scanned
    assert not avoided & relations, relations


# The listings `anomalies --suppressed hide` filters keep their index (recent anomalies
# read the table by its timestamp index: the view has no suppressed_by). `--suppressed
# only` of one job or model version reads that job's or version's rows by an index on it,
# of every model the partial indexes of the suppressed rows (migration 0013).
FILTERED = {
    "recent_anomalies": (
        {"limit": 50, "recent_since": NOW - timedelta(days=7)},
        "idx_anomalies_timestamp",
    ),
    **{
        name: PLANS[name][:2]
        for name in ("by_model_and_time", "top_severity", "top_severity_model", "top_severity_job")
    },
}
PARTIAL = {"idx_anomalies_suppressed_severity", "idx_anomalies_suppressed_timestamp"}
KEYED = {
    "by_model_and_time": "model_id",
    "top_severity_model": "model_id",
    "top_severity_job": "job_id",
}


@pytest.mark.parametrize("name", sorted(FILTERED))
def test_hiding_suppressed_anomalies_keeps_the_index(seeded_pg: Engine, name: str) -> None:
    params, intended = FILTERED[name]

    nodes = plan_nodes(seeded_pg, name, params, suppressed=False)

    indexes = {n.get("Index Name") for n in nodes}
    scanned = {n.get("Relation Name") for n in nodes if n["Node Type"] == "Seq Scan"}
    assert intended in indexes, json.dumps(nodes, indent=1)[:3000]
    assert not scanned & GROWING, scanned
    assert "suppressed_by IS NULL" in json.dumps(nodes)  # the filter is in the plan


@pytest.mark.parametrize("name", sorted(KEYED))
def test_only_suppressed_anomalies_of_a_job_or_model_read_its_rows_by_index(
    seeded_pg: Engine, name: str
) -> None:
    params, _ = FILTERED[name]

    nodes = plan_nodes(seeded_pg, name, params, suppressed=True)

    conditions = " ".join(str(n.get("Index Cond", "")) for n in nodes)
    indexes = {n.get("Index Name") for n in nodes}
    scanned = {n.get("Relation Name") for n in nodes if n["Node Type"] == "Seq Scan"}
    # by the job's or version's index, or by a partial one holding only suppressed rows
    assert KEYED[name] in conditions or indexes & PARTIAL, json.dumps(nodes, indent=1)[:3000]
    assert not scanned & GROWING, scanned
    # the filter is in the plan, or implied by the partial index read
    assert "suppressed_by IS NOT NULL" in json.dumps(nodes) or indexes & PARTIAL


def test_every_postgres_read_has_an_asserted_plan() -> None:
    assert set(PLANS) == set(POSTGRES)


# -- answers ----------------------------------------------------------------------------
def test_top_anomalies_most_severe_then_newest(seeded_pg: Engine) -> None:
    reads = SqlReads(seeded_pg)

    found = reads.top_anomalies(min_severity=0.5, limit=30)
    by_model = reads.top_anomalies(min_severity=0.5, model="model-1", limit=30)
    of_job = reads.top_anomalies(job_id="job-3", limit=1_000)

    keys = [(a.severity, a.timestamp) for a in found]
    assert keys == sorted(keys, reverse=True)
    assert len(found) == 30
    assert min(a.severity for a in found) >= 0.5
    # model-1 is versions 1 and 2 (ids 1 and 2), merged in order
    assert {a.model_id for a in by_model} == {1, 2}
    assert [(a.severity, a.timestamp) for a in by_model] == sorted(
        [(a.severity, a.timestamp) for a in by_model], reverse=True
    )
    assert len(of_job) == ROWS_PER_JOB
    assert {a.job_id for a in of_job} == {"job-3"}


def test_anomalies_of_a_model_since_newest_first(seeded_pg: Engine) -> None:
    reads = SqlReads(seeded_pg)

    recent = reads.anomalies_of_model(model_id=1, since=NOW - timedelta(days=1), limit=10_000)
    idle = reads.anomalies_of_model(model_id=4, since=NOW - timedelta(days=1), limit=50)

    assert recent
    assert all(a.timestamp >= NOW - timedelta(days=1) and a.model_id == 1 for a in recent)
    assert [a.timestamp for a in recent] == sorted((a.timestamp for a in recent), reverse=True)
    assert idle == []


def test_views_answer_models_datasets_and_counts(seeded_pg: Engine) -> None:
    reads = SqlReads(seeded_pg)

    models = reads.model_performance()
    counts = {
        row["model_id"]: row["anomalies"]
        for row in reads.counts_per_model(since=NOW - timedelta(hours=24))
    }
    [dataset] = reads.dataset_summary()

    assert [(m.name, m.version) for m in models] == [
        ("model-1", 2),
        ("model-1", 1),
        ("model-2", 2),
        ("model-2", 1),
    ]
    assert sum(m.jobs for m in models) == 16
    # plain numbers, as JSON output needs (the view's sums are numeric)
    assert {type(m.records_scored) for m in models} == {int}
    assert type(dataset["records_scored"]) is int
    assert dataset["jobs"] == 16
    # about a tenth of each active model's rows fall in the last day; none of model 4's
    assert 4 not in counts
    assert sum(counts.values()) > 0
    with seeded_pg.connect() as conn:
        live = conn.execute(
            text("SELECT count(*) FROM anomalies WHERE timestamp >= date_trunc('hour', :since)"),
            {"since": NOW - timedelta(hours=24)},
        ).scalar_one()
    assert sum(counts.values()) == live


EVERY_MODEL = ("top_severity", "recent_anomalies")


@pytest.mark.parametrize("name", EVERY_MODEL)
def test_only_suppressed_anomalies_of_every_model_read_their_partial_index(
    seeded_pg: Engine, name: str
) -> None:
    params, _ = FILTERED[name]

    nodes = plan_nodes(seeded_pg, name, params, suppressed=True)

    indexes = {n.get("Index Name") for n in nodes}
    scanned = {n.get("Relation Name") for n in nodes if n["Node Type"] == "Seq Scan"}
    # (either one: they hold the same few rows; the planner picks by its estimates)
    assert indexes & PARTIAL, json.dumps(nodes, indent=1)[:3000]
    assert not scanned & GROWING, scanned
