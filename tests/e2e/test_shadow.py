"""Shadow scoring through a real worker: jobs to NAME@champion also feed the challenger,
whose comparison the CLI shows; the job's result stays the champion's."""

from __future__ import annotations

import uuid

import pytest
from celery import Celery

from pynomaly_workers.client import submit_detection
from pynomaly_workers.demo import WorkerProcess
from pynomaly_workers.domain.shadow import shadow_sample
from pynomaly_workers.services.context import Adapters
from tests.e2e.test_cli import cli, cli_json
from tests.factories import rows_with_outliers, train

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def e2e_env(e2e_env: dict[str, str]) -> dict[str, str]:
    return {**e2e_env, "PYNOMALY_SHADOW_FRACTION": "0.25"}


def test_a_challenger_shadows_the_champions_jobs(
    worker: WorkerProcess, e2e_app: Celery, e2e_adapters: Adapters, e2e_env: dict[str, str]
) -> None:
    # Given a champion and a challenger
    train(e2e_adapters, model="duel")
    train(e2e_adapters, model="duel", algorithm="elliptic")
    cli_json(e2e_env, "models", "alias", "duel", "champion", "1")
    cli_json(e2e_env, "models", "alias", "duel", "challenger", "2")
    assert cli(e2e_env, "models", "compare", "duel", check=False).returncode == 1

    # When jobs are sent to the champion
    job_ids = [f"duel-{uuid.uuid4().hex}" for _ in range(4)]
    results = [
        submit_detection(model="duel@champion", records=rows_with_outliers(), job_id=j, app=e2e_app)
        for j in job_ids
    ]
    summaries = [e2e_app.AsyncResult(r.task_id).get(timeout=60) for r in results]

    # Then the results are the champion's, and the challenger scored exactly the sample
    assert {s["model_version"] for s in summaries} == {1}
    (comparison,) = cli_json(e2e_env, "models", "compare", "duel")
    expected = sum(len(shadow_sample(j, 0, 200, fraction=0.25)) for j in job_ids)
    assert (comparison["champion_version"], comparison["challenger_version"]) == (1, 2)
    assert comparison["n_records"] == expected
    assert 0 <= comparison["agreement"] <= 1
