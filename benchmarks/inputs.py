"""The files and records the measurements read, prepared once per run."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from benchmarks.config import RESULTS, Sizes
from benchmarks.data import as_records, cached_readings_csv, cached_training_csv, readings
from benchmarks.small_jobs import SmallJobRows

WARMUP_JOBS = 16  # one-record jobs per model, so every worker process has it loaded
NAIVE_WARMUP = 32  # records the baseline scores before it is timed


@dataclass(frozen=True, slots=True)
class Inputs:
    """CSV files for ``source`` jobs and training; disjoint record sets for the
    one-record jobs, so no timed job is served by a cache entry an earlier one left."""

    bulk_csv: Path
    training_csv: Path
    cache_csv: Path
    warmup: list[list[float]]
    small_jobs: SmallJobRows
    naive: list[list[float]]
    naive_warmup: list[list[float]]


def prepare_inputs(sizes: Sizes) -> Inputs:
    """Generate (or reuse) the CSV files and cut the record sets."""
    folder = RESULTS / "data"
    fraction, width = sizes.anomaly_fraction, sizes.n_features
    paced = int(sizes.small_rate * sizes.small_seconds)
    counts = (WARMUP_JOBS, paced, sizes.small_jobs, sizes.naive_records, NAIVE_WARMUP)
    cuts = list(itertools.accumulate(counts))
    records = as_records(
        readings(cuts[-1], n_features=width, seed=31, anomaly_fraction=fraction).matrix
    )
    part = [records[start:stop] for start, stop in itertools.pairwise(cuts)]
    return Inputs(
        bulk_csv=cached_readings_csv(
            folder, sizes.bulk_rows, n_features=width, seed=13, anomaly_fraction=fraction
        ),
        training_csv=cached_training_csv(folder, sizes.train_rows, n_features=width, seed=11),
        cache_csv=cached_readings_csv(
            folder, sizes.cache_rows, n_features=width, seed=41, anomaly_fraction=fraction
        ),
        warmup=records[: cuts[0]],
        small_jobs=SmallJobRows(latency=part[0], burst=part[1]),
        naive=part[2],
        naive_warmup=part[3],
    )
