"""Resident memory of a process tree, sampled from /proc in a background thread."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
INTERVAL_S = 0.05


def children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process visible in /proc."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process exited while we looked
            continue
        # The command name is in parentheses and may contain spaces: split after it.
        fields = stat.rsplit(")", 1)[1].split()
        children[int(fields[1])].append(int(entry.name))
    return children


def tree(root: int) -> list[int]:
    """``root`` and all its descendants."""
    children = children_map()
    pids, pending = [], [root]
    while pending:
        pid = pending.pop()
        pids.append(pid)
        pending.extend(children.get(pid, []))
    return pids


def _field_kb(path: Path, name: str) -> int:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(name):
                return int(line.split()[1])
    except OSError:  # the process exited
        return 0
    return 0


def rss_kb(pid: int) -> int:
    """VmRSS of one process in kB (0 if it is gone)."""
    return _field_kb(PROC / str(pid) / "status", "VmRSS:")


def pss_kb(pid: int) -> int:
    """Proportional set size in kB: shared pages divided among the processes sharing
    them, so a prefork tree's PSS adds up without counting copy-on-write pages twice."""
    return _field_kb(PROC / str(pid) / "smaps_rollup", "Pss:")


@dataclass(slots=True)
class RssPeak:
    """The largest total and largest single-process RSS seen, in kB."""

    start_kb: int | None = None
    start_pss_kb: int | None = None
    total_kb: int = 0
    total_pss_kb: int = 0
    max_process_kb: int = 0
    processes: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self, root: int) -> None:
        """Take one sample of the tree under ``root``."""
        pids = tree(root)
        sizes = [rss_kb(pid) for pid in pids]
        self.samples += 1
        pss = sum(pss_kb(pid) for pid in pids)
        if self.start_kb is None:
            self.start_kb, self.start_pss_kb = sum(sizes), pss
        self.processes = max(self.processes, len(sizes))
        self.total_kb = max(self.total_kb, sum(sizes))
        self.total_pss_kb = max(self.total_pss_kb, pss)
        self.max_process_kb = max(self.max_process_kb, max(sizes, default=0))

    def report(self) -> dict[str, float | int]:
        """Peaks in MB, for the JSON."""
        return {
            "worker_peak_rss_mb": round(self.total_kb / 1024, 1),
            "worker_rss_before_job_mb": round((self.start_kb or 0) / 1024, 1),
            "worker_peak_pss_mb": round(self.total_pss_kb / 1024, 1),
            "worker_pss_before_job_mb": round((self.start_pss_kb or 0) / 1024, 1),
            "max_process_rss_mb": round(self.max_process_kb / 1024, 1),
            "processes": self.processes,
            "samples": self.samples,
            "interval_ms": INTERVAL_S * 1000,
        }


@contextmanager
def sampling_rss(root: int) -> Iterator[RssPeak]:
    """Sample the tree under ``root`` every 50 ms until the block ends."""
    peak = RssPeak()
    peak.sample(root)

    def loop() -> None:
        while not peak._stop.wait(INTERVAL_S):
            peak.sample(root)

    thread = threading.Thread(target=loop, name="rss-sampler", daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        peak._stop.set()
        thread.join()
        peak.sample(root)
