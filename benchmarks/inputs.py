"""The files and records the measurements read, prepared once per run."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from benchmarks.config import RESULTS, Sizes
from benchmarks.data import (
    as_records,
    cached_readings_csv,
    cached_training_csv,
    normal_rows,
    readings,
)
from benchmarks.small_jobs import SmallJobRows

WARMUP_JOBS = 16  # one-record jobs per model, so every worker process has it loaded
NAIVE_WARMUP = 32  # records the baseline scores before it is timed
MANY_TRAINING_SEED = 100_000  # + the model's number; far from every other draw's seed


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


@dataclass(frozen=True, slots=True)
class MixedInputs:
    """The mixed section's files (8 features; one file per bulk job, so no job is served
    scores another stored in the prediction cache) and disjoint one-record sets for the
    small traffic alone and beside the bulk jobs."""

    training_csv: Path
    warm_csv: Path
    bulk_csvs: list[Path]
    late_big_csv: Path
    late_small_csv: Path
    warmup: list[list[float]]
    small_alone: list[list[float]]
    small_mixed: list[list[float]]


MIXED_WARM_ROWS = 200_000  # two chunks: the untimed job that warms the fan-out path


def prepare_mixed_inputs(sizes: Sizes) -> MixedInputs:
    """Generate (or reuse) the mixed section's CSV files and cut its record sets."""
    folder, mixed, fraction = RESULTS / "data", sizes.mixed, sizes.anomaly_fraction
    width = mixed.n_features
    paced = int(mixed.small_rate * mixed.small_seconds)
    cuts = list(itertools.accumulate((WARMUP_JOBS, paced, paced)))
    records = as_records(
        readings(cuts[-1], n_features=width, seed=37, anomaly_fraction=fraction).matrix
    )

    def csv(rows: int, seed: int) -> Path:
        return cached_readings_csv(
            folder, rows, n_features=width, seed=seed, anomaly_fraction=fraction
        )

    return MixedInputs(
        training_csv=cached_training_csv(folder, sizes.train_rows, n_features=width, seed=11),
        warm_csv=csv(MIXED_WARM_ROWS, 23),
        bulk_csvs=[csv(mixed.bulk_rows, 13 + i) for i in range(mixed.bulk_jobs)],
        late_big_csv=csv(mixed.late_big_rows, 17),
        late_small_csv=csv(mixed.late_small_rows, 19),
        warmup=records[: cuts[0]],
        small_alone=records[cuts[0] : cuts[1]],
        small_mixed=records[cuts[1] : cuts[2]],
    )


@dataclass(frozen=True, slots=True)
class ManyModelsInputs:
    """The many_models section's one-record sets (8 features), disjoint so no job is
    served a score an earlier one left in the prediction cache. Each model's training
    rows are generated when its message is sent (:func:`training_rows`)."""

    warmup: list[list[float]]
    one_model: list[list[float]]
    zipf: list[list[float]]
    cold: list[list[float]]


def prepare_many_models_inputs(sizes: Sizes) -> ManyModelsInputs:
    """Cut the section's record sets from one seeded draw."""
    many = sizes.many_models
    paced = int(many.rate * many.seconds)
    cuts = list(itertools.accumulate((WARMUP_JOBS, paced, paced, many.cold_loads)))
    records = as_records(
        readings(
            cuts[-1],
            n_features=many.n_features,
            seed=many.seed,
            anomaly_fraction=sizes.anomaly_fraction,
        ).matrix
    )
    return ManyModelsInputs(
        warmup=records[: cuts[0]],
        one_model=records[cuts[0] : cuts[1]],
        zipf=records[cuts[1] : cuts[2]],
        cold=records[cuts[2] : cuts[3]],
    )


def training_rows(model: int, *, sizes: Sizes) -> list[list[float]]:
    """The normal rows model number ``model`` of the many_models section is trained on
    (its own seed: every model learns other data)."""
    many = sizes.many_models
    seed = MANY_TRAINING_SEED + model
    return as_records(normal_rows(many.rows_per_model, n_features=many.n_features, seed=seed))
