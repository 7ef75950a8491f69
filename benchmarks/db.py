"""``python -m benchmarks.db [--quick] [--json]``: the read side at 10M anomalies.

Seeds a PostgreSQL database of its own (default ``pynomaly_bench``, created if absent,
its ``public`` schema rebuilt by the project's Alembic migrations) with anomalies over 50
models and 1,000 jobs by COPY, refreshes the views, ANALYZEs, then measures the p95 of
each dashboard query and the cost of each maintenance job. Progress goes to stderr; the
last line of stdout is one JSON object (see benchmarks/README.md for the keys).
"""

from __future__ import annotations

import argparse
import io
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url

from benchmarks.stats import _quantile
from pynomaly_workers.adapters.stores.engine import normalize_url
from pynomaly_workers.adapters.stores.maintenance import SqlMaintenance
from pynomaly_workers.adapters.stores.reads import statement
from pynomaly_workers.migrate import upgrade
from pynomaly_workers.settings import Settings

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/pynomaly_bench"
N_MODELS = 50
N_JOBS = 1_000
N_DATASETS = 20
SPAN_DAYS = 30
# Models that stopped producing anomalies a while ago: "this model's last day" is empty
# for them, the case where the planner used to walk the timestamp index.
IDLE_MODELS = 5
IDLE_FOR_DAYS = 3


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (linear interpolation, as the rest of the suite)."""
    return _quantile(sorted(values), q / 100) if values else float("nan")


def log(message: str) -> None:
    print(f"[bench-db {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Plan:
    rows: int
    runs: int

    @property
    def rows_per_job(self) -> int:
        return self.rows // N_JOBS


# -- database ---------------------------------------------------------------------------
def recreate_database(url: str) -> None:
    """Create the bench database if absent, and start from an empty public schema."""
    parsed = make_url(normalize_url(url))
    name = parsed.database
    if not name or name in ("postgres", "template0", "template1"):
        raise SystemExit(f"--database-url must name a database of its own, not {name!r}")
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
        ).first()
        if not exists:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    engine = create_engine(normalize_url(url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def drop_database(url: str) -> None:
    parsed = make_url(normalize_url(url))
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
    admin.dispose()


def has_column(conn: Connection, table: str, column: str) -> bool:
    return bool(
        conn.execute(
            text(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = :t AND column_name = :c"
            ),
            {"t": table, "c": column},
        ).first()
    )


# -- seeding ----------------------------------------------------------------------------
def seed_reference_rows(conn: Connection, now: datetime) -> None:
    """Models, datasets and finished jobs (the views aggregate them)."""
    conn.execute(
        text(
            "INSERT INTO model_artifacts (sha256, media_type, size_bytes, content, created_at) "
            "VALUES (:sha, 'sklearn', 5, :content, :now)"
        ),
        {"sha": "0" * 64, "content": b"model", "now": now},
    )
    conn.execute(
        text(
            "INSERT INTO models (name, version, algorithm, artifact_sha256, n_features, "
            "contamination, threshold, score_stats, params, n_training_rows, active, "
            "created_at) SELECT 'model-' || ((g - 1) / 2), 1 + (g - 1) % 2, 'iforest', :sha, "
            "16, 0.01, 0.6, '{}', '{}', 10000, (g % 2 = 0), :created "
            "FROM generate_series(1, :n) g"
        ),
        {"sha": "0" * 64, "n": N_MODELS, "created": now - timedelta(days=SPAN_DAYS + 1)},
    )
    conn.execute(
        text(
            "INSERT INTO datasets (name, uri, format, n_rows, n_features, columns, status, "
            "created_at) SELECT 'dataset-' || g, 'file:///data/' || g || '.csv', 'csv', "
            "100000, 16, '{}', 'ready', :created - g * interval '1 day' "
            "FROM generate_series(1, :n) g"
        ),
        {"n": N_DATASETS, "created": now},
    )


def seed_jobs(conn: Connection, plan: Plan, now: datetime) -> None:
    start = now - timedelta(days=SPAN_DAYS)
    conn.execute(
        text(
            "INSERT INTO detection_jobs (job_id, status, model_name, model_id, dataset_name, "
            "n_records, n_anomalies, cache_hits, threshold, attempts, created_at, started_at, "
            "finished_at, duration_ms) "
            "SELECT 'job-' || g, 'succeeded', 'model-' || ((m - 1) / 2), m, "
            "'dataset-' || (1 + g % :datasets), :per_job * 100, :per_job, 0, 0.6, 1, t, t, "
            "t + interval '2 seconds', 2000 + g "
            "FROM (SELECT g, 1 + (g - 1) % :models AS m, "
            ":start + (g - 1) * (:span / :jobs) AS t FROM generate_series(1, :jobs) g) s"
        ),
        {
            "datasets": N_DATASETS,
            "per_job": plan.rows_per_job,
            "models": N_MODELS,
            "jobs": N_JOBS,
            "start": start,
            "span": timedelta(days=SPAN_DAYS),
        },
    )


def anomaly_chunk(
    rng: np.random.Generator, jobs: range, *, plan: Plan, now: datetime, detected: bool
) -> bytes:
    """CSV for the anomalies of ``jobs``: each job's rows over the whole span, so every
    model has anomalies of every day, except the idle models, silent for the last days."""
    per_job = plan.rows_per_job
    n = per_job * len(jobs)
    job_numbers = np.repeat(np.arange(jobs.start, jobs.stop) + 1, per_job)
    model_ids = 1 + (job_numbers - 1) % N_MODELS
    span_s = SPAN_DAYS * 86_400.0
    ages = rng.uniform(0.0, span_s, n)
    idle = model_ids > N_MODELS - IDLE_MODELS
    ages[idle] = rng.uniform(IDLE_FOR_DAYS * 86_400.0, span_s, int(idle.sum()))
    now_us = int(now.timestamp() * 1e6)
    stamps = (now_us - (ages * 1e6).astype(np.int64)).astype("datetime64[us]")
    severity = np.round(rng.beta(2.0, 5.0, n), 6)
    columns: dict[str, Any] = {
        "job_id": pa.array(np.char.add("job-", job_numbers.astype(str))),
        "record_index": pa.array(np.tile(np.arange(per_job, dtype=np.int64), len(jobs))),
        "model_id": pa.array(model_ids.astype(np.int64)),
        "timestamp": pa.array(stamps, type=pa.timestamp("us", tz="UTC")),
        "score": pa.array(np.round(0.6 + severity * 0.4, 6)),
        "severity": pa.array(severity),
        "status": pa.array(np.where(rng.random(n) < 0.9, "active", "resolved")),
    }
    if detected:
        # Detected a little after the record's time, as a live feed would be.
        lag = (rng.exponential(60.0, n) * 1e6).astype(np.int64)
        detected_at = np.minimum(stamps.astype(np.int64) + lag, now_us).astype("datetime64[us]")
        columns["detected_at"] = pa.array(detected_at, type=pa.timestamp("us", tz="UTC"))
    out = io.BytesIO()
    options = pa_csv.WriteOptions(include_header=False)
    pa_csv.write_csv(pa.table(columns), out, write_options=options)
    return out.getvalue()


def copy_anomalies(engine: Engine, plan: Plan, now: datetime) -> float:
    """COPY the anomalies in chunks of jobs; return rows/s."""
    rng = np.random.default_rng(7)
    with engine.connect() as conn:
        detected = has_column(conn, "anomalies", "detected_at")
    columns = ["job_id", "record_index", "model_id", "timestamp", "score", "severity", "status"]
    columns += ["detected_at"] if detected else []
    quoted = ", ".join(f'"{c}"' for c in columns)
    jobs_per_chunk = max(1, 500_000 // plan.rows_per_job)
    started = time.perf_counter()
    for first in range(0, N_JOBS, jobs_per_chunk):
        jobs = range(first, min(first + jobs_per_chunk, N_JOBS))
        data = anomaly_chunk(rng, jobs, plan=plan, now=now, detected=detected)
        with engine.begin() as conn:
            raw: Any = conn.connection.driver_connection
            with (
                raw.cursor() as cursor,
                cursor.copy(f"COPY anomalies ({quoted}) FROM STDIN (FORMAT csv)") as copy,
            ):
                copy.write(data)
        if first % (jobs_per_chunk * 5) == 0:
            log(f"  copied {jobs.stop * plan.rows_per_job:,} rows")
    return plan.rows / (time.perf_counter() - started)


@contextmanager
def secondary_indexes_dropped(engine: Engine) -> Iterator[None]:
    """Drop the non-constraint indexes of ``anomalies`` for the COPY and build them after,
    as a bulk load would: the same indexes, built once instead of row by row."""
    with engine.begin() as conn:
        definitions = conn.execute(
            text(
                "SELECT i.indexname, i.indexdef FROM pg_indexes i "
                "WHERE i.schemaname = current_schema() AND i.tablename = 'anomalies' "
                "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)"
            )
        ).all()
        for name, _ in definitions:
            conn.execute(text(f'DROP INDEX "{name}"'))
    yield
    for name, definition in definitions:
        started = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(text("SET maintenance_work_mem = '256MB'"))
            conn.execute(text(definition))
        log(f"  built {name} in {time.perf_counter() - started:.1f}s")


def seed(url: str, plan: Plan) -> dict[str, Any]:
    recreate_database(url)
    upgrade(url)
    engine = create_engine(normalize_url(url))
    now = datetime.now(UTC)
    with engine.begin() as conn:
        seed_reference_rows(conn, now)
        seed_jobs(conn, plan, now)
    started = time.perf_counter()
    with secondary_indexes_dropped(engine):
        rows_per_s = copy_anomalies(engine, plan, now)
    seconds = time.perf_counter() - started
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        views = conn.execute(
            text("SELECT matviewname FROM pg_matviews WHERE schemaname = current_schema()")
        ).scalars()
        for view in views:
            conn.execute(text(f'REFRESH MATERIALIZED VIEW "{view}"'))
        conn.execute(text("VACUUM (ANALYZE)"))
    engine.dispose()
    return {"copy_rows_per_s": round(rows_per_s), "seed_s": round(seconds, 1)}


# -- measuring --------------------------------------------------------------------------
Query = Callable[[Connection, np.random.Generator], Any]


def _read(name: str, params: Callable[[np.random.Generator], dict[str, Any]]) -> Query:
    """One of the project's reads (adapters/stores/reads.py) with drawn parameters."""
    query = statement(name, dialect="postgresql")
    return lambda conn, rng: conn.execute(query, params(rng)).all()


