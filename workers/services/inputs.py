"""Turning any detection/training input into chunks of validated rows."""

from __future__ import annotations

from collections.abc import Iterator

from pynomaly_workers.domain.jobs import (
    DataInput,
    DatasetInput,
    InlineRecords,
    SourceInput,
    rows_per_chunk,
    split_rows,
)
from pynomaly_workers.domain.ports import DatasetStore, SourceChunk, SourceReader
from pynomaly_workers.settings import Settings


def chunk_rows_for(settings: Settings, *, n_features: int) -> int:
    """Rows per chunk when scoring a model of ``n_features``: ``CHUNK_ROWS``, fewer for a
    wide model so a chunk's matrix stays within ``CHUNK_MAX_MB``."""
    return rows_per_chunk(
        n_features=n_features,
        max_rows=settings.chunk_rows,
        max_bytes=int(settings.chunk_max_mb * 1_000_000),
    )


def iter_chunks(
    data: DataInput,
    *,
    datasets: DatasetStore,
    sources: SourceReader,
    chunk_rows: int,
) -> Iterator[SourceChunk]:
    """The input's rows in order, at most ``chunk_rows`` at a time."""
    if isinstance(data, InlineRecords):
        yield from _inline_chunks(data, chunk_rows=chunk_rows)
        return
    path, label_field = None, None
    if isinstance(data, DatasetInput):
        dataset = datasets.get_dataset(data.name)
        path, label_field = dataset.uri, dataset.label_column  # the label is no feature
    if isinstance(data, SourceInput):
        path = data.path
    assert path is not None
    yield from sources.read_chunks(
        path, chunk_rows=chunk_rows, entity_field=data.entity_field, label_field=label_field
    )


def _inline_chunks(data: InlineRecords, *, chunk_rows: int) -> Iterator[SourceChunk]:
    for start, stop in split_rows(len(data.matrix), max_rows=chunk_rows):
        yield SourceChunk(
            offset=start,
            matrix=data.matrix[start:stop],
            record_ids=data.record_ids[start:stop] if data.record_ids else None,
            timestamps=data.timestamps[start:stop] if data.timestamps else None,
            entities=data.entities[start:stop] if data.entities else None,
        )


def input_label(data: DataInput) -> str | None:
    """The dataset name (or source path) a job read, for the job record."""
    if isinstance(data, DatasetInput):
        return data.name
    if isinstance(data, SourceInput):
        return data.path[:128]
    return None
