"""``pynomaly.evaluate`` (plan a labelled evaluation) and ``pynomaly.evaluate.chunk``
(score one chunk of it), both on the bulk lane."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task

from pynomaly_workers.adapters.priority import run_niced
from pynomaly_workers.bootstrap import get_adapters
from pynomaly_workers.client import publish
from pynomaly_workers.contract import EVALUATE_CHUNK_TASK, EVALUATE_TASK
from pynomaly_workers.services.evaluation import plan_evaluation, run_evaluation_chunk
from pynomaly_workers.settings import Settings
from pynomaly_workers.tasks.base import retry_options


def register(app: Celery, settings: Settings) -> None:
    """Define the evaluation tasks on ``app``."""

    @app.task(name=EVALUATE_TASK, **retry_options(settings))
    def evaluate(self: Task, **kwargs: Any) -> dict[str, Any]:  # type: ignore[type-arg]
        """Public contract: ``contract.EVALUATE_KWARGS_SCHEMA``."""
        chunks = run_niced(lambda: plan_evaluation(get_adapters(), kwargs), nice=settings.bulk_nice)
        for chunk in chunks:
            publish(self.app, EVALUATE_CHUNK_TASK, kwargs=chunk)
        return {"job_id": kwargs.get("job_id"), "chunks": len(chunks)}

    @app.task(name=EVALUATE_CHUNK_TASK, **retry_options(settings))
    def evaluate_chunk(self: Task, **kwargs: Any) -> dict[str, Any]:  # type: ignore[type-arg]
        """One chunk of an evaluation (internal; published by ``pynomaly.evaluate``)."""
        done = run_niced(
            lambda: run_evaluation_chunk(get_adapters(), kwargs), nice=settings.bulk_nice
        )
        return {"job_id": kwargs["job_id"], "finished": done.status if done else None}
