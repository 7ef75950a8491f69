"""The progress display of ``detect --wait``: the figures, the line, and where it goes."""

from __future__ import annotations

import io
import json

import pytest

from pynomaly_workers.cli.progress import (
    JsonLinesProgress,
    ProgressReport,
    TerminalProgress,
    format_duration,
    format_progress,
    measure_progress,
    measure_training,
    progress_display,
)
from pynomaly_workers.cli.waiting import ProgressWatch
from pynomaly_workers.domain.ports import JobProgress


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def report(done: int, total: int, records: int, elapsed: float) -> ProgressReport:
    progress = JobProgress(chunks_done=done, chunks_total=total, records=records)
    return measure_progress("j1", progress, elapsed=elapsed)


@pytest.mark.parametrize(
    ("done", "total", "records", "elapsed", "rate", "eta"),
    [
        (0, 10, 0, 0.0, None, None),  # nothing done, no time passed
        (0, 10, 0, 2.0, 0.0, None),  # time passed, no chunk yet: no estimate
        (1, 10, 1000, 2.0, 500.0, 18.0),  # 2 s a chunk, nine left
        (5, 10, 5000, 2.5, 2000.0, 2.5),
        (3, 4, 2500, 6.0, 2500 / 6, 2.0),
        (10, 10, 10_000, 4.0, 2500.0, 0.0),  # all done: nothing left
    ],
)
def test_rate_and_time_left(
    done: int, total: int, records: int, elapsed: float, rate: float | None, eta: float | None
) -> None:
    measured = report(done, total, records, elapsed)

    assert measured.records_per_s == (pytest.approx(rate) if rate is not None else None)
    assert measured.eta_s == (pytest.approx(eta) if eta is not None else None)
    assert (measured.chunks_done, measured.chunks_total, measured.records) == (
        done,
        total,
        records,
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0 s"),
        (0.2, "1 s"),
        (42.0, "42 s"),
        (59.5, "1 min 00 s"),  # rounded up, then carried
        (60.0, "1 min 00 s"),
        (185.0, "3 min 05 s"),
        (3599.0, "59 min 59 s"),
        (3600.0, "1 h 00 min"),
        (7620.0, "2 h 07 min"),
    ],
)
def test_durations_read_like_a_person_would_say_them(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_the_line_shows_chunks_rate_and_time_left() -> None:
    line = format_progress(report(3, 10, 3000, 2.0))

    assert line == "job j1: 3/10 chunks (30%), 3,000 records, 1,500 records/s, about 5 s left"


def test_the_line_says_estimating_before_the_first_chunk() -> None:
    line = format_progress(report(0, 8, 0, 0.0))

    assert line == "job j1: 0/8 chunks (0%), 0 records, - records/s, time left: estimating"


def test_a_training_task_counts_models_a_minute() -> None:
    # Given 12 of 50 models registered after 6 seconds
    report_ = measure_training("t1", done=12, total=50, elapsed=6.0)

    # Then the rate is 120 a minute and the rest (38 models) takes 19 s more
    assert report_.eta_s == pytest.approx(19.0)
    assert format_progress(report_) == (
        "training t1: 12/50 models (24%), 120 models/min, about 19 s left"
    )
    assert report_.to_dict()["unit"] == "models"


def test_a_terminal_gets_one_line_rewritten_in_place_and_wiped_at_the_end() -> None:
    # Given a terminal
    stream = Terminal()
    display = progress_display(stream, as_json=False)
    assert isinstance(display, TerminalProgress)

    # When two reports are shown, the second shorter, and the wait ends
    display.show(report(10, 100, 10_000, 1.0))
    display.show(report(1, 1, 1, 1.0))
    display.close()

    # Then each report rewrote the line (padded over the longer one), and nothing is left
    written = stream.getvalue()
    first, second, wipe, after = written.split("\r")[1:]
    assert first == format_progress(report(10, 100, 10_000, 1.0))
    assert second.rstrip() == format_progress(report(1, 1, 1, 1.0))
    assert len(second) == len(first)
    assert wipe == " " * len(first)
    assert after == ""
    assert "\n" not in written


def test_a_terminal_wins_over_json() -> None:
    assert isinstance(progress_display(Terminal(), as_json=True), TerminalProgress)


def test_a_pipe_shows_nothing_without_json() -> None:
    assert progress_display(io.StringIO(), as_json=False) is None


def test_a_pipe_with_json_gets_a_json_line_per_chunk_done() -> None:
    # Given a pipe and --json
    stream = io.StringIO()
    display = progress_display(stream, as_json=True)
    assert isinstance(display, JsonLinesProgress)

    # When the same count of chunks is reported twice, then a new one
    for done, elapsed in ((1, 1.0), (1, 1.5), (2, 2.0)):
        display.show(report(done, 4, done * 100, elapsed))
    display.close()

    # Then one complete JSON object a line, for each new count only
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["chunks_done"] for line in lines] == [1, 2]
    assert lines[1] == {
        "event": "progress",
        "job_id": "j1",
        "chunks_done": 2,
        "chunks_total": 4,
        "records": 200,
        "elapsed_s": 2.0,
        "records_per_s": 100.0,
        "eta_s": 2.0,
        "unit": "chunks",
    }
    assert stream.getvalue().endswith("\n")


class CountingSource:
    """A job's progress that counts how often it is read."""

    def __init__(self) -> None:
        self.reads = 0

    def job_progress(self, job_id: str) -> JobProgress | None:
        self.reads += 1
        return JobProgress(chunks_done=self.reads, chunks_total=10, records=100 * self.reads)


def test_without_a_display_no_progress_is_read() -> None:
    source = CountingSource()
    watch = ProgressWatch(source, "j1", display=None, started=0.0)

    for now in (0.0, 1.0, 2.0):
        watch.poll(now)
    watch.poll(3.0, final=True)
    watch.close()

    assert source.reads == 0


def test_progress_is_read_every_half_second_and_once_more_at_the_end() -> None:
    # Given a display through a pipe with --json
    source, stream = CountingSource(), io.StringIO()
    watch = ProgressWatch(source, "j1", display=JsonLinesProgress(stream), started=0.0)

    # When the job is polled every 0.1 s for 0.6 s, then ends
    for now in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6):
        watch.poll(now)
    watch.poll(0.65, final=True)

    # Then progress was read at 0, 0.5 and at the end, each read shown
    assert source.reads == 3
    shown = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(s["chunks_done"], s["elapsed_s"]) for s in shown] == [(1, 0.0), (2, 0.5), (3, 0.65)]


def test_json_lines_round_times_and_rates_to_the_millisecond() -> None:
    line = report(1, 3, 1000, 0.123456789).to_dict()

    assert (line["elapsed_s"], line["records_per_s"], line["eta_s"]) == (0.123, 8100.0, 0.247)
