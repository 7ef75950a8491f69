"""CSV and Parquet sources, read in bounded chunks with pyarrow, from local files or
S3-compatible object storage (``blobs``).

Columns named ``record_id`` and ``timestamp`` are carried along; every other column is a
feature and must be numeric. A CSV whose first line is all numbers has no header.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from threading import Lock
from typing import Any

import numpy as np
import numpy.typing as npt

from pynomaly_workers.adapters.sources.blobs import (
    Blob,
    S3Options,
    SourceUnavailable,
    is_object_uri,
    open_local,
    open_s3,
    s3_client,
)
from pynomaly_workers.domain.errors import InvalidLabels, InvalidSource
from pynomaly_workers.domain.jobs import parse_timestamp
from pynomaly_workers.domain.ports import ChunkSpec, Dataset, SourceChunk, SourcePlan
from pynomaly_workers.domain.records import check_finite

META_COLUMNS = ("record_id", "timestamp")
_CSV_BLOCK_BYTES = 8 << 20
_SCAN_BYTES = 32 << 20
_LOCAL_SCAN_BYTES = 1 << 20
_Bytes = np.ndarray[Any, np.dtype[np.uint8]]
_HEADER_PROBE_BYTES = 64 << 10
_NEWLINE = 10
_CR = 13
_QUOTE = 34


class ArrowSourceReader:
    """Reads CSV/Parquet sources: local files below the allowed root folders (``/``
    allows any) and ``s3://bucket/key`` objects (governed by the bucket's credentials,
    not by the roots)."""

    def __init__(self, *, allowed_roots: tuple[Path, ...], s3: S3Options | None = None) -> None:
        self.allowed_roots = tuple(root.resolve() for root in allowed_roots)
        self.s3_options = s3 or S3Options()
        self._s3_client: Any = None
        self._s3_pid = 0
        self._lock = Lock()

    def open(self, uri: str, *, pin: str | None = None) -> Blob:
        """The source ``uri`` names, checked and pinned (to ``pin`` when given)."""
        if is_object_uri(uri):
            return open_s3(self._client(), uri, pin=pin)
        return open_local(uri, allowed_roots=self.allowed_roots, pin=pin)

    def _client(self) -> Any:
        # One client per process: a forked child (isolated training) must not share
        # its parent's HTTP connections.
        with self._lock:
            if self._s3_client is None or self._s3_pid != os.getpid():
                self._s3_client, self._s3_pid = s3_client(self.s3_options), os.getpid()
            return self._s3_client

    def describe(self, path: str) -> Dataset:
        blob = self.open(path)
        n_rows, columns = 0, list[str]()
        for batch in _batches(blob, chunk_rows=1 << 20):
            columns = [c for c in batch.schema.names if c not in META_COLUMNS]
            n_rows += batch.num_rows
        if n_rows == 0:
            raise InvalidSource(f"source {path!r} has no rows")
        uri = path if is_object_uri(path) else str(Path(blob.uri).resolve())
        return Dataset(
            name="",
            uri=uri,
            format=blob.format,
            n_rows=n_rows,
            n_features=len(columns),
            columns=columns,
        )

    def read_chunks(
        self,
        path: str,
        *,
        chunk_rows: int,
        entity_field: str | None = None,
        label_field: str | None = None,
    ) -> Iterator[SourceChunk]:
        offset = 0
        for batch in _batches(self.open(path), chunk_rows=chunk_rows):
            if batch.num_rows == 0:
                continue
            yield _chunk(
                batch, offset=offset, path=path, entity_field=entity_field, label_field=label_field
            )
            offset += batch.num_rows

    def plan(
        self,
        path: str,
        *,
        chunk_rows: int,
        entity_field: str | None = None,
        label_field: str | None = None,
    ) -> SourcePlan:
        """Cut the source into chunks of about ``chunk_rows`` rows that workers can read
        independently: byte ranges of a CSV, row-group ranges of a Parquet file. The
        plan is pinned to the version it was made from."""
        blob = self.open(path)
        plan = (
            _plan_parquet(blob, chunk_rows)
            if blob.format == "parquet"
            else _plan_csv(blob, chunk_rows)
        )
        if entity_field is not None and entity_field not in plan.columns:
            raise InvalidSource(_no_entity_column(path, entity_field, plan.columns))
        if label_field is not None and label_field not in plan.columns:
            raise InvalidLabels(no_label_column(path, label_field, plan.columns))
        return replace(plan, entity_field=entity_field, label_field=label_field)

    def read_chunk(
        self,
        path: str,
        spec: ChunkSpec,
        *,
        columns: list[str],
        pin: str | None = None,
        entity_field: str | None = None,
        label_field: str | None = None,
    ) -> SourceChunk:
        """The rows of one planned chunk, from the version the plan was pinned to."""
        import pyarrow as pa

        blob = self.open(path, pin=pin)
        try:
            if blob.format == "parquet":
                import pyarrow.parquet as pq

                groups = list(range(spec.start, spec.stop))
                table = pq.ParquetFile(blob.source()).read_row_groups(groups)
            else:
                table = _read_csv_range(blob, spec, columns)
        except SourceUnavailable:
            raise  # transient: the task retries
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
            raise InvalidSource(f"cannot read chunk {spec.index} of {path}: {exc}") from None
        if table.num_rows == 0:
            raise InvalidSource(f"chunk {spec.index} of {path} is empty; was the file changed?")
        # Straight from Arrow's blocks into the matrix: no combined copy of the table.
        return _chunk(
            table, offset=spec.offset, path=path, entity_field=entity_field, label_field=label_field
        )


def _batches(blob: Blob, *, chunk_rows: int) -> Iterator[Any]:
    import pyarrow as pa

    try:
        if blob.format == "parquet":
            import pyarrow.parquet as pq

            yield from pq.ParquetFile(blob.source()).iter_batches(batch_size=chunk_rows)
        else:
            yield from _rebatch(_csv_batches(blob), chunk_rows)
    except SourceUnavailable:
        raise  # transient: the task retries
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise InvalidSource(f"cannot read {blob.uri}: {exc}") from None


def _plan_parquet(blob: Blob, chunk_rows: int) -> SourcePlan:
    import pyarrow.parquet as pq

    metadata = pq.ParquetFile(blob.source()).metadata
    columns = [n for n in metadata.schema.names if n not in META_COLUMNS]
    chunks: list[ChunkSpec] = []
    start, rows, offset = 0, 0, 0
    for group in range(metadata.num_row_groups):
        rows += metadata.row_group(group).num_rows
        if rows >= chunk_rows or group == metadata.num_row_groups - 1:
            chunks.append(ChunkSpec(len(chunks), offset, rows, start, group + 1))
            offset, rows, start = offset + rows, 0, group + 1
    return SourcePlan(format="parquet", columns=columns, n_rows=offset, chunks=chunks, pin=blob.pin)


def _plan_csv(blob: Blob, chunk_rows: int) -> SourcePlan:
    """Byte ranges of every ``chunk_rows`` rows, found by scanning for newlines in
    fixed-size blocks (memory stays bounded whatever the file size)."""
    header, first_row = _csv_header(blob)
    n_rows, starts = _row_starts(blob, first_row=first_row, chunk_rows=chunk_rows)
    # A start past the last row (only blank lines after it) would be an empty chunk.
    bounds = [*starts[: -(-n_rows // chunk_rows)], blob.size]
    chunks = [
        ChunkSpec(i, i * chunk_rows, min(chunk_rows, n_rows - i * chunk_rows), a, b)
        for i, (a, b) in enumerate(itertools.pairwise(bounds))
    ]
    return SourcePlan(format="csv", columns=header, n_rows=n_rows, chunks=chunks, pin=blob.pin)


def _row_starts(blob: Blob, *, first_row: int, chunk_rows: int) -> tuple[int, list[int]]:
    """The number of rows from byte ``first_row`` on, and where every ``chunk_rows``-th
    row begins. Blank lines (LF or CRLF alone) are not rows: Arrow skips them,
    so counting them would shift every later offset and could plan an empty chunk.
    A newline inside a quoted field is not a row boundary either (see
    :func:`_record_ends`)."""
    starts, rows, line_start, last_byte = [first_row], 0, first_row, _NEWLINE
    position, quoted = first_row, False
    for data, has_quote in _scan_blocks(blob, first_row):
        ends, quoted = _record_ends(data, position, quoted=quoted, has_quote=has_quote)
        if ends.size:
            begins = np.empty_like(ends)
            begins[0], begins[1:] = line_start, ends[:-1] + 1
            before = data[np.maximum(ends - position - 1, 0)]  # the byte before each newline
            if ends[0] == position:  # ... which for the block's first byte is the last one's
                before[0] = last_byte
            length = ends - begins
            filled = (length > 1) | ((length == 1) & (before != _CR))
            counts = rows + np.cumsum(filled)
            # Row k (0-based) ends at a newline; chunk i starts after row i*C - 1.
            starts.extend((ends[filled & (counts % chunk_rows == 0)] + 1).tolist())
            rows, line_start = int(counts[-1]), int(ends[-1]) + 1
        position += len(data)
        last_byte = int(data[-1])
    tail = position - line_start  # a last row without a newline
    return rows + int(tail > 1 or (tail == 1 and last_byte != _CR)), starts


def _scan_blocks(blob: Blob, start: int) -> Iterator[tuple[_Bytes, bool]]:
    """Consecutive blocks of ``blob`` from byte ``start``, as uint8 arrays, and whether
    each holds a quote character.

    A local file is read 1 MB at a time into one reused buffer (valid until the next
    block): fresh 32 MB blocks and their temporaries cost more in page faults than the
    scan itself (a 126 MB file took 160-300 ms, now about 50). Object storage is read in
    large ranged requests, each a round trip."""
    fills = getattr(blob, "fills", None)
    if fills is None:
        position = start
        while block := blob.read_range(position, min(position + _SCAN_BYTES, blob.size)):
            yield np.frombuffer(block, dtype=np.uint8), block.find(b'"') >= 0
            position += len(block)
        return
    buffer = bytearray(_LOCAL_SCAN_BYTES)
    view = np.frombuffer(buffer, dtype=np.uint8)
    for n in fills(start, buffer):
        yield view[:n], buffer.find(b'"', 0, n) >= 0


def _record_ends(
    data: _Bytes, position: int, *, quoted: bool, has_quote: bool
) -> tuple[np.ndarray[Any, np.dtype[np.int64]], bool]:
    """File offsets of the newlines in ``data`` (read from byte ``position``) that end a
    record, and whether the block ends inside a quoted field.

    A plain CSV has no quote at all (``has_quote``: one ``find`` in C tells), and every
    newline ends a record. Otherwise a newline ends a record only outside quotes: when the quotes
    before it (``""``, an escaped quote, counts twice) are even in number."""
    newlines = np.flatnonzero(data == _NEWLINE)
    if not quoted and not has_quote:
        return position + newlines, False
    quotes = np.flatnonzero(data == _QUOTE)
    parity = (np.searchsorted(quotes, newlines) + int(quoted)) % 2
    return position + newlines[parity == 0], bool((quotes.size + int(quoted)) % 2)


def _first_line(blob: Blob) -> bytes:
    """The first line, newline included (the whole blob if it has none)."""
    probe = _HEADER_PROBE_BYTES
    while True:
        head = blob.read_range(0, min(probe, blob.size))
        end = head.find(b"\n")
        if end >= 0:
            return head[: end + 1]
        if len(head) >= blob.size:
            return head
        probe *= 4


def _csv_header(blob: Blob) -> tuple[list[str], int]:
    """Column names (generated ``f0..`` when the first line is data) and where data starts."""
    first = _first_line(blob)
    fields = first.decode("utf-8-sig", errors="replace").strip().split(",")
    if all(_is_number(field) for field in fields):
        return [f"f{i}" for i in range(len(fields))], 0
    return [f.strip().strip('"') for f in fields], len(first)


def _read_csv_range(blob: Blob, spec: ChunkSpec, columns: list[str]) -> Any:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    data = blob.read_range(spec.start, spec.stop)
    options = pacsv.ReadOptions(column_names=columns, block_size=_CSV_BLOCK_BYTES)
    return pacsv.read_csv(
        pa.BufferReader(data),  # parses the bytes in place (BytesIO was copied into Arrow)
        read_options=options,
        parse_options=_parse(quoted=data.find(b'"') >= 0),
        convert_options=_convert(),
    )


def _csv_batches(blob: Blob) -> Iterator[Any]:
    import pyarrow.csv as pacsv

    first = _first_line(blob).decode("utf-8-sig", errors="replace").strip().split(",")
    has_header = not all(_is_number(field) for field in first)
    read_options = pacsv.ReadOptions(
        block_size=_CSV_BLOCK_BYTES, autogenerate_column_names=not has_header
    )
    yield from pacsv.open_csv(
        blob.source(),
        read_options=read_options,
        parse_options=_parse(quoted=_has_quotes(blob)),
        convert_options=_convert(),
    )


def _has_quotes(blob: Blob) -> bool:
    """Whether any field is quoted (then it may hold a newline)."""
    return any(has_quote for _, has_quote in _scan_blocks(blob, 0))


def _parse(*, quoted: bool) -> Any:
    """Arrow's CSV parsing: newlines inside quoted values only where quotes exist, as
    that mode parses more slowly."""
    import pyarrow.csv as pacsv

    return pacsv.ParseOptions(newlines_in_values=quoted)


def _convert() -> Any:
    """Record ids stay text: inferred as numbers, ``007`` would come back as ``7``,
    ``1e3`` as ``1000.0``, and a later non-numeric id would fail the read."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    return pacsv.ConvertOptions(column_types={"record_id": pa.string()})


