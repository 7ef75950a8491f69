"""``pynomaly.detect``: score records, persist anomalies, return the job summary."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task

from pynomaly_workers.bootstrap import get_services
from pynomaly_workers.celery_app import app
from pynomaly_workers.domain.errors import InvalidInput
from pynomaly_workers.services.detection import run_detection
from pynomaly_workers.tasks.base import retry_options

log = logging.getLogger(__name__)


class DetectionTask(Task):  # type: ignore[type-arg]
    """Records the failure on the job when a job dies of something other than bad input
    (retries exhausted, a bug), so no job is left ``running`` forever."""

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if isinstance(exc, InvalidInput):
            return
        job_id = kwargs.get("job_id") or task_id
        try:
            services = get_services()
            services.store.fail_job(
                str(job_id),
                error=f"{type(exc).__name__}: {exc}",
                error_type="internal_error",
                now=services.clock.now(),
            )
        except Exception:  # the store may be the thing that is down
            log.exception("could not record failure of job %s", job_id)


@app.task(name="pynomaly.detect", base=DetectionTask, **retry_options())
def detect(self: Task, **kwargs: Any) -> dict[str, Any]:  # type: ignore[type-arg]
    """Public contract: see ARCHITECTURE.md. The job_id defaults to the task id."""
    return run_detection(get_services(), kwargs, default_job_id=str(self.request.id))
