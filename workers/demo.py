"""The demo: a real worker process on the embedded default, train, detect, show.

Everything goes through the broker: the demo publishes ``pynomaly.train`` and
``pynomaly.detect`` by name exactly as an upstream service would.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pynomaly_workers.contract import DETECTION_QUEUE, FAILED, FINAL_STATUSES, TRAINING_QUEUE
from pynomaly_workers.settings import SOURCE_FOLDER, Settings

if TYPE_CHECKING:
    from pynomaly_workers.domain.ports import JobRecord
    from pynomaly_workers.services.context import Adapters

N_FEATURES = 8
FEATURES = [f"sensor_{i}" for i in range(N_FEATURES)]


@dataclass(frozen=True, slots=True)
class SampleData:
    """Generated training rows and a fresh batch with known injected anomalies."""

    training: np.ndarray[Any, np.dtype[np.float64]]
    incoming: np.ndarray[Any, np.dtype[np.float64]]
    incoming_ids: list[str]
    injected: list[int]


def make_sample_data(
    *, n_train: int = 20_000, n_incoming: int = 2_000, seed: int = 7
) -> SampleData:
    """Correlated 'sensor' readings; the incoming batch has 1% of rows pushed off-manifold."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(N_FEATURES, N_FEATURES)) / np.sqrt(N_FEATURES)
    training = rng.normal(size=(n_train, N_FEATURES)) @ mixing + 20.0
    incoming = rng.normal(size=(n_incoming, N_FEATURES)) @ mixing + 20.0
    injected = sorted(rng.choice(n_incoming, size=max(1, n_incoming // 100), replace=False))
    for row in injected:
        incoming[row] += rng.choice([-1.0, 1.0], size=N_FEATURES) * rng.uniform(3, 6, N_FEATURES)
    ids = [f"reading-{i:05d}" for i in range(n_incoming)]
    return SampleData(training, incoming, ids, [int(i) for i in injected])


def write_csv(path: Path, matrix: np.ndarray[Any, np.dtype[np.float64]]) -> Path:
    """Write rows with a header of feature names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(FEATURES)
        writer.writerows(np.round(matrix, 6).tolist())
    return path


class ChildProcess:
    """A child process in a session of its own, logging to a file; stopped warm (SIGTERM
    to its process group), then SIGKILL if it does not exit in time."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            list(command),
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    def stop(self, timeout: float = 30.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()

    def alive(self) -> bool:
        """True while the process runs."""
        return self.process.poll() is None


class WorkerProcess(ChildProcess):
    """A ``pynomaly-workers worker`` child process, logging to a file."""

    def __init__(
        self,
        *,
        log_path: Path,
        concurrency: int = 2,
        queues: str | None = None,
        env: dict[str, str] | None = None,
        hostname: str | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        """``prefix`` runs the worker under another command (``ip netns exec NS`` puts
        it on another network host); ``hostname`` names its Celery node."""
        command = [
            *prefix,
            sys.executable,
            "-m",
            "pynomaly_workers.cli",
            "worker",
            "--concurrency",
            str(concurrency),
            "--loglevel",
            "INFO",
        ]
        if queues:
            command += ["--queues", queues]
        if hostname:
            command += ["--hostname", hostname]
        super().__init__(command, log_path=log_path, env=env)


def wait_for(check: Callable[[], bool], *, timeout: float, interval: float = 0.2) -> bool:
    """Poll ``check`` until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return False


def demo_paths(settings: Settings) -> dict[str, Path]:
    """Where the demo keeps its files."""
    folder = (settings.home / "demo").resolve()
    # Training data goes where workers may read sources by default (PYNOMALY_HOME/data).
    return {
        "training": (settings.home / SOURCE_FOLDER / "demo" / "sensors-training.csv").resolve(),
        "log": folder / "worker.log",
    }


def run_demo(
    settings: Settings, *, timeout: float, echo: Callable[[str], None] | None
) -> dict[str, Any]:
    """Migrate, start a worker, train on generated data, detect, return the outcome."""
    from pynomaly_workers.bootstrap import get_adapters
    from pynomaly_workers.client import client_app, new_job_id, submit_detection, submit_training
    from pynomaly_workers.migrate import upgrade
    from pynomaly_workers.services.health import check_health

    say = echo or (lambda _text: None)
    paths = demo_paths(settings)
    upgrade(settings.resolved_database_url)
    data = make_sample_data()
    write_csv(paths["training"], data.training)
    adapters = get_adapters()
    app = client_app(settings)
    say(f"starting a worker (log: {paths['log']})")
    # The demo needs no metrics endpoint, and must not collide with a worker serving one.
    worker = WorkerProcess(log_path=paths["log"], env={"PYNOMALY_METRICS_PORT": "0"})
    try:
        queues = [DETECTION_QUEUE, TRAINING_QUEUE]
        report = check_health(adapters, queues=queues, timeout=timeout)
        if not report["ok"]:
            raise DemoFailed(f"the worker did not answer: {report['checks']}; see {paths['log']}")
        say(f"training model 'demo-sensors' (iforest) on {len(data.training)} rows ...")
        training = submit_training(
            model="demo-sensors", source=str(paths["training"]), contamination=0.01, app=app
        )
        trained = app.AsyncResult(training.task_id).get(timeout=timeout)
        say(
            f"registered demo-sensors@{trained['model_version']} "
            f"(ONNX: {'yes' if trained['onnx'] else 'no'}); detecting on "
            f"{len(data.incoming)} new readings ({len(data.injected)} injected anomalies) ..."
        )
        job_id = new_job_id()
        adapters.store.enqueue_job(job_id, model="demo-sensors", now=adapters.clock.now())
        submit_detection(
            model="demo-sensors",
            records=data.incoming.tolist(),
            record_ids=data.incoming_ids,
            job_id=job_id,
            app=app,
        )
        job = _await_job(adapters, job_id, timeout=timeout)
    finally:
        worker.stop()
    found = {a.record_index for a in adapters.store.list_anomalies(job_id=job_id, limit=10_000)}
    recall = len(found & set(data.injected)) / len(data.injected)
    say(
        f"{len(found & set(data.injected))} of {len(data.injected)} injected anomalies found "
        f"(recall {recall:.0%})\n"
    )
    return {
        "training": trained,
        "summary": job.summary,
        "injected": data.injected,
        "recall": recall,
    }


class DemoFailed(RuntimeError):
    """The demo could not complete; the message says where to look."""


def _await_job(adapters: Adapters, job_id: str, *, timeout: float) -> JobRecord:
    holder: dict[str, JobRecord | None] = {"job": None}

    def finished() -> bool:
        holder["job"] = job = adapters.store.get_job(job_id)
        return job is not None and job.status in FINAL_STATUSES

    if not wait_for(finished, timeout=timeout):
        raise DemoFailed(f"job {job_id} did not finish in {timeout:.0f}s")
    job = holder["job"]
    assert job is not None
    if job.status == FAILED:
        raise DemoFailed(f"job {job_id} failed: {job.error}")
    return job
