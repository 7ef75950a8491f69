"""Thresholds by intent through a real worker: a projection made with ``--dry-run`` from
the counts the worker kept matches, within 5%, the anomalies the worker stores when the
same traffic is replayed after the threshold is applied; the change reaches the worker
within the model-reference TTL, for jobs naming the exact version, and so does a
rollback."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid

import numpy as np
import pytest
from celery import Celery
from sqlalchemy import text

from pynomaly_workers.client import submit_detection
from pynomaly_workers.demo import WorkerProcess
from pynomaly_workers.services.context import Adapters
from tests.e2e.test_cli import cli, cli_json
from tests.e2e.test_worker import wait_job
from tests.factories import engine_of, train

pytestmark = pytest.mark.e2e
TTL_S = 1.0  # PYNOMALY_MODEL_REF_TTL_SECONDS default, which the e2e worker runs with
WIDTH = 4
MODEL = "meter@1"


@pytest.fixture(scope="module")
def e2e_env(e2e_env: dict[str, str]) -> dict[str, str]:
    """Workers that store their score counts after every batch, in daily windows (so the
    test's traffic falls in one window unless it runs across midnight UTC)."""
    return {
        **e2e_env,
        "PYNOMALY_DRIFT_FLUSH_SECONDS": "0",
        "PYNOMALY_DRIFT_WINDOW_SECONDS": "86400",
    }


def traffic(n: int = 6000, seed: int = 21) -> list[list[float]]:
    """Standard-normal records, a tenth of them spread 2.5 times wider."""
    rows = np.random.default_rng(seed).normal(size=(n, WIDTH))
    rows[rng_indices(n, seed)] *= 2.5
    return rows.round(6).tolist()  # type: ignore[no-any-return]


def rng_indices(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed + 1).choice(n, size=n // 10, replace=False)


def send(app: Celery, adapters: Adapters, rows: list[list[float]], tag: str) -> list[str]:
    """``rows`` to the exact version in jobs of 500; the job ids, all finished."""
    jobs = [
        submit_detection(
            model=MODEL, records=rows[i : i + 500], job_id=f"{tag}-{uuid.uuid4().hex}", app=app
        ).job_id
        for i in range(0, len(rows), 500)
    ]
    for job_id in jobs:
        assert wait_job(adapters, job_id).status == "succeeded"
    return jobs


def stored(adapters: Adapters, jobs: list[str]) -> int:
    """Anomaly rows the worker stored for these jobs."""
    with engine_of(adapters).connect() as conn:
        query = text("SELECT count(*) FROM anomalies WHERE job_id = ANY(:jobs)")
        return int(conn.execute(query, {"jobs": jobs}).scalar_one())


def threshold_used(app: Celery) -> float:
    """Send one record to the exact version; the threshold its summary reports."""
    sent = submit_detection(
        model=MODEL, records=[[0.0] * WIDTH], job_id=f"probe-{uuid.uuid4().hex}", app=app
    )
    return float(app.AsyncResult(sent.task_id).get(timeout=60)["threshold"])


def seconds_until(app: Celery, threshold: float, *, timeout: float = 30) -> float:
    started = time.monotonic()
    while threshold_used(app) != pytest.approx(threshold, rel=1e-12):
        assert time.monotonic() - started < timeout, f"{MODEL} never used {threshold}"
    return time.monotonic() - started


def test_a_projected_threshold_raises_what_it_projected_when_the_traffic_is_replayed(
    worker: WorkerProcess, e2e_app: Celery, e2e_adapters: Adapters, e2e_env: dict[str, str]
) -> None:
    # Given a version that scored some traffic through the worker
    trained = train(
        e2e_adapters,
        model="meter",
        records=np.random.default_rng(0).normal(size=(4000, WIDTH)).tolist(),
    )
    rows = traffic()
    first = stored(e2e_adapters, send(e2e_app, e2e_adapters, rows, "first"))
    assert threshold_used(e2e_app) == pytest.approx(trained.threshold)

    # When a dry run projects a threshold for a third of those alerts a day
    now = cli_json(e2e_env, "models", "threshold", MODEL, "--alerts-per-day", "0", "--dry-run")
    observed = now["projection"]["days_observed"]
    target = first / 3 / observed
    plan = cli_json(
        e2e_env, "models", "threshold", MODEL, "--alerts-per-day", str(target), "--dry-run"
    )
    projected = plan["projection"]["alerts"]
    assert plan["applied"] is False
    assert threshold_used(e2e_app) == pytest.approx(trained.threshold)  # dry run: no change

    # And it is applied
    applied = cli_json(
        e2e_env,
        "models",
        "threshold",
        MODEL,
        "--alerts-per-day",
        str(target),
        "--reason",
        "a third of the pages",
        "--by",
        "ana",
    )
    assert applied["threshold"] == plan["threshold"]
    reached = seconds_until(e2e_app, plan["threshold"])

    # Then the worker uses it within the reference TTL, and replaying the same traffic
    # stores what the dry run projected, within 5%
    replayed = stored(e2e_adapters, send(e2e_app, e2e_adapters, rows, "replay"))
    error = abs(replayed - projected) / projected
    print(
        json.dumps(
            {
                "first_pass_anomalies": first,
                "target_alerts_per_day": target,
                "days_observed": observed,
                "projected_alerts": projected,
                "projected_alerts_per_day": plan["projection"]["alerts_per_day"],
                "replayed_anomalies": replayed,
                "relative_error": error,
                "threshold": [trained.threshold, plan["threshold"]],
                "seconds_until_used": reached,
            }
        )
    )
    assert reached <= TTL_S + 5
    assert error <= 0.05
    assert replayed == pytest.approx(first / 3, rel=0.15)

    # And a threshold inside a score bin (the training quantile of a contamination off
    # the kept quantiles' grid), whose count is interpolated, projects within 5% too
    wider = cli_json(
        e2e_env,
        "models",
        "threshold",
        MODEL,
        "--contamination",
        "0.0233",
        "--reason",
        "wider",
        "--by",
        "bo",
    )
    seconds_until(e2e_app, wider["threshold"])
    again = stored(e2e_adapters, send(e2e_app, e2e_adapters, rows, "again"))
    # (the counts hold the traffic twice by now, the first pass and the replay: one more
    # replay should store half the projection; the one-record probes score far below)
    interpolated = wider["projection"]["alerts"] / 2
    print(json.dumps({"contamination_projected_per_pass": interpolated, "replayed": again}))
    assert wider["projection"]["alerts_exact"] is False
    assert abs(again - interpolated) / interpolated <= 0.05

    # And a rollback puts the threshold before the last change back, within the TTL too
    back = cli_json(
        e2e_env, "models", "threshold", MODEL, "--rollback", "--reason", "undo", "--by", "ana"
    )
    assert (back["action"], back["threshold"]) == ("rollback", plan["threshold"])
    assert seconds_until(e2e_app, plan["threshold"]) <= TTL_S + 5
    history = cli_json(e2e_env, "models", "threshold", MODEL, "--history")
    assert [(c["action"], c["actor"], c["reason"]) for c in history["changes"]][::2] == [
        ("rollback", "ana", "undo"),
        ("set", "ana", "a third of the pages"),
    ]
    assert (history["threshold"], history["trained_threshold"]) == (
        plan["threshold"],
        trained.threshold,
    )


def test_mistakes_exit_1_with_what_to_do(
    worker: WorkerProcess, e2e_adapters: Adapters, e2e_env: dict[str, str]
) -> None:
    train(e2e_adapters, model="quiet")
    for args, message in [
        (("quiet", "--alerts-per-day", "5", "--dry-run"), "pass 'quiet@1'"),
        (("quiet@1", "--alerts-per-day", "5", "--dry-run"), "counted no scores of quiet@1"),
        (("quiet@1", "--alerts-per-day", "5"), "say why with --reason"),
        (("quiet@1", "--precision", "2", "--dry-run"), "(0, 1]"),
        (("quiet@1",), "say what to do, once"),
        (("quiet@1", "--rollback", "--reason", "x"), "nothing to roll back"),
    ]:
        done = cli(e2e_env, "models", "threshold", *args, check=False)
        assert done.returncode == 1, args
        assert message in done.stderr, (args, done.stderr)


def scrape(env: dict[str, str]) -> str:
    url = f"http://127.0.0.1:{env['PYNOMALY_METRICS_PORT']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def test_alert_precision_from_triage_reaches_the_workers_metrics(
    worker: WorkerProcess, e2e_app: Celery, e2e_adapters: Adapters, e2e_env: dict[str, str]
) -> None:
    # Given a version whose three most severe anomalies were labelled through the CLI
    train(e2e_adapters, model="triaged")
    sent = submit_detection(
        model="triaged@1", records=traffic(n=500), job_id=f"t-{uuid.uuid4().hex}", app=e2e_app
    )
    assert wait_job(e2e_adapters, sent.job_id).status == "succeeded"
    top = e2e_adapters.store.list_anomalies(model="triaged", limit=3)
    for anomaly, label in zip(top, ["anomaly", "not_anomaly", "anomaly"], strict=True):
        cli(e2e_env, "anomalies", "label", str(anomaly.id), "--as", label, "--by", "ana")

    # When the drift maintenance run goes on the worker
    run = cli_json(e2e_env, "maintenance", "run", "drift")
    assert run["outcome"] == "succeeded"

    # Then the worker's /metrics has the version's labelled count and precision
    text = scrape(e2e_env)
    labels = 'flags="stored",model="triaged",version="1"'
    assert f"pynomaly_alert_labelled{{{labels}}} 3.0" in text
    assert f"pynomaly_alert_precision{{{labels}}} 0.666666" in text
