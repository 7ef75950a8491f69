"""Shadow scoring through the services and a real store: a sample of a champion's
records is scored by the challenger, kept apart, compared, and written once."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from pynomaly_workers.bootstrap import bootstrap
from pynomaly_workers.domain.shadow import ShadowTally, shadow_sample
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.services.detection import run_detection
from pynomaly_workers.settings import Settings
from tests.factories import engine_of, rows_with_outliers, train, write_csv

pytestmark = pytest.mark.integration


@pytest.fixture
def adapters(store_url: str, make_settings: Callable[..., Settings]) -> Iterator[Adapters]:
    built = bootstrap(make_settings(database_url=store_url, shadow_fraction=0.5))
    train(built, model="m")
    train(built, model="m", algorithm="elliptic")
    built.store.set_alias("m", "champion", 1, now=built.clock.now())
    built.store.set_alias("m", "challenger", 2, now=built.clock.now())
    yield built
    built.close()


def shadow_rows(adapters: Adapters) -> int:
    from sqlalchemy import text

    with engine_of(adapters).connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM shadow_anomalies")).scalar_one())


def test_the_challenger_scores_a_sample_of_the_champions_records(adapters: Adapters) -> None:
    rows = rows_with_outliers(n=400, outliers=(3, 50, 120, 300))

    summary = run_detection(adapters, {"model": "m@champion", "records": rows}, default_job_id="j1")

    # the job is the champion's
    assert summary.model_version == 1
    (comparison,) = adapters.store.shadow_comparison("m")
    sample = shadow_sample("j1", 0, 400, fraction=0.5)
    assert (comparison["champion_version"], comparison["challenger_version"]) == (1, 2)
    assert comparison["n_records"] == len(sample)
    assert 150 < len(sample) < 250
    # the far outliers in the sample are flagged by both models
    planted = {3, 50, 120, 300} & set(sample.tolist())
    assert comparison["both_flags"] >= len(planted)
    assert comparison["score_correlation"] > 0.5
    assert shadow_rows(adapters) == comparison["challenger_flags"]


def test_a_redelivered_job_shadows_once(adapters: Adapters) -> None:
    rows = rows_with_outliers(n=200)
    for _ in range(2):
        run_detection(adapters, {"model": "m@champion", "records": rows}, default_job_id="j2")

    (comparison,) = adapters.store.shadow_comparison("m")
    assert comparison["n_records"] == len(shadow_sample("j2", 0, 200, fraction=0.5))


def test_fanned_out_and_in_process_jobs_are_shadowed_per_chunk(
    adapters: Adapters, tmp_path: Path
) -> None:
    path = str(write_csv(tmp_path / "s.csv", rows_with_outliers(n=900), ids=True))
    chunked = dataclasses.replace(
        adapters, settings=adapters.settings.model_copy(update={"chunk_rows": 300})
    )

    run_detection(chunked, {"model": "m@champion", "source": path}, default_job_id="fan")

    (comparison,) = adapters.store.shadow_comparison("m")
    expected = sum(len(shadow_sample("fan", o, 300, fraction=0.5)) for o in (0, 300, 600))
    assert comparison["n_records"] == expected


def test_jobs_to_other_references_are_not_shadowed(adapters: Adapters) -> None:
    run_detection(adapters, {"model": "m@1", "records": rows_with_outliers()}, default_job_id="a")
    run_detection(adapters, {"model": "m", "records": rows_with_outliers()}, default_job_id="b")

    assert adapters.store.shadow_comparison("m") == []


def test_the_comparison_arithmetic() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0])
    tally = ShadowTally.of(
        x,
        2 * x,
        champion_flags=np.array([False, False, True, True]),
        challenger_flags=np.array([False, True, True, False]),
    )
    found = tally.comparison()
    assert (found["both_flags"], found["agreement"], found["jaccard"]) == (1, 0.5, 1 / 3)
    assert found["score_correlation"] == pytest.approx(1.0)


def test_the_sample_is_the_same_every_time_and_near_the_fraction() -> None:
    first = shadow_sample("job", 0, 10_000, fraction=0.1)
    assert np.array_equal(first, shadow_sample("job", 0, 10_000, fraction=0.1))
    assert 900 < len(first) < 1100
    assert shadow_sample("job", 0, 100, fraction=0.0).size == 0
