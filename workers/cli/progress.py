"""How far a fanned-out detection job has got while ``detect --wait`` waits for it.

On a terminal (stderr) one line, rewritten in place: chunks done of total, records per
second and the time left. Through a pipe nothing, or with ``--json`` one JSON object a
line, so that what a script reads on stdout is the same as without the display.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol, TextIO

if TYPE_CHECKING:
    from pynomaly_workers.domain.ports import JobProgress


@dataclass(frozen=True, slots=True)
class ProgressReport:
    """A job's progress at one moment, as the display shows it."""

    job_id: str
    chunks_done: int
    chunks_total: int
    records: int
    elapsed_s: float
    records_per_s: float | None
    """None until time has passed."""
    eta_s: float | None
    """Seconds left at the rate chunks finished so far; None before the first one."""
    unit: str = "chunks"
    """What is counted: a fanned-out job's ``chunks``, or a training task's ``models``."""

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON object (``event`` tells it from the job summary); times
        and rates to the millisecond."""
        fields = {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}
        return {"event": "progress", **fields}


def measure_progress(job_id: str, progress: JobProgress, *, elapsed: float) -> ProgressReport:
    """The rate and the time left of ``progress``, ``elapsed`` seconds into the wait."""
    done, total = progress.chunks_done, progress.chunks_total
    rate = progress.records / elapsed if elapsed > 0 else None
    eta = elapsed * (total - done) / done if done > 0 else None
    return ProgressReport(
        job_id=job_id,
        chunks_done=done,
        chunks_total=total,
        records=progress.records,
        elapsed_s=elapsed,
        records_per_s=rate,
        eta_s=max(eta, 0.0) if eta is not None else None,
    )


def measure_training(task_id: str, *, done: int, total: int, elapsed: float) -> ProgressReport:
    """A ``train-many`` task's models registered so far, their rate and the time left."""
    rate = done / elapsed if elapsed > 0 else None
    eta = elapsed * (total - done) / done if done > 0 else None
    return ProgressReport(
        job_id=task_id,
        chunks_done=done,
        chunks_total=total,
        records=0,
        elapsed_s=elapsed,
        records_per_s=rate,
        eta_s=max(eta, 0.0) if eta is not None else None,
        unit="models",
    )


def format_progress(report: ProgressReport) -> str:
    """One line for people, e.g. ``job j1: 3/10 chunks (30%), 3,000 records, 1,500
    records/s, about 5 s left``."""
    percent = 100 * report.chunks_done // report.chunks_total if report.chunks_total else 0
    rate = "-" if report.records_per_s is None else f"{report.records_per_s:,.0f}"
    if report.eta_s is None:
        left = "time left: estimating"
    else:
        left = f"about {format_duration(report.eta_s)} left"
    if report.unit == "models":
        per_min = "-" if report.records_per_s is None else f"{60 * report.records_per_s:,.0f}"
        return (
            f"training {report.job_id}: {report.chunks_done}/{report.chunks_total} models "
            f"({percent}%), {per_min} models/min, {left}"
        )
    return (
        f"job {report.job_id}: {report.chunks_done}/{report.chunks_total} chunks "
        f"({percent}%), {report.records:,} records, {rate} records/s, {left}"
    )


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``: rounded up to the second."""
    whole = int(-(-seconds // 1))
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ProgressDisplay(Protocol):
    """Where progress reports go while a command waits."""

    def show(self, report: ProgressReport) -> None:
        """Show the latest report."""

    def close(self) -> None:
        """The wait is over: leave the stream as a later output expects it."""


class TerminalProgress:
    """One line on a terminal, rewritten in place (``\\r``) and wiped at the end, so
    what follows starts on a clean line."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.width = 0

    def show(self, report: ProgressReport) -> None:
        line = format_progress(report)
        self.stream.write("\r" + line.ljust(self.width))
        self.stream.flush()
        self.width = max(self.width, len(line))

    def close(self) -> None:
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


class JsonLinesProgress:
    """One JSON object a line, each time another chunk is done (and the first)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.last_done: int | None = None

    def show(self, report: ProgressReport) -> None:
        if report.chunks_done == self.last_done:
            return
        self.last_done = report.chunks_done
        self.stream.write(json.dumps(report.to_dict()) + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Nothing to undo: every line is complete."""


def progress_display(stream: TextIO, *, as_json: bool) -> ProgressDisplay | None:
    """The display for ``stream``: a live line on a terminal, JSON lines through a pipe
    with ``--json``, and None (no display, and no progress queries) otherwise."""
    if stream.isatty():
        return TerminalProgress(stream)
    if as_json:
        return JsonLinesProgress(stream)
    return None
