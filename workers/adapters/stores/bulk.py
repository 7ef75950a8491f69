"""Bulk anomaly writes: COPY on PostgreSQL, executemany on SQLite.

PostgreSQL takes large batches with binary COPY into a temporary staging table, then one
``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` moves them, so a redelivered job still
writes each (job_id, record_index) once. Small batches (a micro-batch of single-record
jobs has a handful of anomalies) skip the staging table's extra round trips: one
multi-row ``INSERT ... ON CONFLICT DO NOTHING``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import Connection, text
from sqlalchemy.dialects import postgresql, sqlite

from pynomaly_workers.adapters.stores.tables import AnomalyRow
from pynomaly_workers.domain.ports import AnomalyBatch

COPY_MIN_ROWS = 1_000
_STAGE = "pyn_anomalies_stage"
_COLUMNS = (
    "job_id",
    "record_index",
    "model_id",
    "record_id",
    "timestamp",
    "score",
    "severity",
    "explanation",
)
_TYPES = ("text", "int8", "int8", "text", "timestamptz", "float8", "float8", "jsonb")
_CREATE_STAGE = f"""
CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (
    job_id text, record_index bigint, model_id bigint, record_id text,
    "timestamp" timestamptz, score float8, severity float8, explanation jsonb
) ON COMMIT DELETE ROWS
"""
_MOVE_STAGE = f"""
INSERT INTO anomalies (job_id, record_index, model_id, record_id, "timestamp", score,
                       severity, status, explanation)
SELECT job_id, record_index, model_id, record_id, "timestamp", score, severity, 'active',
       explanation::json
FROM {_STAGE}
ON CONFLICT (job_id, record_index) DO NOTHING
"""


def insert_anomalies(conn: Connection, batches: Sequence[AnomalyBatch]) -> int:
    """Write the batches inside the caller's transaction; return how many rows were new."""
    if sum(len(b) for b in batches) == 0:
        return 0
    if conn.dialect.name == "postgresql" and sum(len(b) for b in batches) > COPY_MIN_ROWS:
        return _copy_postgres(conn, batches)
    return _executemany(conn, batches)


def _rows(batches: Iterable[AnomalyBatch]) -> Iterator[tuple[Any, ...]]:
    for batch in batches:
        yield from zip(
            [batch.job_id] * len(batch),
            batch.record_index.tolist(),
            [batch.model_id] * len(batch),
            batch.record_id,
            batch.timestamp,
            batch.score.tolist(),
            batch.severity.tolist(),
            batch.explanation or [None] * len(batch),
            strict=True,
        )


def _copy_postgres(conn: Connection, batches: Sequence[AnomalyBatch]) -> int:
    conn.execute(text(_CREATE_STAGE))
    raw: Any = conn.connection.driver_connection
    with raw.cursor() as cursor:
        columns = ", ".join(f'"{c}"' for c in _COLUMNS)
        with cursor.copy(f"COPY {_STAGE} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(list(_TYPES))
            for row in _rows(batches):
                explanation = row[-1]
                copy.write_row((*row[:-1], Jsonb(explanation) if explanation else None))
    inserted = conn.execute(text(_MOVE_STAGE)).rowcount
    conn.execute(text(f"TRUNCATE {_STAGE}"))
    return int(inserted)


def _executemany(conn: Connection, batches: Sequence[AnomalyBatch]) -> int:
    rows = [dict(zip(_COLUMNS, row, strict=True)) | {"status": "active"} for row in _rows(batches)]
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    statement = (
        dialect_insert(AnomalyRow)
        .on_conflict_do_nothing(index_elements=["job_id", "record_index"])
        .returning(AnomalyRow.id)
    )
    return len(conn.execute(statement, rows).all())
