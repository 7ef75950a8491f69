"""Operations, checked by the real tools: Flower in headless Chromium, a real Prometheus
scraping a running worker, and every metric name of the alert rules and the dashboard
against a live ``/metrics``.

One module-scoped scene: a worker, Flower and Prometheus start first, then one
``pynomaly.train``, five ``pynomaly.detect``, one maintenance task and one beat tick run.
"""

from __future__ import annotations

import base64
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from celery import Celery

from pynomaly_workers.client import submit_detection, submit_training
from pynomaly_workers.contract import ALL_QUEUES, PING_TASK, maintenance_task
from pynomaly_workers.demo import WorkerProcess, wait_for
from pynomaly_workers.services.context import Adapters
from tests.browser import Browser
from tests.e2e.conftest import free_port
from tests.factories import rows_with_outliers, training_rows

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
ARTIFACTS = ROOT / "build" / "test-artifacts"
FLOWER_USER, FLOWER_PASSWORD = "ops", "pa,ss:w0rd"  # a comma, as Flower used to split on
N_DETECT = 5
MODEL = "ops"


@dataclass
class Scene:
    detect_task_ids: list[str]
    summaries: list[dict[str, Any]]
    flower_url: str
    prometheus_url: str
    metrics_url: str


def http_get(url: str, *, auth: tuple[str, str] | None = None, timeout: float = 10) -> bytes:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return bytes(response.read())