def _a_model(rng: np.random.Generator) -> int:
    # Half the calls ask for an idle model: nothing in its last day.
    if rng.random() < 0.5:
        return int(rng.integers(N_MODELS - IDLE_MODELS + 1, N_MODELS + 1))
    return int(rng.integers(1, N_MODELS - IDLE_MODELS + 1))


def _severity(rng: np.random.Generator) -> float:
    return float(rng.choice([0.0, 0.5, 0.9]))


def _day_ago() -> datetime:
    return datetime.now(UTC) - timedelta(days=1)


QUERIES: dict[str, Query] = {
    "recent_anomalies": _read("recent_anomalies", lambda rng: {"limit": 50}),
    "by_model_and_time": _read(
        "by_model_and_time",
        lambda rng: {"model_id": _a_model(rng), "since": _day_ago(), "limit": 50},
    ),
    "top_severity": _read(
        "top_severity", lambda rng: {"min_severity": _severity(rng), "limit": 20}
    ),
    "top_severity_model": _read(
        "top_severity_model",
        lambda rng: {
            "min_severity": _severity(rng),
            "model": f"model-{rng.integers(0, N_MODELS // 2)}",
            "limit": 20,
        },
    ),
    "top_severity_job": _read(
        "top_severity_job",
        lambda rng: {"min_severity": 0.5, "job_id": f"job-{rng.integers(1, N_JOBS)}", "limit": 20},
    ),
    "model_performance": _read("model_performance", lambda rng: {"name": None}),
    "dataset_summary": _read("dataset_summary", lambda rng: {}),
    "counts_per_model_24h": _read("counts_per_model", lambda rng: {"since": _day_ago()}),
}


