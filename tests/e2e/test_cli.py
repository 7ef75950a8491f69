"""The pynomaly-workers CLI against a real worker on Redis + PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pynomaly_workers.demo import WorkerProcess
from pynomaly_workers.services.context import Adapters
from tests.factories import rows_with_outliers, train, training_rows, write_csv

pytestmark = pytest.mark.e2e


def cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pynomaly_workers.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
        check=check,
    )


def cli_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(cli(env, *args, "--json").stdout)


def test_train_detect_and_inspect_through_the_cli(
    worker: WorkerProcess, e2e_env: dict[str, str], tmp_path: Path
) -> None:
    # Given training and detection records in JSON files
    train_file = tmp_path / "train.json"
    train_file.write_text(json.dumps(training_rows()))
    detect_file = tmp_path / "detect.json"
    rows = rows_with_outliers()
    detect_file.write_text(
        json.dumps({"records": rows, "record_ids": [f"r{i}" for i in range(len(rows))]})
    )

    # When a model is trained and a job detected with --wait
    trained = cli_json(
        e2e_env,
        "train",
        "--model",
        "cli",
        "--records-file",
        str(train_file),
        "--param",
        "n_estimators=25",
    )
    summary = cli_json(
        e2e_env,
        "detect",
        "--model",
        "cli",
        "--records-file",
        str(detect_file),
        "--job-id",
        "cli-1",
        "--wait",
    )

    # Then every inspection command shows it
    assert trained["model"] == "cli"
    assert trained["n_features"] == 4
    assert summary["job_id"] == "cli-1"
    assert summary["status"] == "succeeded"
    assert {"r3", "r50", "r120"} <= {a["record_id"] for a in summary["top_anomalies"]}
    jobs = cli_json(e2e_env, "jobs")
    assert "cli-1" in [j["job_id"] for j in jobs]
    assert cli_json(e2e_env, "jobs", "cli-1")["status"] == "succeeded"
    assert any(m["name"] == "cli" for m in cli_json(e2e_env, "models"))
    anomalies = cli_json(e2e_env, "anomalies", "--job-id", "cli-1", "--limit", "500")
    assert len(anomalies) == summary["n_anomalies"]
    human = cli(
        e2e_env,
        "detect",
        "--model",
        "cli",
        "--records-file",
        str(detect_file),
        "--job-id",
        "cli-1",
        "--wait",
    ).stdout
    assert "record_id" in human
    assert "job cli-1: succeeded" in human


def test_health_proves_each_queue_is_consumed(
    worker: WorkerProcess, e2e_env: dict[str, str]
) -> None:
    report = cli_json(e2e_env, "health", "--queues", "detection,training,maintenance")

    assert report["ok"] is True
    assert set(report["checks"]) == {
        "database",
        "queue:detection",
        "queue:training",
        "queue:maintenance",
    }
    # plain health: the canary goes to this host's worker's own queue
    own = cli_json(e2e_env, "health")
    assert own["ok"] is True
    assert [c for c in own["checks"] if c.startswith("worker:celery@")]


def test_health_fails_when_no_worker_consumes_a_queue(
    worker: WorkerProcess, e2e_env: dict[str, str]
) -> None:
    result = cli(
        e2e_env, "health", "--queues", "nobody-listens", "--timeout", "2", "--json", check=False
    )

    assert result.returncode == 1
    assert json.loads(result.stdout)["checks"]["queue:nobody-listens"]["ok"] is False


def test_maintenance_runs_on_the_maintenance_queue(
    worker: WorkerProcess, e2e_env: dict[str, str]
) -> None:
    # When refresh_views runs on the worker, and its history is asked for
    report = cli_json(e2e_env, "maintenance", "run", "refresh_views")
    history = cli_json(e2e_env, "maintenance", "history", "--task", "refresh_views")

    # Then the worker refreshed every view concurrently and recorded the run
    assert report["outcome"] == "succeeded"
    assert set(report["detail"]["refreshed"].values()) == {"concurrently"}
    assert len(report["detail"]["refreshed"]) == 4
    assert history[0]["outcome"] == "succeeded"
    assert history[0]["detail"] == report["detail"]
    human = cli(e2e_env, "maintenance", "history").stdout
    assert "refresh_views" in human
    assert "succeeded" in human


def test_retention_below_one_day_is_refused_with_what_to_do(e2e_env: dict[str, str]) -> None:
    result = cli(e2e_env, "maintenance", "run", "retention", "--days", "0", check=False)

    assert result.returncode == 1
    assert "retention days must be a whole number of at least 1, got 0" in result.stderr
    assert "pass --days 1 or more" in result.stderr


def test_bad_cli_input_says_what_to_do(e2e_env: dict[str, str], tmp_path: Path) -> None:
    result = cli(e2e_env, "detect", "--model", "x", check=False)
    assert result.returncode != 0
    assert "give exactly one of --records-file, --dataset or --source" in result.stderr

    flower = cli({**e2e_env, "PYNOMALY_FLOWER_BASIC_AUTH": ""}, "flower", check=False)
    assert "PYNOMALY_FLOWER_BASIC_AUTH=user:password" in flower.stderr

    bad = cli({**e2e_env, "PYNOMALY_FLOWER_BASIC_AUTH": "nocolon"}, "models", check=False)
    assert bad.returncode == 1
    assert "PYNOMALY_FLOWER_BASIC_AUTH" in bad.stderr
    assert "user:password" in bad.stderr


def test_a_piped_detect_wait_on_a_fanned_out_job_prints_no_progress_on_stdout(
    worker: WorkerProcess, e2e_env: dict[str, str], e2e_adapters: Adapters, tmp_path: Path
) -> None:
    # Given a model and a 5,000-row source, scored in five chunks of 1,000
    model = train(e2e_adapters, model="cli-fan").label
    source = write_csv(tmp_path / "big.csv", rows_with_outliers(n=5000, seed=3), ids=True)
    detect = ("detect", "--model", model, "--source", str(source), "--wait", "--job-id")

    # When detect --wait runs with stdout and stderr piped, for people and for machines
    human = cli(e2e_env, *detect, "cli-fan-1")
    machine = cli(e2e_env, *detect, "cli-fan-2", "--json")

    # Then stdout holds the summary exactly as 'jobs' prints the stored job, nothing else
    assert human.stdout == cli(e2e_env, "jobs", "cli-fan-1").stdout
    assert "job cli-fan-1: succeeded" in human.stdout
    assert "chunks" not in human.stdout + human.stderr
    assert "\r" not in human.stdout + human.stderr
    summary = json.loads(machine.stdout)
    assert summary == cli_json(e2e_env, "jobs", "cli-fan-2")["summary"]
    assert summary["n_records"] == 5000
    # and with --json the progress went to stderr, one JSON object a line, ending done
    shown = [json.loads(line) for line in machine.stderr.splitlines()]
    assert shown, machine.stderr
    assert {line["event"] for line in shown} == {"progress"}
    last = shown[-1]
    assert (last["chunks_done"], last["chunks_total"], last["records"]) == (5, 5, 5000)