def answers(url: str, **kwargs: Any) -> bool:
    try:
        http_get(url, **kwargs)
    except urllib.error.HTTPError as error:
        error.close()
        return False
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def flower(e2e_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``pynomaly-workers flower`` on a loopback port, password with a comma."""
    port = free_port()
    log = tmp_path_factory.mktemp("flower") / "flower.log"
    env = {
        **os.environ,
        **e2e_env,
        "PYNOMALY_FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{FLOWER_PASSWORD}",
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "pynomaly_workers.cli", "flower", "--port", str(port),
             "--address", "127.0.0.1"],
            stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    if not wait_for(lambda: answers(f"{url}/healthcheck"), timeout=60):
        process.kill()
        pytest.fail(f"Flower did not start:\n{log.read_text()[-3000:]}")
    yield url
    process.terminate()
    process.wait(timeout=20)


@pytest.fixture(scope="module")
def prometheus(e2e_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's Prometheus on a loopback port, scraping the worker every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: run 'make tools' (Debian package prometheus)")
    folder = tmp_path_factory.mktemp("prometheus")
    target = f"127.0.0.1:{e2e_env['PYNOMALY_METRICS_PORT']}"
    scrape = {"job_name": "pynomaly-workers", "static_configs": [{"targets": [target]}]}
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [scrape],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = folder / "prometheus.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [binary, f"--config.file={folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    if not wait_for(lambda: answers(f"{url}/-/ready"), timeout=60):
        process.kill()
        pytest.fail(f"Prometheus did not start:\n{log.read_text()[-3000:]}")
    yield url
    process.terminate()
    process.wait(timeout=20)


@pytest.fixture(scope="module")
def scene(
    worker: WorkerProcess,
    flower: str,
    prometheus: str,
    e2e_app: Celery,
    e2e_adapters: Adapters,
    e2e_env: dict[str, str],
) -> Scene:
    # Flower must know the worker before the jobs run, or it misses their events.
    auth = (FLOWER_USER, FLOWER_PASSWORD)
    assert wait_for(
        lambda: json.loads(http_get(f"{flower}/api/workers?refresh=1", auth=auth, timeout=30)),
        timeout=60,
    ), "Flower never saw the worker"
    trained = submit_training(model=MODEL, records=training_rows(), app=e2e_app)
    e2e_app.AsyncResult(trained.task_id).get(timeout=120)
    sent = [
        submit_detection(model=MODEL, records=rows_with_outliers(), job_id=f"ops-{i}", app=e2e_app)
        for i in range(N_DETECT)
    ]
    summaries = [e2e_app.AsyncResult(s.task_id).get(timeout=60) for s in sent]
    e2e_app.send_task(maintenance_task("refresh_views"), queue="maintenance").get(timeout=60)
    e2e_app.send_task(maintenance_task("drift"), queue="maintenance").get(timeout=60)
    e2e_app.send_task(PING_TASK, kwargs={"source": "beat"}, queue="maintenance").get(timeout=60)
    gc.collect()  # AsyncResults unsubscribe when collected: now, while the client is open
    return Scene(
        detect_task_ids=[s.task_id for s in sent],
        summaries=summaries,
        flower_url=flower,
        prometheus_url=prometheus,
        metrics_url=f"http://127.0.0.1:{e2e_env['PYNOMALY_METRICS_PORT']}/metrics",
    )


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    session = Browser(download_dir=tmp_path)
    yield session
    session.close()


# -- Flower ------------------------------------------------------------------------------
def test_flower_refuses_a_visitor_without_credentials(scene: Scene, browser: Browser) -> None:
    for auth in (None, (FLOWER_USER, "pa")):  # none, and the part before the comma
        with pytest.raises(urllib.error.HTTPError) as refused:
            http_get(f"{scene.flower_url}/tasks", auth=auth)
        refused.value.close()
        assert refused.value.code == 401
    browser.get(f"{scene.flower_url}/tasks")
    assert "Tasks" not in browser.text()
    browser.screenshot(ARTIFACTS / "flower-401.png")


def test_flower_lists_every_detection_job_with_its_state(scene: Scene, browser: Browser) -> None:
    browser.basic_auth(FLOWER_USER, FLOWER_PASSWORD)
    browser.get(f"{scene.flower_url}/tasks")
    text = browser.wait_text(*scene.detect_task_ids, "pynomaly.detect", "SUCCESS")
    browser.screenshot(ARTIFACTS / "flower-tasks.png")
    rows = [line for line in text.splitlines() if any(t in line for t in scene.detect_task_ids)]
    assert len(rows) == N_DETECT
    assert all("SUCCESS" in row for row in rows), rows
    # each job's detail: runtime, a short result, and a bounded summary of its kwargs
    auth = (FLOWER_USER, FLOWER_PASSWORD)
    for task_id, summary in zip(scene.detect_task_ids, scene.summaries, strict=True):
        info = json.loads(http_get(f"{scene.flower_url}/api/task/info/{task_id}", auth=auth))
        assert info["state"] == "SUCCESS"
        assert info["runtime"] > 0
        assert f"{summary['n_anomalies']} anomalies" in info["result"]
        assert "rows x 4" in info["kwargs"]
        assert len(info["kwargs"]) <= 256


def test_flower_broker_page_lists_the_queues_with_lengths(scene: Scene, browser: Browser) -> None:
    browser.basic_auth(FLOWER_USER, FLOWER_PASSWORD)
    browser.get(f"{scene.flower_url}/broker")
    browser.wait_text(*ALL_QUEUES)  # the bulk lane's queue too (lanes.active_queues)
    browser.screenshot(ARTIFACTS / "flower-broker.png")
    assert "not supported" not in browser.text()
    rows = browser.script(
        "return Array.from(document.querySelectorAll('table tbody tr'))"
        ".map(r => Array.from(r.cells).map(c => c.innerText.trim()))"
    )
    lengths = {row[0]: row[1] for row in rows}
    for queue in ALL_QUEUES:
        assert re.fullmatch(r"\d+", lengths[queue]), rows


# -- Prometheus --------------------------------------------------------------------------
def query(prometheus: str, expression: str) -> dict[str, float]:
    url = f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expression})}"
    data = json.loads(http_get(url))
    assert data["status"] == "success", data
    return {
        json.dumps(r["metric"], sort_keys=True): float(r["value"][1])
        for r in data["data"]["result"]
    }


def scalar(prometheus: str, expression: str, expected: float, timeout: float = 30) -> float:
    """The single value of ``expression`` once it equals ``expected`` (scrapes lag)."""
    values: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        values = query(prometheus, expression)
        if len(values) == 1 and next(iter(values.values())) == pytest.approx(expected):
            return expected
        time.sleep(0.5)
    raise AssertionError(f"{expression} = {values}, expected {expected}")


def test_prometheus_scrapes_jobs_queue_wait_and_per_model_series(scene: Scene) -> None:
    prom = scene.prometheus_url
    records = sum(s["n_records"] for s in scene.summaries)
    anomalies = sum(s["n_anomalies"] for s in scene.summaries)
    assert anomalies > 0
    scalar(prom, 'pynomaly_jobs_total{queue="detection",outcome="succeeded"}', N_DETECT)
    scalar(prom, 'pynomaly_queue_wait_seconds_count{queue="detection"}', N_DETECT)
    scalar(prom, 'pynomaly_job_duration_seconds_count{queue="detection"}', N_DETECT)
    scalar(prom, f'pynomaly_records_scored_total{{model="{MODEL}"}}', records)
    scalar(prom, f'pynomaly_anomalies_total{{model="{MODEL}"}}', anomalies)
    scalar(prom, f'pynomaly_model_contamination{{model="{MODEL}"}}', 0.01)
    scalar(prom, 'pynomaly_training_runs_total{outcome="succeeded"}', 1)
    scalar(prom, 'pynomaly_maintenance_runs_total{task="refresh_views",outcome="succeeded"}', 1)
    scalar(prom, "pynomaly_worker_up", 1)
    # the waits are real durations: positive, and below the time the scene took
    wait_sum = query(prom, 'pynomaly_queue_wait_seconds_sum{queue="detection"}')
    assert 0 < next(iter(wait_sum.values())) < 60 * N_DETECT
    lengths = query(prom, "pynomaly_queue_length")
    assert {json.loads(k)["queue"] for k in lengths} == set(ALL_QUEUES)


# -- names in rules and dashboard ---------------------------------------------------------
NAME = re.compile(r"\bpynomaly_[a-z0-9_]+")
SUFFIXES = ("_bucket", "_count", "_sum")


def exported_names(body: str) -> set[str]:
    names = set()
    for line in body.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def used_names() -> dict[str, set[str]]:
    rules = (MONITORING / "prometheus" / "alerts.yml").read_text()
    dashboard = (MONITORING / "grafana" / "dashboards" / "pynomaly-workers.json").read_text()
    return {"alerts.yml": set(NAME.findall(rules)), "dashboard": set(NAME.findall(dashboard))}


def test_every_metric_in_the_rules_and_the_dashboard_is_exported(scene: Scene) -> None:
    body = http_get(scene.metrics_url).decode()
    exported = exported_names(body)
    for source, names in used_names().items():
        assert names, source
        missing = sorted(n for n in names if n not in exported)
        assert missing == [], f"{source} uses names the worker does not export: {missing}"
    families = {n.removesuffix(s) for n in exported for s in SUFFIXES if n.endswith(s)}
    assert families >= {"pynomaly_job_duration_seconds", "pynomaly_queue_wait_seconds"}
