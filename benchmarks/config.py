"""Sizes of each measurement, and where the services are."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379"

# Redis databases owned by the suite; each is flushed at the start and at the end.
BROKER_DB, RESULTS_DB, CACHE_DB, NAIVE_DB = 8, 9, 10, 11
REDIS_DBS = (BROKER_DB, RESULTS_DB, CACHE_DB, NAIVE_DB)

SECTIONS = (
    "mixed",
    "many_models",
    "job_log",
    "broker_fsync",
    "incidents",
    "evaluate",
    "suppression",
)
"""What ``--only`` can run alone (the data and services it needs come with it)."""

IFOREST_MODEL = "bench-iforest"
LOF_MODEL = "bench-lof"
MIXED_MODEL = "bench-mixed-iforest"  # 8 features, for the mixed section
MANY_MODELS_PREFIX = "bench-many-"  # the many_models section's models, one per pynomaly.train
MANY_BATCHED_PREFIX = "bench-batched-"  # the same models trained through pynomaly.train_many
CONTAMINATION = 0.01


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Base URLs of the PostgreSQL database and the Redis server the suite uses."""

    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL

    def redis_db(self, db: int) -> str:
        """The URL of one numbered Redis database."""
        return f"{self.redis_url.rstrip('/')}/{db}"


@dataclass(frozen=True, slots=True)
class MixedSizes:
    """The mixed section: one-record jobs beside large ``source`` jobs on one worker."""

    bulk_rows: int
    late_big_rows: int
    late_small_rows: int
    small_seconds: float
    wait_s: float
    """The longest any wait of the section lasts: the large jobs take tens of seconds."""
    bulk_jobs: int = 3
    small_rate: int = 50
    small_delay_s: float = 1.0
    late_delay_s: float = 1.0
    n_features: int = 8


@dataclass(frozen=True, slots=True)
class ManyModelsSizes:
    """The many_models section: many small models trained and served by one worker."""

    models: int
    train_cap_s: float
    """The longest the section waits for a training path's models to be registered."""
    seconds: float
    """How long each paced one-record traffic lasts."""
    wait_s: float
    """The longest a wait for one-record results lasts."""
    rows_per_model: int = 1_000
    n_features: int = 8
    batch_models: int = 50
    """Models per ``pynomaly.train_many`` message."""
    rate: int = 150
    zipf_exponent: float = 1.1
    cold_loads: int = 40
    cold_gap_s: float = 0.25
    """The pause between one cold-load job's result and the next job."""
    full_models: int = 1_000
    """The full run's model count, for the projected time of the quick run's rate."""
    seed: int = 53


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much work each measurement does."""

    quick: bool
    bulk_rows: int
    inference_rows: int
    small_seconds: float
    small_jobs: int
    naive_records: int
    cache_rows: int
    wait_s: float
    mixed: MixedSizes
    many_models: ManyModelsSizes
    n_features: int = 16
    train_rows: int = 20_000
    single_row_calls: int = 200
    small_rate: int = 200
    overhead_runs: int = 3
    anomaly_fraction: float = 0.01
    worker_concurrency: int = 0
    """0: the worker's own default pool size (the CLI is given no ``--concurrency``)."""
    batch_repeats: int = 3
    parity_rows: int = 10_000

    def patience(self, natural: float) -> float:
        """How long to wait for something that should take ``natural`` seconds: never
        more than ``wait_s``, so a broken path cannot stall the run."""
        return min(max(natural, 10.0), self.wait_s)


def sizes_for(*, quick: bool) -> Sizes:
    """The full run, or the quick one that finishes in under two minutes."""
    if quick:
        return Sizes(
            quick=True,
            bulk_rows=200_000,
            inference_rows=100_000,
            small_seconds=5.0,
            small_jobs=1_500,
            naive_records=1_500,
            cache_rows=20_000,
            wait_s=10.0,
            batch_repeats=2,
            mixed=MixedSizes(
                bulk_rows=200_000,
                late_big_rows=1_000_000,
                late_small_rows=50_000,
                small_seconds=4.0,
                wait_s=60.0,
            ),
            many_models=ManyModelsSizes(models=100, train_cap_s=120.0, seconds=6.0, wait_s=30.0),
        )
    return Sizes(
        quick=False,
        bulk_rows=1_000_000,
        inference_rows=200_000,
        small_seconds=20.0,
        small_jobs=5_000,
        naive_records=5_000,
        cache_rows=50_000,
        wait_s=300.0,
        mixed=MixedSizes(
            bulk_rows=1_000_000,
            late_big_rows=3_000_000,
            late_small_rows=100_000,
            small_seconds=8.0,
            wait_s=300.0,
        ),
        # The cap is the issue's own bound: 1,000 models in 10 minutes.
        many_models=ManyModelsSizes(models=1_000, train_cap_s=600.0, seconds=12.0, wait_s=60.0),
    )
