"""Producers that are not ours enqueue by task name and queue name, and real workers run
the jobs: a Celery app with Celery's defaults plus the settings docs/brokers.md lists, and
celery-node (Node.js, ``tests/node``, installed by ``make tools``), on RabbitMQ and Redis.

On RabbitMQ each scenario has a vhost of its own and a worker started on it *before* the
producer sends, so the producer meets the queues and exchanges the worker declared.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pynomaly_workers.bootstrap import bootstrap
from pynomaly_workers.contract import (
    ALL_QUEUES,
    DETECT_TASK,
    DETECTION_QUEUE,
    PING_TASK,
    TRAIN_TASK,
    TRAINING_QUEUE,
)
from pynomaly_workers.demo import WorkerProcess, wait_for
from pynomaly_workers.domain.models import ModelVersion
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.services.health import check_health
from pynomaly_workers.settings import Settings
from tests.conftest import _require_redis
from tests.e2e.conftest import BROKER_DB, RESULTS_DB, free_port, redis_db
from tests.e2e.test_worker import wait_job
from tests.factories import rows_with_outliers, training_rows
from tests.rabbitmq import QUORUM_PRODUCER, PlainProducer, RabbitVhost

pytestmark = pytest.mark.e2e

NODE_FOLDER = Path(__file__).resolve().parents[1] / "node"
RABBIT_RESULTS_DB = 11
"""Redis database holding the results of the RabbitMQ scenarios (the e2e Redis stack
uses 12-14)."""


@dataclass
class RabbitStack:
    """A vhost, a worker consuming it, and adapters to read what the worker wrote."""

    vhost: RabbitVhost
    results_url: str
    adapters: Adapters
    worker: WorkerProcess
    metrics_url: str
    env: dict[str, str]

    def scrape(self) -> str:
        """The worker's ``/metrics`` page."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            return str(response.read().decode())

    def metric_seen(self, sample: str, timeout: float = 10) -> bool:
        """True once the worker's ``/metrics`` shows ``sample`` (a name with labels)."""
        return wait_for(lambda: sample in self.scrape(), timeout=timeout, interval=0.2)


@pytest.fixture(scope="module")
def rabbit_stacks() -> Iterator[dict[str, RabbitStack]]:
    """Started on first use, one per vhost kind: ``plain`` (RabbitMQ's default queue type,
    classic) and ``quorum-default`` (``add_vhost --default-queue-type quorum``)."""
    _require_redis()
    stacks: dict[str, RabbitStack] = {}
    yield stacks
    for stack in stacks.values():
        stack.worker.stop()
        stack.adapters.close()
        stack.vhost.stop()


def rabbit_stack(
    stacks: dict[str, RabbitStack],
    kind: str,
    *,
    pg_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    before_worker: Callable[[RabbitVhost], None] | None = None,
) -> RabbitStack:
    """The stack of vhost ``kind``, with a worker that answered a canary;
    ``before_worker`` runs on the new vhost before the worker starts."""
    if kind in stacks:
        return stacks[kind]
    vhost = RabbitVhost(default_queue_type="quorum" if kind == "quorum-default" else None)
    if before_worker is not None:
        before_worker(vhost)
    results_url = redis_db(RABBIT_RESULTS_DB)
    env = {
        "PYNOMALY_BROKER_URL": vhost.broker_url,
        "PYNOMALY_RESULT_BACKEND": results_url,
        "PYNOMALY_DATABASE_URL": pg_url,
        "PYNOMALY_HOME": str(tmp_path_factory.mktemp("home")),
        "PYNOMALY_ENVIRONMENT": "test",
        "PYNOMALY_METRICS_PORT": str(free_port()),
    }
    values = {k.removeprefix("PYNOMALY_").lower(): v for k, v in env.items()}
    adapters = bootstrap(Settings(**values))  # type: ignore[arg-type]
    log = tmp_path_factory.mktemp("logs") / f"worker-{kind}.log"
    worker = WorkerProcess(log_path=log, concurrency=2, env={**os.environ, **env})
    metrics_url = f"http://127.0.0.1:{env['PYNOMALY_METRICS_PORT']}/metrics"
    stacks[kind] = RabbitStack(vhost, results_url, adapters, worker, metrics_url, env)
    report = check_health(adapters, queues=[DETECTION_QUEUE, TRAINING_QUEUE], timeout=90)
    if not report["ok"]:
        pytest.fail(f"worker did not answer: {report}; log:\n{log.read_text()[-3000:]}")
    return stacks[kind]