def _rebatch(batches: Iterator[Any], chunk_rows: int) -> Iterator[Any]:
    """Cut Arrow's byte-sized CSV blocks into batches of exactly ``chunk_rows`` rows."""
    import pyarrow as pa

    pending: list[Any] = []
    rows = 0
    for batch in itertools.chain(batches, [None]):
        if batch is not None:
            pending.append(batch)
            rows += batch.num_rows
        while rows >= chunk_rows or (batch is None and rows > 0):
            table = pa.Table.from_batches(pending)
            take = min(chunk_rows, rows)
            yield from table.slice(0, take).combine_chunks().to_batches()
            rest = table.slice(take)
            pending = list(rest.to_batches())
            rows -= take


def _no_entity_column(path: str, entity_field: str, columns: Sequence[str]) -> str:
    return (
        f"source {path!r} has no column {entity_field!r} (entity_field); its columns are "
        f"{', '.join(columns)}"
    )


def no_label_column(path: str, label_field: str, columns: Sequence[str]) -> str:
    """The error for a label column the file does not have."""
    return (
        f"source {path!r} has no label column {label_field!r}; its columns are {', '.join(columns)}"
    )


def _chunk(
    batch: Any,
    *,
    offset: int,
    path: str,
    entity_field: str | None = None,
    label_field: str | None = None,
) -> SourceChunk:
    """A record batch or a table (of several blocks) as a source chunk; the entity and
    label columns, if named, are read apart from the features."""
    import pyarrow as pa

    assert isinstance(batch, pa.RecordBatch | pa.Table)
    names = batch.schema.names
    if entity_field is not None and entity_field not in names:
        raise InvalidSource(_no_entity_column(path, entity_field, names))
    if label_field is not None and label_field not in names:
        raise InvalidLabels(no_label_column(path, label_field, names))
    meta = (*META_COLUMNS, entity_field, label_field)
    features = [i for i, name in enumerate(names) if name not in meta]
    if not features:
        raise InvalidSource(f"source {path!r} has no feature columns")
    # Filled column by column: one matrix, no per-column copies stacked afterwards.
    matrix = np.empty((batch.num_rows, len(features)), dtype=np.float64)
    for j, i in enumerate(features):
        column = batch.column(i)
        if pa.types.is_null(column.type):
            # Only missing values ("", NaN) in this chunk, so Arrow inferred no type: they
            # are NaN, and check_finite names the first record instead of calling the
            # column non-numeric.
            column = column.cast(pa.float64())
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
            raise InvalidSource(
                f"source {path!r}: column {names[i]!r} is {column.type}, not numeric"
            )
        matrix[:, j] = column.to_numpy(zero_copy_only=False)
    check_finite(matrix, first_index=offset)
    return SourceChunk(
        offset=offset,
        matrix=matrix,
        record_ids=_strings(batch, "record_id"),
        timestamps=_times(batch, offset),
        features=[names[i] for i in features],
        entities=_entities(batch, entity_field) if entity_field is not None else None,
        labels=_labels(batch, label_field) if label_field is not None else None,
    )


