"""ArrowSourceReader on local CSV and Parquet files: plans, chunks, and precise errors.

Whatever the layout of a file and the chunk size, the planned chunks read one by one
(``plan`` + ``read_chunk``, the fan-out path) and the streamed chunks (``read_chunks``,
the in-process path) both give back exactly the file's rows, at the right offsets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pynomaly_workers.adapters import sources
from pynomaly_workers.adapters.sources import ArrowSourceReader, blobs
from pynomaly_workers.adapters.sources.blobs import Blob, LocalBlob
from pynomaly_workers.domain.errors import InvalidInput, InvalidSource
from pynomaly_workers.domain.ports import SourceChunk, SourcePlan

N_ROWS = 23
FEATURES = ["x", "y", "z"]
T0 = datetime(2026, 1, 1, tzinfo=UTC)
CHUNK_SIZES = [
    pytest.param(1, id="chunk-1"),
    pytest.param(7, id="chunk-7"),
    pytest.param(N_ROWS, id="chunk-exactly-n"),
    pytest.param(N_ROWS + 27, id="chunk-more-than-n"),
]


# -- factories ----------------------------------------------------------------------------
def matrix() -> np.ndarray:
    """The rows every test file holds: negative, fractional and integral values."""
    return np.array(
        [[i * 0.25 - 3.0, float(-i), round(i**2 / 7, 6)] for i in range(N_ROWS)],
        dtype=np.float64,
    )


def record_ids() -> list[str]:
    # Zero-padded numbers: they must come back as the same text, not as integers.
    return [f"{i:04d}" for i in range(N_ROWS)]


def timestamps() -> list[datetime]:
    return [T0 + timedelta(seconds=i) for i in range(N_ROWS)]


@dataclass(frozen=True)
class Layout:
    """How a CSV file is written."""

    header: bool = True
    ids: bool = False
    newline: str = "\n"
    trailing_newline: bool = True
    byte_order_mark: bool = False
    blank_lines: bool = False
    quoted: bool = False  # record ids quoted, holding newlines, commas and quotes

    def expected_ids(self) -> list[str]:
        """The record ids the file holds."""
        if not self.quoted:
            return record_ids()
        return [f'{i}{self.newline}line "two", more' for i in record_ids()]

    def _id_field(self, i: int) -> str:
        value = self.expected_ids()[i]
        return '"' + value.replace('"', '""') + '"' if self.quoted else value

    def columns(self) -> list[str]:
        features = FEATURES if self.header else [f"f{i}" for i in range(len(FEATURES))]
        return (["record_id", "timestamp"] if self.ids else []) + features

    def text(self) -> str:
        lines = [",".join(self.columns())] if self.header else []
        for i, row in enumerate(matrix().tolist()):
            meta = [self._id_field(i), f"2026-01-01T00:00:{i:02d}Z"] if self.ids else []
            lines.append(",".join(meta + [repr(v) for v in row]))
            if self.blank_lines and i % 7 == 6:
                lines.append("")
        if self.blank_lines:
            lines.append("")
        text = self.newline.join(lines) + (self.newline if self.trailing_newline else "")
        return ("\ufeff" if self.byte_order_mark else "") + text


LAYOUTS = [
    pytest.param(Layout(), id="header"),
    pytest.param(Layout(header=False), id="no-header"),
    pytest.param(Layout(ids=True), id="record-ids-and-timestamps"),
    pytest.param(Layout(trailing_newline=False), id="no-trailing-newline"),
    pytest.param(Layout(newline="\r\n"), id="crlf"),
    pytest.param(
        Layout(header=False, newline="\r\n", trailing_newline=False),
        id="crlf-no-header-no-trailing-newline",
    ),
    pytest.param(Layout(ids=True, byte_order_mark=True), id="byte-order-mark"),
    pytest.param(Layout(blank_lines=True), id="blank-lines"),
    pytest.param(Layout(blank_lines=True, newline="\r\n"), id="crlf-blank-lines"),
    pytest.param(Layout(ids=True, quoted=True), id="quoted-newlines"),
    pytest.param(Layout(ids=True, quoted=True, newline="\r\n"), id="quoted-crlf-newlines"),
    pytest.param(
        Layout(ids=True, quoted=True, blank_lines=True, trailing_newline=False),
        id="quoted-newlines-blank-lines",
    ),
]


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def write_parquet(path: Path, *, row_group_size: int) -> Path:
    table = pa.table(
        {
            "record_id": record_ids(),
            "timestamp": pa.array(timestamps(), type=pa.timestamp("us", tz="UTC")),
            **{name: matrix()[:, i] for i, name in enumerate(FEATURES)},
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def local(blob: Blob) -> LocalBlob:
    assert isinstance(blob, LocalBlob)
    return blob


@pytest.fixture
def reader(tmp_path: Path) -> ArrowSourceReader:
    """A reader confined to this test's folder, where its files are written."""
    return ArrowSourceReader(allowed_roots=(tmp_path,))