@pytest.fixture
def plain_vhost(
    rabbit_stacks: dict[str, RabbitStack], pg_url: str, tmp_path_factory: pytest.TempPathFactory
) -> RabbitStack:
    return rabbit_stack(rabbit_stacks, "plain", pg_url=pg_url, tmp_path_factory=tmp_path_factory)


@pytest.fixture
def quorum_default_vhost(
    rabbit_stacks: dict[str, RabbitStack], pg_url: str, tmp_path_factory: pytest.TempPathFactory
) -> RabbitStack:
    return rabbit_stack(
        rabbit_stacks, "quorum-default", pg_url=pg_url, tmp_path_factory=tmp_path_factory
    )


def training_kwargs(model: str) -> dict[str, Any]:
    """``pynomaly.train`` kwargs, as JSON a producer in any language writes."""
    return {
        "model": model,
        "algorithm": "iforest",
        "records": training_rows(),
        "contamination": 0.01,
        "params": {"n_estimators": 25},
    }


def wait_trained(adapters: Adapters, task_id: str, timeout: float = 90) -> ModelVersion:
    """The model version the training task ``task_id`` registered."""
    found: dict[str, ModelVersion] = {}

    def registered() -> bool:
        version = adapters.store.find_trained_by(task_id)
        if version is not None:
            found["version"] = version
        return version is not None

    assert wait_for(registered, timeout=timeout, interval=0.2), f"{task_id} trained nothing"
    return found["version"]


