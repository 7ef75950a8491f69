"""Drift monitoring through real workers: the workers count what they score, and the
check names a feature shifted by one standard deviation, and nothing on unshifted data."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from celery import Celery

from pynomaly_workers.client import submit_detection
from pynomaly_workers.demo import WorkerProcess
from pynomaly_workers.services.context import Adapters
from tests.e2e.test_cli import cli
from tests.e2e.test_worker import wait_job
from tests.factories import train

pytestmark = pytest.mark.e2e
WIDTH = 4


@pytest.fixture(scope="module")
def e2e_env(e2e_env: dict[str, str]) -> dict[str, str]:
    """Workers that store their drift counts after every batch."""
    return {**e2e_env, "PYNOMALY_DRIFT_FLUSH_SECONDS": "0"}


def score(app: Celery, adapters: Adapters, model: str, rows: np.ndarray) -> None:
    """Send ``rows`` in jobs of 500 and wait for all of them."""
    jobs = [
        submit_detection(
            model=model,
            records=rows[i : i + 500].tolist(),
            job_id=f"drift-{uuid.uuid4().hex}",
            app=app,
        ).job_id
        for i in range(0, len(rows), 500)
    ]
    for job_id in jobs:
        assert wait_job(adapters, job_id).status == "succeeded"


def drift_of(env: dict[str, str], model: str) -> dict[str, object]:
    done = cli(env, "drift", "--model", model, "--json", check=False)
    assert done.returncode in (0, 3), done.stderr
    (report,) = json.loads(done.stdout)
    assert (done.returncode == 3) is report["drifted"]
    return dict(report)


def test_the_check_flags_a_shifted_feature_and_nothing_else(
    worker: WorkerProcess, e2e_app: Celery, e2e_adapters: Adapters, e2e_env: dict[str, str]
) -> None:
    # Given two models trained on the same standard-normal data
    for name in ("steady", "shifted"):
        train(
            e2e_adapters,
            model=name,
            records=np.random.default_rng(0).normal(size=(4000, WIDTH)).tolist(),
        )
    rng = np.random.default_rng(11)

    # When the workers score unshifted data with one, and data with feature 2 moved by
    # one standard deviation with the other
    score(e2e_app, e2e_adapters, "steady", rng.normal(size=(3000, WIDTH)))
    moved = rng.normal(size=(3000, WIDTH))
    moved[:, 2] += 1.0
    score(e2e_app, e2e_adapters, "shifted", moved)

    # Then the check says the first has not drifted and names feature 2 of the second
    steady = drift_of(e2e_env, "steady")
    assert steady["drifted"] is False
    assert steady["n_records"] == 3000
    shifted = drift_of(e2e_env, "shifted")
    features = shifted["features"]
    assert isinstance(features, list)
    assert [f["feature"] for f in features if f["drifted"]] == [2]
    assert shifted["drifted"] is True
