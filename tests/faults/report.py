"""The figures ``make faults`` prints: one JSON object, one entry per scenario.

Scenario tests call :func:`record_scenario`; when ``PYNOMALY_FAULTS_REPORT`` names a file,
each entry is appended to it as a JSON line. ``python -m tests.faults.report FILE`` then
prints every entry as one JSON object (the last line of ``make faults``).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPORT_ENV = "PYNOMALY_FAULTS_REPORT"


@dataclass(frozen=True)
class ScenarioReport:
    """Jobs submitted and how each ended; seconds until the worker consumed again."""

    submitted: int
    succeeded: int
    failed_with_reason: int
    lost: int
    duplicated: int
    recovery_seconds: float | None
    extra: dict[str, Any] = field(default_factory=dict)


def record_scenario(name: str, report: ScenarioReport) -> None:
    """Append ``report`` under ``name`` to the report file, if one is set."""
    target = os.environ.get(REPORT_ENV)
    if not target:
        return
    with Path(target).open("a") as handle:
        handle.write(json.dumps({"scenario": name, **asdict(report)}) + "\n")


def summarise(path: Path) -> dict[str, Any]:
    """Every recorded scenario, keyed by name (a later entry of the same name wins)."""
    scenarios: dict[str, Any] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            scenarios[entry.pop("scenario")] = entry
    return {"scenarios": scenarios}


def main(argv: list[str]) -> int:
    """Print the summary of the report file named in ``argv``."""
    if len(argv) != 1:
        print("usage: python -m tests.faults.report REPORT_FILE", file=sys.stderr)
        return 2
    print(json.dumps(summarise(Path(argv[0])), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