def time_query(conn: Connection, query: Query, rng: np.random.Generator, runs: int) -> list[float]:
    for _ in range(3):  # warm the plan cache and the buffers
        query(conn, rng)
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        query(conn, rng)
        timings.append((time.perf_counter() - started) * 1000.0)
    return timings


def measure_queries(engine: Engine, runs: int) -> dict[str, float]:
    rng = np.random.default_rng(11)
    result = {}
    with engine.connect() as conn:
        for name, query in QUERIES.items():
            result[name] = round(percentile(time_query(conn, query, rng, runs), 95), 3)
            log(f"  {name}: p95 {result[name]} ms")
            conn.rollback()
    return result


def reader_during(engine: Engine, work: Callable[[], object]) -> tuple[list[float], float]:
    """Run the recent-anomalies reader in a loop while ``work`` runs; its latencies and
    how long ``work`` took."""
    stop = threading.Event()
    timings: list[float] = []

    def read() -> None:
        rng = np.random.default_rng(3)
        with engine.connect() as conn:
            while not stop.is_set():
                timings.extend(time_query(conn, QUERIES["recent_anomalies"], rng, 1))
                conn.rollback()

    reader = threading.Thread(target=read)
    reader.start()
    started = time.perf_counter()
    try:
        work()
    finally:
        elapsed = time.perf_counter() - started
        stop.set()
        reader.join()
    return timings, elapsed