def send_with_celery_node(
    *, broker_url: str, results_url: str, queue: str, task: str, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """``tests/node/send.js``: celery-node sends the task and waits for its result."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH: the celery-node producer test needs Node.js 18+")
    if not (NODE_FOLDER / "node_modules" / "celery-node").is_dir():
        pytest.fail(f"celery-node is not installed: run 'make tools' (npm ci in {NODE_FOLDER})")
    command = [
        node, "send.js", broker_url, results_url, queue, task, json.dumps(kwargs), "60000",
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=NODE_FOLDER, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# -- a Celery producer -------------------------------------------------------------------
def test_a_celery_producer_with_the_documented_setting_trains_and_detects_on_rabbitmq(
    plain_vhost: RabbitStack,
) -> None:
    # Given a worker on a vhost with RabbitMQ's defaults, and an upstream Celery app with
    # Celery's defaults plus the one setting docs/brokers.md gives
    producer = PlainProducer(plain_vhost.vhost.broker_url, **QUORUM_PRODUCER)
    try:
        # When it sends pynomaly.train to the training queue, by names only
        train_id = producer.send(TRAIN_TASK, kwargs=training_kwargs("plain"), queue=TRAINING_QUEUE)
        version = wait_trained(plain_vhost.adapters, train_id)
        # and then pynomaly.detect to the detection queue
        job_id = f"plain-{uuid.uuid4().hex[:8]}"
        detect = {"job_id": job_id, "model": "plain", "records": rows_with_outliers()}
        producer.send(DETECT_TASK, kwargs=detect, queue=DETECTION_QUEUE)
    finally:
        producer.close()

    # Then the worker trained the model and ran the job on it
    job = wait_job(plain_vhost.adapters, job_id, timeout=90)
    assert job.status == "succeeded", job.error
    assert job.n_records == 200
    assert (job.summary or {}).get("model_version") == version.version
    assert job.n_anomalies is not None
    assert job.n_anomalies >= 3


def test_a_large_job_from_a_celery_producer_is_forwarded_to_the_bulk_lane_and_runs(
    plain_vhost: RabbitStack,
) -> None:
    # Given a model, and a job above PYNOMALY_SMALL_JOB_MAX_RECORDS (1000): the worker
    # forwards it to detection.bulk, through the direct exchange of that name
    producer = PlainProducer(plain_vhost.vhost.broker_url, **QUORUM_PRODUCER)
    try:
        train_id = producer.send(TRAIN_TASK, kwargs=training_kwargs("large"), queue=TRAINING_QUEUE)
        wait_trained(plain_vhost.adapters, train_id)
        job_id = f"large-{uuid.uuid4().hex[:8]}"
        records = rows_with_outliers(n=1500, outliers=(3, 700, 1400))
        detect = {"job_id": job_id, "model": "large", "records": records}
        # When a producer with Celery's defaults sends it to the detection queue
        producer.send(DETECT_TASK, kwargs=detect, queue=DETECTION_QUEUE)
    finally:
        producer.close()

    # Then the bulk lane runs it: its queue wait is observed on delivery from detection.bulk
    job = wait_job(plain_vhost.adapters, job_id, timeout=90)
    assert job.status == "succeeded", job.error
    assert job.n_records == 1500
    assert plain_vhost.metric_seen('pynomaly_queue_wait_seconds_count{queue="detection.bulk"}')


def test_jobs_a_celery_producer_sent_before_any_worker_ran_are_run_when_one_starts(
    rabbit_stacks: dict[str, RabbitStack], pg_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Given a new vhost where a Celery producer (with the documented setting) declared the
    # queues and left a training job waiting
    sent: dict[str, str] = {}

    def send_training(vhost: RabbitVhost) -> None:
        producer = PlainProducer(vhost.broker_url, **QUORUM_PRODUCER)
        try:
            kwargs = training_kwargs("early")
            sent["train"] = producer.send(TRAIN_TASK, kwargs=kwargs, queue=TRAINING_QUEUE)
        finally:
            producer.close()

    # When a worker starts on it (declaring the same queues, and consuming at once)
    stack = rabbit_stack(
        rabbit_stacks,
        "early",
        pg_url=pg_url,
        tmp_path_factory=tmp_path_factory,
        before_worker=send_training,
    )

    # Then the worker keeps running and trains the model
    wait_trained(stack.adapters, sent["train"])
    assert stack.worker.alive()


def test_a_worker_starts_on_an_earlier_releases_topic_exchanges_and_migrate_opens_them(
    rabbit_stacks: dict[str, RabbitStack], pg_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Given a vhost an earlier release's client set up (each queue behind a topic exchange
    # of its name), with a training job waiting
    sent: dict[str, str] = {}

    def earlier_release(vhost: RabbitVhost) -> None:
        old = PlainProducer(
            vhost.broker_url, task_create_missing_queue_exchange_type="topic", **QUORUM_PRODUCER
        )
        try:
            for queue in ALL_QUEUES:
                old.send(PING_TASK, kwargs={}, queue=queue)
            sent["train"] = old.send(
                TRAIN_TASK, kwargs=training_kwargs("old"), queue=TRAINING_QUEUE
            )
        finally:
            old.close()
        assert {vhost.exchanges()[q][0] for q in ALL_QUEUES} == {"topic"}

    # When a worker of this release starts on it
    stack = rabbit_stack(
        rabbit_stacks,
        "earlier-release",
        pg_url=pg_url,
        tmp_path_factory=tmp_path_factory,
        before_worker=earlier_release,
    )

    # Then it runs (and says what to run), and trains the waiting job
    wait_trained(stack.adapters, sent["train"])
    assert stack.worker.alive()
    assert "pynomaly-workers migrate --broker" in stack.worker.log_path.read_text()

    # When the operator migrates the exchanges while the worker runs
    command = [sys.executable, "-m", "pynomaly_workers.cli", "migrate", "--broker"]
    done = subprocess.run(
        command, env={**os.environ, **stack.env}, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert {stack.vhost.exchanges()[q][0] for q in ALL_QUEUES} == {"direct"}

    # Then a producer with Celery's defaults and the documented setting gets a job done
    producer = PlainProducer(stack.vhost.broker_url, **QUORUM_PRODUCER)
    try:
        job_id = f"migrated-{uuid.uuid4().hex[:8]}"
        detect = {"job_id": job_id, "model": "old", "records": rows_with_outliers()}
        producer.send(DETECT_TASK, kwargs=detect, queue=DETECTION_QUEUE)
    finally:
        producer.close()
    job = wait_job(stack.adapters, job_id, timeout=60)
    assert job.status == "succeeded", job.error
    assert stack.worker.alive()


def test_a_celery_producer_with_no_setting_at_all_works_where_the_vhost_defaults_to_quorum(
    quorum_default_vhost: RabbitStack,
) -> None:
    # Given a worker on a vhost created with --default-queue-type quorum
    producer = PlainProducer(quorum_default_vhost.vhost.broker_url)
    try:
        # When a Celery app with nothing but Celery's defaults trains and detects
        train_id = producer.send(TRAIN_TASK, kwargs=training_kwargs("bare"), queue=TRAINING_QUEUE)
        wait_trained(quorum_default_vhost.adapters, train_id)
        job_id = f"bare-{uuid.uuid4().hex[:8]}"
        detect = {"job_id": job_id, "model": "bare", "records": rows_with_outliers()}
        producer.send(DETECT_TASK, kwargs=detect, queue=DETECTION_QUEUE)
    finally:
        producer.close()

    # Then the job succeeds
    job = wait_job(quorum_default_vhost.adapters, job_id, timeout=90)
    assert job.status == "succeeded", job.error


# -- celery-node -------------------------------------------------------------------------
def test_celery_node_sends_a_detection_job_to_rabbitmq(
    quorum_default_vhost: RabbitStack,
) -> None:
    # Given a model, and a worker on a vhost whose default queue type is quorum (celery-node
    # declares every queue it publishes to without arguments: a classic queue elsewhere)
    stack = quorum_default_vhost
    trainer = PlainProducer(stack.vhost.broker_url)
    try:
        train_id = trainer.send(TRAIN_TASK, kwargs=training_kwargs("node"), queue=TRAINING_QUEUE)
    finally:
        trainer.close()
    wait_trained(stack.adapters, train_id)

    # When celery-node sends pynomaly.detect to the detection queue and waits
    job_id = f"node-{uuid.uuid4().hex[:8]}"
    sent = send_with_celery_node(
        broker_url=stack.vhost.broker_url,
        results_url=stack.results_url,
        queue=DETECTION_QUEUE,
        task=DETECT_TASK,
        kwargs={"job_id": job_id, "model": "node", "records": rows_with_outliers()},
    )

    # Then the job succeeded, and celery-node read its summary from the result backend
    job = wait_job(stack.adapters, job_id, timeout=30)
    assert job.status == "succeeded", job.error
    assert sent["result"]["job_id"] == job_id
    assert sent["result"]["n_records"] == 200
    assert stack.vhost.queues()[DETECTION_QUEUE]["type"] == "quorum"


def test_celery_node_sends_a_detection_job_to_redis(
    worker: WorkerProcess, e2e_adapters: Adapters
) -> None:
    # Given the e2e Redis stack's worker and a model
    from tests.factories import train

    model = train(e2e_adapters, model="node-redis").label

    # When celery-node LPUSHes pynomaly.detect onto the detection list and waits
    job_id = f"node-redis-{uuid.uuid4().hex[:8]}"
    sent = send_with_celery_node(
        broker_url=redis_db(BROKER_DB),
        results_url=redis_db(RESULTS_DB),
        queue=DETECTION_QUEUE,
        task=DETECT_TASK,
        kwargs={"job_id": job_id, "model": model, "records": rows_with_outliers()},
    )

    # Then the worker ran it like any other job
    job = wait_job(e2e_adapters, job_id, timeout=30)
    assert job.status == "succeeded", job.error
    assert sent["result"]["n_records"] == 200