def _strings(batch: Any, name: str) -> list[str] | None:
    import pyarrow as pa

    assert isinstance(batch, pa.RecordBatch | pa.Table)
    if name not in batch.schema.names:
        return None
    return [str(v) for v in batch.column(name).to_pylist()]


def _labels(batch: Any, name: str) -> npt.NDArray[np.float64]:
    """The label column as numbers (true/false as 1/0, missing as NaN); what they must
    be is the core's business (``domain.evaluation.parse_labels``)."""
    import pyarrow as pa

    column = batch.column(name)
    if pa.types.is_boolean(column.type) or pa.types.is_null(column.type):
        column = column.cast(pa.float64())
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        raise InvalidLabels(
            f"label column {name!r} is {column.type}; it must hold 0 (normal) or 1 (anomaly)"
        )
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


def _entities(batch: Any, name: str) -> list[str | None]:
    return [None if v is None else str(v)[:256] for v in batch.column(name).to_pylist()]


def _times(batch: Any, offset: int) -> list[datetime] | None:
    import pyarrow as pa

    assert isinstance(batch, pa.RecordBatch | pa.Table)
    if "timestamp" not in batch.schema.names:
        return None
    column = batch.column("timestamp")
    values = column.to_pylist()
    if pa.types.is_timestamp(column.type):
        return [parse_timestamp(v.isoformat(), index=offset + i) for i, v in enumerate(values)]
    return [parse_timestamp(v, index=offset + i) for i, v in enumerate(values)]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