def read_planned(reader: ArrowSourceReader, path: Path, plan: SourcePlan) -> list[SourceChunk]:
    return [reader.read_chunk(str(path), spec, columns=plan.columns) for spec in plan.chunks]


def stacked(chunks: list[SourceChunk]) -> np.ndarray:
    return np.vstack([c.matrix for c in chunks])


def joined_ids(chunks: list[SourceChunk]) -> list[str] | None:
    if any(c.record_ids is None for c in chunks):
        assert all(c.record_ids is None for c in chunks)
        return None
    return [i for c in chunks for i in c.record_ids or []]


def joined_times(chunks: list[SourceChunk]) -> list[datetime] | None:
    if any(c.timestamps is None for c in chunks):
        assert all(c.timestamps is None for c in chunks)
        return None
    return [t for c in chunks for t in c.timestamps or []]


def expected_offsets(chunk_rows: int) -> list[int]:
    return list(range(0, N_ROWS, chunk_rows))


# -- CSV: plans and chunks ----------------------------------------------------------------
@pytest.mark.parametrize("chunk_rows", CHUNK_SIZES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_planned_csv_chunks_read_back_the_file(
    reader: ArrowSourceReader, tmp_path: Path, layout: Layout, chunk_rows: int
) -> None:
    # Given a CSV file of 23 rows
    path = write(tmp_path / "data.csv", layout.text())

    # When it is planned and every planned chunk is read on its own
    plan = reader.plan(str(path), chunk_rows=chunk_rows)
    chunks = read_planned(reader, path, plan)

    # Then the plan counts the rows, cuts them every chunk_rows, and the chunks hold
    # exactly the file's rows, ids and timestamps at their offsets
    assert (plan.format, plan.columns, plan.n_rows, plan.n_features) == (
        "csv",
        layout.columns(),
        N_ROWS,
        len(FEATURES),
    )
    assert [s.index for s in plan.chunks] == list(range(math.ceil(N_ROWS / chunk_rows)))
    assert [s.offset for s in plan.chunks] == expected_offsets(chunk_rows)
    assert [s.n_rows for s in plan.chunks] == [
        min(chunk_rows, N_ROWS - o) for o in expected_offsets(chunk_rows)
    ]
    assert [(c.offset, len(c.matrix)) for c in chunks] == [
        (s.offset, s.n_rows) for s in plan.chunks
    ]
    np.testing.assert_array_equal(stacked(chunks), matrix())
    assert joined_ids(chunks) == (layout.expected_ids() if layout.ids else None)
    assert joined_times(chunks) == (timestamps() if layout.ids else None)


@pytest.mark.parametrize("chunk_rows", CHUNK_SIZES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_streamed_csv_chunks_match_the_planned_ones(
    reader: ArrowSourceReader, tmp_path: Path, layout: Layout, chunk_rows: int
) -> None:
    # Given a CSV file and its planned chunks
    path = write(tmp_path / "data.csv", layout.text())
    planned = read_planned(reader, path, reader.plan(str(path), chunk_rows=chunk_rows))

    # When it is streamed chunk by chunk
    streamed = list(reader.read_chunks(str(path), chunk_rows=chunk_rows))

    # Then both paths cut the same rows at the same offsets
    assert [(c.offset, len(c.matrix)) for c in streamed] == [
        (c.offset, len(c.matrix)) for c in planned
    ]
    np.testing.assert_array_equal(stacked(streamed), stacked(planned))
    assert joined_ids(streamed) == joined_ids(planned)
    assert joined_times(streamed) == joined_times(planned)


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_plan_does_not_depend_on_the_scan_block_size(
    reader: ArrowSourceReader,
    tmp_path: Path,
    layout: Layout,
    block: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a CSV file and its plan, scanned in one block
    path = write(tmp_path / "data.csv", layout.text())
    whole = reader.plan(str(path), chunk_rows=4)

    # When it is scanned in blocks of a few bytes, so that newlines, CR LF pairs, blank
    # lines and quotes fall on every side of a block boundary (local files, read into
    # one buffer, and the ranged reads object storage gets)
    monkeypatch.setattr(sources, "_LOCAL_SCAN_BYTES", block)
    local_plan = reader.plan(str(path), chunk_rows=4)
    monkeypatch.setattr(sources, "_SCAN_BYTES", block)
    monkeypatch.delattr(blobs.LocalBlob, "fills")
    ranged_plan = reader.plan(str(path), chunk_rows=4)

    # Then the plans are the same, to the byte
    assert local_plan == whole
    assert ranged_plan == whole


@pytest.mark.parametrize("layout", LAYOUTS)
def test_describe_counts_rows_and_features(
    reader: ArrowSourceReader, tmp_path: Path, layout: Layout
) -> None:
    path = write(tmp_path / "data.csv", layout.text())

    described = reader.describe(str(path))

    features = [c for c in layout.columns() if c not in ("record_id", "timestamp")]
    assert (described.n_rows, described.n_features, described.columns) == (
        N_ROWS,
        len(FEATURES),
        features,
    )
    assert (described.format, described.uri, described.name) == ("csv", str(path.resolve()), "")


@pytest.mark.parametrize(
    "ids",
    [
        ["007", "008", "1e3", "123456789012345678901234", "abc"],
        ["1", "2", "3", "4", "5"],
    ],
    ids=["mixed-and-numeric-looking", "all-integers"],
)
@pytest.mark.parametrize("chunk_rows", [2, 10])
def test_record_ids_come_back_as_written(
    reader: ArrowSourceReader, tmp_path: Path, ids: list[str], chunk_rows: int
) -> None:
    # Given record ids that look like numbers
    rows = "".join(f"{rid},{i}\n" for i, rid in enumerate(ids))
    path = write(tmp_path / "ids.csv", "record_id,x\n" + rows)

    # When the file is read along both paths
    planned = read_planned(reader, path, reader.plan(str(path), chunk_rows=chunk_rows))
    streamed = list(reader.read_chunks(str(path), chunk_rows=chunk_rows))

    # Then the ids are the text of the file, not numbers
    assert joined_ids(planned) == joined_ids(streamed) == ids


@pytest.mark.parametrize(
    ("stamps", "expected"),
    [
        (["2026-01-01T00:00:00Z", "2026-01-01T02:00:01+02:00"], [T0, T0 + timedelta(seconds=1)]),
        (["2026-01-01 00:00:00", "2026-01-01 00:00:01"], [T0, T0 + timedelta(seconds=1)]),
        (["1767225600", "1767225601.5"], [T0, T0 + timedelta(seconds=1.5)]),
    ],
    ids=["iso-with-offsets", "iso-naive-as-utc", "unix-seconds"],
)
def test_timestamps_become_aware_utc_datetimes(
    reader: ArrowSourceReader, tmp_path: Path, stamps: list[str], expected: list[datetime]
) -> None:
    path = write(tmp_path / "t.csv", "timestamp,x\n" + "".join(f"{s},1\n" for s in stamps))

    planned = read_planned(reader, path, reader.plan(str(path), chunk_rows=1))
    streamed = list(reader.read_chunks(str(path), chunk_rows=1))

    assert joined_times(planned) == joined_times(streamed) == expected


def test_a_file_with_a_header_only_has_no_rows(reader: ArrowSourceReader, tmp_path: Path) -> None:
    path = write(tmp_path / "empty.csv", "x,y\n")

    plan = reader.plan(str(path), chunk_rows=5)

    assert (plan.n_rows, plan.chunks, plan.columns) == (0, [], ["x", "y"])
    with pytest.raises(InvalidSource, match="has no rows"):
        reader.describe(str(path))


# -- Parquet ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("chunk_rows", "groups_per_chunk"),
    [
        pytest.param(1, [1, 1, 1, 1, 1], id="chunk-1"),
        pytest.param(7, [2, 2, 1], id="chunk-7"),
        pytest.param(10, [2, 2, 1], id="chunk-two-groups"),
        pytest.param(N_ROWS, [5], id="chunk-exactly-n"),
        pytest.param(N_ROWS + 27, [5], id="chunk-more-than-n"),
    ],
)
def test_planned_parquet_chunks_are_whole_row_groups(
    reader: ArrowSourceReader, tmp_path: Path, chunk_rows: int, groups_per_chunk: list[int]
) -> None:
    # Given a Parquet file of 23 rows in row groups of 5, 5, 5, 5 and 3
    path = write_parquet(tmp_path / "data.parquet", row_group_size=5)

    # When it is planned and each chunk is read on its own
    plan = reader.plan(str(path), chunk_rows=chunk_rows)
    chunks = read_planned(reader, path, plan)

    # Then chunks gather whole row groups up to chunk_rows, cover the file in order, and
    # hold its rows, ids and timestamps
    assert (plan.format, plan.n_rows, plan.n_features) == ("parquet", N_ROWS, len(FEATURES))
    assert [s.stop - s.start for s in plan.chunks] == groups_per_chunk
    assert [s.start for s in plan.chunks] == [0, *(s.stop for s in plan.chunks[:-1])]
    assert plan.chunks[-1].stop == 5
    assert [s.offset for s in plan.chunks] == [
        sum(s.n_rows for s in plan.chunks[:i]) for i in range(len(plan.chunks))
    ]
    assert [(c.offset, len(c.matrix)) for c in chunks] == [
        (s.offset, s.n_rows) for s in plan.chunks
    ]
    np.testing.assert_array_equal(stacked(chunks), matrix())
    assert joined_ids(chunks) == record_ids()
    assert joined_times(chunks) == timestamps()


@pytest.mark.parametrize("chunk_rows", CHUNK_SIZES)
def test_streamed_parquet_chunks_hold_the_rows(
    reader: ArrowSourceReader, tmp_path: Path, chunk_rows: int
) -> None:
    path = write_parquet(tmp_path / "data.parquet", row_group_size=5)

    streamed = list(reader.read_chunks(str(path), chunk_rows=chunk_rows))

    assert [c.offset for c in streamed] == expected_offsets(chunk_rows)
    np.testing.assert_array_equal(stacked(streamed), matrix())
    assert joined_ids(streamed) == record_ids()
    assert joined_times(streamed) == timestamps()
    described = reader.describe(str(path))
    assert (described.format, described.n_rows, described.columns) == (
        "parquet",
        N_ROWS,
        FEATURES,
    )


# -- bad files ----------------------------------------------------------------------------
@pytest.mark.parametrize("path_kind", ["csv", "parquet"])
def test_a_non_numeric_column_is_named(
    reader: ArrowSourceReader, tmp_path: Path, path_kind: str
) -> None:
    # Given a file whose column "label" holds text
    if path_kind == "csv":
        path = write(tmp_path / "bad.csv", "x,label\n1,a\n2,b\n3,c\n")
    else:
        path = tmp_path / "bad.parquet"
        pq.write_table(pa.table({"x": [1.0, 2.0, 3.0], "label": ["a", "b", "c"]}), path)
    plan = reader.plan(str(path), chunk_rows=2)

    # When / Then both read paths name the column
    with pytest.raises(InvalidSource, match=r"column 'label' is string, not numeric"):
        reader.read_chunk(str(path), plan.chunks[0], columns=plan.columns)
    with pytest.raises(InvalidSource, match=r"column 'label' is string, not numeric"):
        list(reader.read_chunks(str(path), chunk_rows=2))


@pytest.mark.parametrize("value", ["NaN", "nan", "", "inf", "-inf"])
@pytest.mark.parametrize("chunk_rows", [1, 5, 50])
def test_a_non_finite_value_names_its_record(
    reader: ArrowSourceReader, tmp_path: Path, value: str, chunk_rows: int
) -> None:
    # Given a CSV whose record 12 holds a missing or infinite value
    lines = [f"{i}.5,{value if i == 12 else i}\n" for i in range(20)]
    path = write(tmp_path / "nan.csv", "x,y\n" + "".join(lines))
    plan = reader.plan(str(path), chunk_rows=chunk_rows)
    [bad] = [s for s in plan.chunks if s.offset <= 12 < s.offset + s.n_rows]

    # When / Then both read paths name record 12 of the file, not of the chunk
    with pytest.raises(InvalidInput, match=r"record 12 has a non-finite value"):
        reader.read_chunk(str(path), bad, columns=plan.columns)
    with pytest.raises(InvalidInput, match=r"record 12 has a non-finite value"):
        list(reader.read_chunks(str(path), chunk_rows=chunk_rows))


def test_a_missing_file_is_refused(reader: ArrowSourceReader, tmp_path: Path) -> None:
    missing = tmp_path / "missing.csv"

    with pytest.raises(InvalidSource, match="does not exist or is not a file"):
        reader.open(str(missing))
    with pytest.raises(InvalidSource, match="does not exist"):
        reader.plan(str(missing), chunk_rows=10)
    with pytest.raises(InvalidSource, match="does not exist"):
        reader.describe(str(tmp_path))  # a folder is not a file


@pytest.mark.parametrize("name", ["data.txt", "data.json", "data.csv.gz", "data"])
def test_a_file_of_another_kind_is_refused(
    reader: ArrowSourceReader, tmp_path: Path, name: str
) -> None:
    path = write(tmp_path / name, "x,y\n1,2\n")

    with pytest.raises(InvalidSource, match=r"use a \.csv or \.parquet file"):
        reader.plan(str(path), chunk_rows=10)


@pytest.mark.parametrize("name", ["data.CSV", "data.parquet", "data.pq"])
def test_extensions_are_case_insensitive_and_pq_is_parquet(
    reader: ArrowSourceReader, tmp_path: Path, name: str
) -> None:
    path = tmp_path / name
    if name.endswith("CSV"):
        write(path, "x\n1\n")
    else:
        pq.write_table(pa.table({"x": [1.0]}), path)

    assert local(reader.open(str(path))).path == path.resolve()
    assert reader.describe(str(path)).n_rows == 1


# -- where files may be -------------------------------------------------------------------
@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    """An allowed folder holding ok.csv and a sibling folder holding secret.csv."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    write(allowed / "ok.csv", "x\n1\n")
    write(outside / "secret.csv", "x\n1\n")
    return allowed, outside


def test_a_file_below_an_allowed_root_is_read(roots: tuple[Path, Path]) -> None:
    allowed, _ = roots
    reader = ArrowSourceReader(allowed_roots=(allowed,))

    assert local(reader.open(str(allowed / "ok.csv"))).path == (allowed / "ok.csv").resolve()
    assert reader.describe(str(allowed / "ok.csv")).n_rows == 1


@pytest.mark.parametrize(
    "reach",
    ["outside/secret.csv", "allowed/../outside/secret.csv", "allowed/link.csv"],
    ids=["sibling-folder", "dot-dot", "symlink-out"],
)
def test_a_file_outside_the_allowed_roots_is_refused(
    roots: tuple[Path, Path], tmp_path: Path, reach: str
) -> None:
    # Given a reader limited to one folder, and a link in it to a file outside
    allowed, outside = roots
    (allowed / "link.csv").symlink_to(outside / "secret.csv")
    reader = ArrowSourceReader(allowed_roots=(allowed,))

    # When / Then every way of reaching the outside file is refused, before it is opened
    for entry in (reader.open, reader.describe):
        with pytest.raises(InvalidSource, match="is outside the allowed folders"):
            entry(str(tmp_path / reach))
    with pytest.raises(InvalidSource, match="is outside the allowed folders"):
        reader.plan(str(tmp_path / reach), chunk_rows=1)


def test_a_missing_file_outside_the_roots_is_refused_as_outside(
    roots: tuple[Path, Path], tmp_path: Path
) -> None:
    # A reader limited to some folders does not say which files exist elsewhere.
    allowed, _ = roots
    reader = ArrowSourceReader(allowed_roots=(allowed,))

    with pytest.raises(InvalidSource, match="is outside the allowed folders"):
        reader.open(str(tmp_path / "outside" / "nope.csv"))


def test_file_uris_are_local_paths(reader: ArrowSourceReader, tmp_path: Path) -> None:
    # Given a file whose folder name needs percent-encoding in a URI
    folder = tmp_path / "my data #1"
    folder.mkdir()
    path = write(folder / "rows.csv", Layout().text())

    # When it is named by file:// URIs
    uris = [path.as_uri(), f"file://localhost{path.as_uri().removeprefix('file://')}"]

    # Then each resolves to the file and reads like the path itself
    for uri in uris:
        assert local(reader.open(uri)).path == path.resolve()
        plan = reader.plan(uri, chunk_rows=7)
        np.testing.assert_array_equal(stacked(read_planned(reader, path, plan)), matrix())
        assert reader.describe(uri).n_rows == N_ROWS


def test_a_relative_path_is_resolved_against_the_working_folder(
    reader: ArrowSourceReader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "rows.csv", Layout().text())
    monkeypatch.chdir(tmp_path)

    assert local(reader.open("rows.csv")).path == (tmp_path / "rows.csv").resolve()


@pytest.mark.parametrize("uri", ["https://example.com/data.csv", "ftp://host/data.parquet"])
def test_other_remote_uris_are_refused(reader: ArrowSourceReader, uri: str) -> None:
    with pytest.raises(InvalidSource, match=r"use a local path, a file:// URI or s3://bucket/key"):
        reader.open(uri)


def test_a_file_changed_after_planning_is_refused(
    reader: ArrowSourceReader, tmp_path: Path
) -> None:
    # Given a planned CSV file
    path = write(tmp_path / "rows.csv", Layout().text())
    plan = reader.plan(str(path), chunk_rows=7)

    # When it is rewritten before its chunks are read
    write(path, Layout().text() + "1.0,2.0,3.0\n")

    # Then reading a chunk of the old plan fails and says why
    with pytest.raises(InvalidSource, match="changed since the job was planned"):
        reader.read_chunk(str(path), plan.chunks[0], columns=plan.columns, pin=plan.pin)
