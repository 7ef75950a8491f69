"""``pynomaly.train``: fit and register a new model version."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task

from pynomaly_workers.bootstrap import get_adapters
from pynomaly_workers.contract import TRAIN_TASK
from pynomaly_workers.domain.jobs import parse_training_request
from pynomaly_workers.services.detection import record_limits
from pynomaly_workers.services.training import train_model, version_summary
from pynomaly_workers.settings import Settings
from pynomaly_workers.tasks.base import retry_options


def register(app: Celery, settings: Settings) -> None:
    """Define ``pynomaly.train`` on ``app``."""

    @app.task(name=TRAIN_TASK, **retry_options(settings))
    def train(self: Task, **kwargs: Any) -> dict[str, Any]:  # type: ignore[type-arg]
        """Public contract: ``contract.TRAIN_KWARGS_SCHEMA``."""
        adapters = get_adapters()
        request = parse_training_request(kwargs, limits=record_limits(adapters))
        return version_summary(train_model(adapters, request))
