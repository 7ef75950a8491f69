"""Bulk anomaly writes: COPY on PostgreSQL, executemany on SQLite.

PostgreSQL takes large batches with binary COPY into a temporary staging table, then one
``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` moves them, so a redelivered job still
writes each (job_id, record_index) once. Small batches (a micro-batch of single-record
jobs has a handful of anomalies) skip the staging table's extra round trips: one
multi-row ``INSERT ... ON CONFLICT DO NOTHING``.

A fan-out chunk is already written once by its own unique chunk row, so its anomalies
are copied straight into the table (:func:`insert_chunk_anomalies`): each row is written
and indexed once instead of twice. Should a row exist all the same, the COPY is undone
to a savepoint and the staged path writes the rest.

Each write also adds the anomalies it stored that suppression rules matched to those
rules' ``suppressed_count``, in the same transaction and counting only the rows that
were new, so a redelivered job counts once. A write with nothing suppressed (the usual
case) pays nothing for it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from psycopg.errors import UniqueViolation
from psycopg.types.json import Json
from sqlalchemy import Connection, bindparam, delete, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from pynomaly_workers.adapters.stores.tables import AnomalyRow, SuppressionRuleRow
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
    "entity",
    "suppressed_by",
)
# explanation is json, as the column is: the server checks the text and stores it,
# where jsonb would be parsed into its binary form only to be printed back for the column.
_TYPES = (
    "text",
    "int8",
    "int8",
    "text",
    "timestamptz",
    "float8",
    "float8",
    "json",
    "text",
    "int8",
)
_CREATE_STAGE = f"""
CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (
    job_id text, record_index bigint, model_id bigint, record_id text,
    "timestamp" timestamptz, score float8, severity float8, explanation json, entity text,
    suppressed_by bigint
) ON COMMIT DELETE ROWS
"""
# The rows moved, counted by the rule that suppressed them (NULL: none), in one answer.
_MOVE_STAGE = f"""
WITH moved AS (
INSERT INTO anomalies (job_id, record_index, model_id, record_id, "timestamp", score,
                       severity, status, explanation, entity, suppressed_by)
SELECT job_id, record_index, model_id, record_id, "timestamp", score, severity, 'active',
       explanation, entity, suppressed_by
FROM {_STAGE}
ON CONFLICT (job_id, record_index) DO NOTHING
RETURNING suppressed_by
)
SELECT suppressed_by, count(*) FROM moved GROUP BY suppressed_by
"""


def insert_anomalies(conn: Connection, batches: Sequence[AnomalyBatch]) -> int:
    """Write the batches inside the caller's transaction; return how many rows were new."""
    if sum(len(b) for b in batches) == 0:
        return 0
    if conn.dialect.name == "postgresql" and sum(len(b) for b in batches) > COPY_MIN_ROWS:
        new = _copy_postgres(conn, batches)
    else:
        new = _executemany(conn, batches)
    count_suppressed(conn, new)
    return new.total()


def insert_chunk_anomalies(conn: Connection, batch: AnomalyBatch) -> int:
    """Write a fan-out chunk's anomalies inside the caller's transaction, in which the
    chunk's own row was just inserted (so no other delivery of it has written them)."""
    if conn.dialect.name != "postgresql" or len(batch) <= COPY_MIN_ROWS:
        return insert_anomalies(conn, [batch])
    try:
        with conn.begin_nested():
            _copy(conn, "anomalies", [batch], status=True)
        new = Counter(batch.suppressed_by or ())
        new[None] += len(batch) - batch.n_suppressed  # every row was new
    except UniqueViolation:  # raised by the driver: the COPY runs on its own cursor
        new = _copy_postgres(conn, [batch])  # some rows exist: write the others
    count_suppressed(conn, new)
    return new.total()


def delete_anomalies(conn: Connection, job_ids: Sequence[str]) -> None:
    """Drop the anomalies of failed jobs inside the caller's transaction, and take those
    a rule suppressed off its count (a failed job has no anomalies to have suppressed)."""
    jobs = AnomalyRow.job_id.in_(list(job_ids))
    counted = conn.execute(
        select(AnomalyRow.suppressed_by, func.count())
        .where(jobs, AnomalyRow.suppressed_by.is_not(None))
        .group_by(AnomalyRow.suppressed_by)
    )
    gone = {rule: -int(n) for rule, n in counted}
    conn.execute(delete(AnomalyRow).where(jobs))
    count_suppressed(conn, gone)


def count_suppressed(conn: Connection, new: Mapping[int | None, int]) -> None:
    """Add the new rows each rule suppressed to its count, rule by rule in id order (two
    transactions counting for the same rules lock them in the same order)."""
    counts = sorted((rule, n) for rule, n in new.items() if rule is not None and n)
    if not counts:
        return
    conn.execute(
        update(SuppressionRuleRow)
        .where(SuppressionRuleRow.id == bindparam("rule_id"))
        .values(suppressed_count=SuppressionRuleRow.suppressed_count + bindparam("n")),
        [{"rule_id": rule, "n": n} for rule, n in counts],
    )


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
            batch.entity or [None] * len(batch),
            batch.suppressed_by or [None] * len(batch),
            strict=True,
        )


def _copy_postgres(conn: Connection, batches: Sequence[AnomalyBatch]) -> Counter[int | None]:
    """The new rows, counted by the rule that suppressed them (None: not suppressed)."""
    conn.execute(text(_CREATE_STAGE))
    _copy(conn, _STAGE, batches, status=False)
    new: Counter[int | None] = Counter({rule: n for rule, n in conn.execute(text(_MOVE_STAGE))})
    conn.execute(text(f"TRUNCATE {_STAGE}"))
    return new


def _copy(conn: Connection, table: str, batches: Sequence[AnomalyBatch], *, status: bool) -> None:
    """Binary COPY of the batches' rows into ``table`` (with ``status`` 'active' when the
    table is ``anomalies`` itself, whose column has no default the rows could rely on)."""
    raw: Any = conn.connection.driver_connection
    columns = [*_COLUMNS, "status"] if status else list(_COLUMNS)
    types = [*_TYPES, "text"] if status else list(_TYPES)
    tail = ("active",) if status else ()
    names = ", ".join(f'"{c}"' for c in columns)
    statement = f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)"
    with raw.cursor() as cursor, cursor.copy(statement) as copy:
        copy.set_types(types)
        for row in _rows(batches):
            explanation = row[-3]
            copy.write_row(
                (*row[:-3], Json(explanation) if explanation else None, *row[-2:], *tail)
            )


def _executemany(conn: Connection, batches: Sequence[AnomalyBatch]) -> Counter[int | None]:
    """The new rows, counted by the rule that suppressed them (None: not suppressed)."""
    rows = [dict(zip(_COLUMNS, row, strict=True)) | {"status": "active"} for row in _rows(batches)]
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    statement = (
        dialect_insert(AnomalyRow)
        .on_conflict_do_nothing(index_elements=["job_id", "record_index"])
        .returning(AnomalyRow.suppressed_by)
    )
    return Counter(conn.execute(statement, rows).scalars().all())
