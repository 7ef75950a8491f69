"""``pynomaly.train`` and ``pynomaly.train_many``: fit and register model versions."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task

from pynomaly_workers.adapters.priority import run_niced
from pynomaly_workers.bootstrap import get_adapters
from pynomaly_workers.contract import TRAIN_MANY_TASK, TRAIN_TASK
from pynomaly_workers.domain.jobs import parse_training_batch
from pynomaly_workers.observability import current_queue_wait
from pynomaly_workers.services.detection import record_limits
from pynomaly_workers.services.training import train_many, train_message, version_summary
from pynomaly_workers.settings import Settings
from pynomaly_workers.tasks.base import retry_options


def register(app: Celery, settings: Settings) -> None:
    """Define ``pynomaly.train`` and ``pynomaly.train_many`` on ``app``."""

    @app.task(name=TRAIN_TASK, **retry_options(settings))
    def train(self: Task, **kwargs: Any) -> dict[str, Any]:  # type: ignore[type-arg]
        """Public contract: ``contract.TRAIN_KWARGS_SCHEMA``."""
        adapters = get_adapters()
        task_id = str(self.request.id)  # Celery's request is per thread: read it here
        wait = current_queue_wait.get()
        version = run_niced(
            lambda: train_message(adapters, kwargs, task_id=task_id, queue_wait_s=wait),
            nice=settings.bulk_nice,
        )
        return version_summary(version)

    @app.task(name=TRAIN_MANY_TASK, **retry_options(settings))
    def train_many_models(self: Task, **kwargs: Any) -> dict[str, Any]:  # type: ignore[type-arg]
        """Public contract: ``contract.TRAIN_MANY_KWARGS_SCHEMA``."""
        adapters = get_adapters()
        task_id = str(self.request.id)
        limit = adapters.settings.train_many_max_models
        items = parse_training_batch(kwargs, task_id=task_id, max_models=limit)
        limits, wait = record_limits(adapters), current_queue_wait.get()
        return run_niced(
            lambda: train_many(adapters, items, task_id=task_id, limits=limits, queue_wait_s=wait),
            nice=settings.bulk_nice,
        )
