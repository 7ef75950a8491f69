"""``python -m benchmarks [--quick] [--json] [--output FILE] [--only SECTION]``."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from benchmarks.config import (
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_URL,
    SECTIONS,
    Endpoints,
    sizes_for,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, under two minutes")
    parser.add_argument("--json", action="store_true", help="one JSON line as the last output")
    parser.add_argument("--output", type=Path, help="also write the JSON to this file")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL, help="PostgreSQL database")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="Redis server (DBs 8-11)")
    parser.add_argument("--only", choices=SECTIONS, help="run this section alone")
    return parser.parse_args(argv)


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # Turn SIGTERM into an exception so every finally block runs: workers are stopped
    # and the schema is dropped even when the run is killed.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run the suite; exit 1 if a section failed (its error is in the JSON)."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    from benchmarks.report import emit
    from benchmarks.runner import run_benchmarks

    endpoints = Endpoints(database_url=args.database_url, redis_url=args.redis_url)
    result = run_benchmarks(sizes_for(quick=args.quick), endpoints, only=args.only)
    emit(result, as_json=args.json, output=args.output, out=sys.stdout)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
