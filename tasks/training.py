"""``pynomaly.train``: fit and register a new model version."""

from __future__ import annotations

from typing import Any

from celery import Task

from pynomaly_workers.bootstrap import get_services
from pynomaly_workers.celery_app import app
from pynomaly_workers.domain.jobs import parse_training_request
from pynomaly_workers.services.detection import record_limits
from pynomaly_workers.services.training import train_model, version_summary
from pynomaly_workers.tasks.base import retry_options


@app.task(name="pynomaly.train", **retry_options())
def train(self: Task, **kwargs: Any) -> dict[str, Any]:  # type: ignore[type-arg]
    """Public contract: see ARCHITECTURE.md."""
    services = get_services()
    request = parse_training_request(kwargs, limits=record_limits(services))
    return version_summary(train_model(services, request))