def autocommit(engine: Engine, *statements: str) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for statement in statements:
            conn.execute(text(statement))


def measure_refresh(engine: Engine) -> dict[str, float]:
    maintenance = SqlMaintenance(engine)
    idle, _ = reader_during(engine, lambda: time.sleep(3.0))
    busy, seconds = reader_during(engine, maintenance.refresh_views)
    return {
        "refresh_concurrently_s": round(seconds, 2),
        "reader_p99_ms_idle": round(percentile(idle, 99), 3),
        "reader_p99_ms_during_refresh": round(percentile(busy, 99), 3),
    }


def measure_vacuum(engine: Engine) -> float:
    started = time.perf_counter()
    SqlMaintenance(engine).vacuum_analyze()
    return round(time.perf_counter() - started, 2)


def measure_reindex(engine: Engine) -> dict[str, Any]:
    """The bloat check the task makes, what it chose at the default threshold, and one
    REINDEX CONCURRENTLY of the timestamp index (what rebuilding a 10M-row index costs)."""
    maintenance = SqlMaintenance(engine)
    started = time.perf_counter()
    bloat = maintenance.index_bloat()
    check_s = time.perf_counter() - started
    threshold = Settings().reindex_bloat_threshold
    started = time.perf_counter()
    autocommit(engine, "REINDEX INDEX CONCURRENTLY idx_anomalies_timestamp")
    return {
        "reindex_s": round(time.perf_counter() - started, 2),
        "reindex_bloat_check_s": round(check_s, 2),
        "reindex_would_rebuild": sorted(
            n for n, m in bloat.items() if m["bloat"] >= threshold and m["pages"] >= 128
        ),
    }


def measure_retention(engine: Engine, now: datetime) -> dict[str, float]:
    """Retention of the oldest 3 days by detection time, as the task runs it; the
    longest batch is the longest any lock on ``anomalies`` was held."""
    with engine.connect() as conn:
        oldest = conn.execute(text("SELECT min(detected_at) FROM anomalies")).scalar_one()
    cutoff = (oldest or now) + timedelta(days=3)
    started = time.perf_counter()
    report = SqlMaintenance(engine).retention(cutoff=cutoff)
    seconds = time.perf_counter() - started
    deleted = report["anomalies_deleted"]
    return {
        "retention_rows": deleted,
        "retention_rows_per_s": round(deleted / seconds),
        "retention_max_lock_ms": report["longest_batch_ms"],
    }


_PART = "pyn_bench_partitioned"
_TOP = "SELECT * FROM {table} WHERE severity >= :x ORDER BY severity DESC, timestamp DESC LIMIT 20"


def _top_of(table: str) -> Query:
    query = text(_TOP.format(table=table))
    return lambda conn, rng: conn.execute(query, {"x": _severity(rng)}).all()


