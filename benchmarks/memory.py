"""Resident memory of a process tree, sampled from /proc in a background thread.

Sampling must not slow what it measures. Reading ``smaps_rollup`` (for PSS) walks the
process's page tables: about 5 ms of kernel time for a 650 MB process, holding its
memory-map lock, so page faults in the job wait meanwhile; a full /proc scan for the
tree took 3 ms more. Every 50 ms for three worker processes, that was a fifth of a core
and stalls inside the bulk job. So the tree comes from the ``children`` files of its
processes, RSS from ``statm`` (microseconds), and PSS is read at the start, the end,
and whenever the summed RSS reaches a new peak (at most every 100 ms): PSS is RSS less
the shared pages' other shares, which do not move during a job, so its peak is where
RSS peaks.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
INTERVAL_S = 0.05
PSS_INTERVAL_S = 0.1
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


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
    scanned = None
    if not (PROC / str(root) / "task" / str(root) / "children").exists():
        scanned = children_map()  # a kernel without the children files: scan /proc
    pids, pending = [], [root]
    while pending:
        pid = pending.pop()
        pids.append(pid)
        pending.extend(scanned.get(pid, []) if scanned is not None else _children(pid))
    return pids


def _children(pid: int) -> list[int]:
    """Direct children of ``pid``, from each of its threads' ``children`` file."""
    found: list[int] = []
    try:
        for task in (PROC / str(pid) / "task").iterdir():
            found.extend(int(child) for child in (task / "children").read_text().split())
    except OSError:  # the process (or a thread) exited while we looked
        pass
    return found


def _field_kb(path: Path, name: str) -> int:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(name):
                return int(line.split()[1])
    except OSError:  # the process exited
        return 0
    return 0


def rss_kb(pid: int) -> int:
    """Resident set size of one process in kB, VmRSS (0 if it is gone)."""
    try:
        return int((PROC / str(pid) / "statm").read_text().split()[1]) * _PAGE_KB
    except (OSError, IndexError, ValueError):
        return 0


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

    pss_samples: int = 0
    _pss_at: float = 0.0

    def sample(self, root: int, *, pss: bool = False) -> None:
        """Take one sample of the tree under ``root``; PSS too if ``pss``, or if the
        summed RSS is at a new peak and PSS was not read in the last 100 ms."""
        pids = tree(root)
        sizes = [rss_kb(pid) for pid in pids]
        total = sum(sizes)
        self.samples += 1
        now = time.monotonic()
        if pss or (total >= self.total_kb and now - self._pss_at >= PSS_INTERVAL_S):
            proportional = sum(pss_kb(pid) for pid in pids)
            self.pss_samples += 1
            self._pss_at = now
            if self.start_pss_kb is None:
                self.start_pss_kb = proportional
            self.total_pss_kb = max(self.total_pss_kb, proportional)
        if self.start_kb is None:
            self.start_kb = total
        self.processes = max(self.processes, len(sizes))
        self.total_kb = max(self.total_kb, total)
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
            "pss_samples": self.pss_samples,
            "interval_ms": INTERVAL_S * 1000,
        }


@contextmanager
def sampling_rss(root: int) -> Iterator[RssPeak]:
    """Sample the tree under ``root`` every 50 ms until the block ends."""
    peak = RssPeak()
    peak.sample(root, pss=True)

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
        peak.sample(root, pss=True)


def tree_memory(root: int) -> dict[str, float | int]:
    """The tree under ``root`` now: summed PSS and RSS in MB, and how many processes."""
    now = RssPeak()
    now.sample(root, pss=True)
    return {
        "pss_mb": round(now.total_pss_kb / 1024, 1),
        "rss_mb": round(now.total_kb / 1024, 1),
        "processes": now.processes,
    }
