"""The long-running processes: ``worker``, ``beat`` and ``flower``."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from pynomaly_workers.cli.context import load_settings
from pynomaly_workers.cli.output import fail
from pynomaly_workers.contract import MAINTENANCE_QUEUE, NOTIFICATIONS_QUEUE, QUEUES, TRAINING_QUEUE

LONG_TASK_QUEUES = frozenset({TRAINING_QUEUE, MAINTENANCE_QUEUE, NOTIFICATIONS_QUEUE})


@click.command()
@click.option("--queues", "-Q", default=None, help="Comma-separated queues (default: all).")
@click.option("--concurrency", "-c", type=int, default=None, help="Worker processes.")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.option("--pool", default=None, help="Celery pool (prefork, solo, threads).")
@click.option("--hostname", "-n", default=None, help="Node name (default: celery@<host name>).")
def worker(
    queues: str | None,
    concurrency: int | None,
    loglevel: str,
    pool: str | None,
    hostname: str | None,
) -> None:
    """Run a worker consuming the detection, training and maintenance queues, with
    Prometheus metrics at /metrics on PYNOMALY_METRICS_PORT (0 turns them off).

    With detection, the pool has one process per core plus one, and long work (file
    jobs, chunks, training, maintenance) uses at most all but one process: a one-record
    job never waits behind it. A pool of only training/maintenance queues takes one
    message per process at a time (prefetch 1): a long job never waits, reserved,
    behind another one."""
    settings = load_settings()
    if settings.metrics_port:
        _prepare_metrics_folder(settings.home / "metrics", os.getpid())
    from pynomaly_workers.celery_app import get_app

    chosen = (queues or ",".join(QUEUES)).split(",")
    unknown = set(chosen) - set(QUEUES)
    if unknown:
        fail(f"unknown queue(s) {', '.join(sorted(unknown))}; choose from {', '.join(QUEUES)}")
    argv = [f"--loglevel={loglevel}", f"--queues={','.join(chosen)}", "--task-events"]
    argv += _prefetch_options(chosen)
    from pynomaly_workers.celery_config import layout_for

    processes = layout_for(chosen, concurrency=concurrency or settings.worker_concurrency)
    argv.append(f"--concurrency={processes.processes}")
    if pool:
        from pynomaly_workers.celery_config import PREFORK_POOL

        argv.append(f"--pool={PREFORK_POOL if pool == 'prefork' else pool}")
    if hostname:
        argv.append(f"--hostname={hostname}")
    if settings.metrics_port:
        from pynomaly_workers.metrics import serve

        try:
            serve(settings.metrics_port)
        except OSError as exc:
            fail(
                f"cannot serve metrics on port {settings.metrics_port} ({exc}); set "
                "PYNOMALY_METRICS_PORT to a free port, or 0 to turn metrics off"
            )
    # JSON logs: no banner, and warnings as JSON, so every output line is one object.
    quiet = _json_output() if settings.log_format == "json" else []
    get_app().start([*quiet, "worker", *argv])


def _json_output() -> list[str]:
    """Python warnings as JSON lines; Celery's ``--quiet`` (no banner)."""
    import warnings

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        del file, line
        text = f"{category.__name__}: {message} ({filename}:{lineno})"
        click.echo(json.dumps({"level": "WARNING", "message": text}), err=True)

    warnings.showwarning = show
    return ["--quiet"]


def _prefetch_options(queues: Sequence[str]) -> list[str]:
    """Prefetch 1 and fair scheduling for a pool of long tasks only. A worker that also
    consumes detection keeps the detection prefetch (PYNOMALY_PREFETCH_MULTIPLIER, for
    micro-batching) and takes training and maintenance through its bulk lane, one
    message per bulk slot (workers/lanes.py)."""
    if set(queues) <= LONG_TASK_QUEUES:
        return ["--prefetch-multiplier=1", "-O", "fair"]
    return []


def _prepare_metrics_folder(parent: Path, pid: int) -> None:
    """A fresh folder for prometheus-client's multiprocess files, and the folders of
    earlier runs removed. It must be in the environment before prometheus_client is
    first imported (it reads it at import)."""
    import shutil

    assert "prometheus_client" not in sys.modules, "metrics folder set too late"
    folder = parent / str(pid)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder.resolve())
    from pynomaly_workers.metrics import remove_stale_folders

    remove_stale_folders(parent, keep=folder)


@click.command()
@click.option("--loglevel", "-l", default="INFO", show_default=True)
def beat(loglevel: str) -> None:
    """Run the beat scheduler. Safe to start twice on Redis: one ticks, the other waits
    and takes over within PYNOMALY_BEAT_LOCK_TIMEOUT + PYNOMALY_BEAT_MAX_LOOP_INTERVAL
    seconds of the leader's death. On the embedded default run one."""
    from pynomaly_workers.celery_app import get_app

    settings = load_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    schedule = settings.home.resolve() / "celerybeat-schedule"
    quiet = _json_output() if settings.log_format == "json" else []
    get_app().start([*quiet, "beat", f"--loglevel={loglevel}", f"--schedule={schedule}"])


@click.command()
@click.option("--port", default=5555, show_default=True)
@click.option("--address", default="0.0.0.0", show_default=True)  # noqa: S104
def flower(port: int, address: str) -> None:
    """Run Flower behind basic auth (PYNOMALY_FLOWER_BASIC_AUTH=user:password; the
    password may contain commas)."""
    from pynomaly_workers.celery_app import get_app
    from pynomaly_workers.flower import run_flower

    settings = load_settings()
    if not settings.flower_basic_auth:
        fail("Flower needs basic auth: set PYNOMALY_FLOWER_BASIC_AUTH=user:password")
    run_flower(get_app(), settings, port=port, address=address)