def measure_partitions(engine: Engine, *, rows: int, runs: int) -> dict[str, Any]:
    """The alternative to batched deletes: ``anomalies`` partitioned by day of
    ``detected_at`` (a copy of ``rows`` of it). Can it keep the idempotency key, what does
    "most severe first" cost across the partitions, and how long does dropping a day take?"""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        low, high = conn.execute(
            text("SELECT min(detected_at), max(detected_at) FROM anomalies")
        ).one()
        conn.execute(text(f"DROP TABLE IF EXISTS {_PART}"))
        conn.execute(
            text(
                f"CREATE TABLE {_PART} (LIKE anomalies INCLUDING DEFAULTS) "
                "PARTITION BY RANGE (detected_at)"
            )
        )
        day, n = low.replace(hour=0, minute=0, second=0, microsecond=0), 0
        while day <= high:
            conn.execute(
                text(
                    f"CREATE TABLE {_PART}_{n} PARTITION OF {_PART} "
                    f"FOR VALUES FROM ('{day.isoformat()}') TO "
                    f"('{(day + timedelta(days=1)).isoformat()}')"
                )
            )
            day, n = day + timedelta(days=1), n + 1
        try:
            conn.execute(text(f"ALTER TABLE {_PART} ADD UNIQUE (job_id, record_index)"))
            unique_key = "possible"
        except Exception as exc:  # PostgreSQL refuses: the key lacks the partition column
            unique_key = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        conn.execute(text(f"INSERT INTO {_PART} SELECT * FROM anomalies LIMIT {int(rows)}"))
        conn.execute(text(f"CREATE INDEX ON {_PART} (severity DESC, timestamp DESC)"))
        conn.execute(text(f"CREATE INDEX ON {_PART} (detected_at)"))
        conn.execute(text(f"ANALYZE {_PART}"))
        oldest = conn.execute(text(f"SELECT count(*) FROM {_PART}_0")).scalar_one()
    rng = np.random.default_rng(5)
    timings = {}
    with engine.connect() as conn:
        for label, table in (("partitioned", _PART), ("single_table", "anomalies")):
            timings[label] = time_query(conn, _top_of(table), rng, runs)
            conn.rollback()
    started = time.perf_counter()
    autocommit(engine, f"ALTER TABLE {_PART} DETACH PARTITION {_PART}_0", f"DROP TABLE {_PART}_0")
    dropped_ms = (time.perf_counter() - started) * 1000.0
    autocommit(engine, f"DROP TABLE {_PART}")
    return {
        "partitions": n,
        "rows": rows,
        "unique_job_record_key": unique_key,
        "top_severity_p95_ms": round(percentile(timings["partitioned"], 95), 3),
        "top_severity_p95_ms_single_table": round(percentile(timings["single_table"], 95), 3),
        "drop_oldest_day_ms": round(dropped_ms, 1),
        "drop_oldest_day_rows": oldest,
    }


def run(url: str, plan: Plan, *, reuse: bool, partitions: int = 0) -> dict[str, Any]:
    result: dict[str, Any] = {"db.rows": plan.rows}
    if not reuse:
        log(f"seeding {plan.rows:,} anomalies")
        result.update({f"db.{k}": v for k, v in seed(url, plan).items()})
    engine = create_engine(normalize_url(url), pool_size=4)
    with engine.connect() as conn:
        result["db.rows"] = conn.execute(text("SELECT count(*) FROM anomalies")).scalar_one()
    log("dashboard queries")
    p95 = measure_queries(engine, plan.runs)
    result.update({f"db.query_p95_ms.{k}": v for k, v in p95.items()})
    log("refresh while a reader queries")
    result.update({f"db.{k}": v for k, v in measure_refresh(engine).items()})
    log("vacuum")
    result["db.vacuum_s"] = measure_vacuum(engine)
    log("reindex")
    result.update({f"db.{k}": v for k, v in measure_reindex(engine).items()})
    log("retention")
    result.update({f"db.{k}": v for k, v in measure_retention(engine, datetime.now(UTC)).items()})
    if partitions:
        log(f"partitioned alternative ({partitions:,} rows)")
        measured = measure_partitions(engine, rows=partitions, runs=plan.runs)
        result.update({f"db.partitioned.{k}": v for k, v in measured.items()})
    engine.dispose()
    return result


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.db", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1M anomalies instead of 10M")
    parser.add_argument("--rows", type=int, default=None, help="anomalies to seed")
    parser.add_argument("--json", action="store_true", help="one JSON line as the last output")
    parser.add_argument("--output", type=Path, help="also write the JSON to this file")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--reuse", action="store_true", help="measure the seeded database again")
    parser.add_argument("--drop", action="store_true", help="drop the database at the end")
    parser.add_argument(
        "--partitions",
        type=int,
        default=0,
        metavar="ROWS",
        help="also measure a day-partitioned copy of ROWS anomalies (retention's alternative)",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    rows = args.rows or (1_000_000 if args.quick else 10_000_000)
    plan = Plan(rows=rows - rows % N_JOBS, runs=100 if args.quick else 200)
    try:
        result = run(args.database_url, plan, reuse=args.reuse, partitions=args.partitions)
    finally:
        if args.drop:
            drop_database(args.database_url)
    line = json.dumps(result, sort_keys=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(line + "\n")
    print(line if args.json else json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
