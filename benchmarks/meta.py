"""What a result was measured on: machine, versions, code revision, sizes."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import asdict
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.config import ROOT, Sizes

PACKAGES = (
    "celery",
    "kombu",
    "redis",
    "sqlalchemy",
    "psycopg",
    "numpy",
    "scikit-learn",
    "onnxruntime",
    "pyarrow",
)


def package_versions() -> dict[str, str]:
    """Installed versions of the libraries on the measured paths."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_revision() -> dict[str, Any]:
    """The commit measured (of the checkout the workers' package is imported from, which
    a run from another worktree does not share), whether its runtime folders had
    uncommitted changes, and the commit of the benchmarks themselves."""

    def git(*args: str, cwd: Path) -> str:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    code = Path(measured_code())
    runtime = (":/workers", ":/tasks", ":/migrations")  # from the top of that checkout
    changed = git("status", "--porcelain", "--", *runtime, cwd=code).splitlines()
    return {
        "commit": git("rev-parse", "HEAD", cwd=code) or None,
        "uncommitted_runtime_files": len(changed),
        "benchmarks_commit": git("rev-parse", "HEAD", cwd=ROOT) or None,
    }


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: other work on the machine shows up here."""
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def measured_code() -> str:
    """Where the ``pynomaly_workers`` package the workers import lives."""
    import pynomaly_workers

    return str(Path(pynomaly_workers.__file__).resolve().parent)


def cpu_count() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def describe_run(
    sizes: Sizes, *, started_at: datetime, seconds: float, load_at_start: list[float]
) -> dict[str, Any]:
    """The ``meta`` section."""
    return {
        "quick": sizes.quick,
        "cpu_count": cpu_count(),
        "machine": platform.machine(),
        "versions": package_versions(),
        "git": git_revision(),
        "code": measured_code(),
        "load_average_start": load_at_start,
        "load_average_end": load_average(),
        "started_at": started_at.isoformat(),
        "wall_s": round(seconds, 1),
        "sizes": asdict(sizes),
    }
