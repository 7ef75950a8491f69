"""The baseline of the zero-loss scenario: a plain Celery app on stock kombu's Redis
transport, with no pynomaly code. Run as ``celery -A tests.faults.stock_app worker``.

Its one task does nothing but count its execution of a job id in a hash on a second Redis
(``STOCK_RECORD_URL``, a server the scenario never restarts), so what the broker lost is
``accepted - recorded``. Late acknowledgement, a prefetch of one and a visibility timeout
of 30 s: the settings that lose least on stock kombu.
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery

BROKER_ENV = "STOCK_BROKER_URL"
RECORD_ENV = "STOCK_RECORD_URL"
TASK = "stock.record"
QUEUE = "celery"
EXECUTIONS_KEY = "stock.executions"
"""Hash on the recording Redis: job id -> how many times the task ran for it."""
VISIBILITY_TIMEOUT = 30


def stock_config(broker_url: str) -> dict[str, Any]:
    """The plain Celery settings of the baseline (workers and the producer alike)."""
    return {
        "broker_url": broker_url,
        "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT},
        "broker_connection_retry_on_startup": True,
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "worker_hijack_root_logger": False,
    }


app = Celery("stock", set_as_current=False)
app.conf.update(stock_config(os.environ.get(BROKER_ENV, "redis://127.0.0.1:6379/2")))
_recorder: list[redis.Redis] = []


@app.task(name=TASK)
def record(job_id: str) -> None:
    """Count one execution of ``job_id``."""
    if not _recorder:  # made in the pool process that runs the task, after the fork
        _recorder.append(redis.Redis.from_url(os.environ[RECORD_ENV]))
    _recorder[0].hincrby(EXECUTIONS_KEY, job_id, 1)
