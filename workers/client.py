"""A small client for upstream Python services: publish jobs by task name.

It needs only the broker URL. It imports the contract, the settings and the Celery
configuration, never a task, a service or a model library, so publishing is cheap.
Services in other languages publish the same message themselves (see README,
"Enqueueing from any language").
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.signals import before_task_publish

from pynomaly_workers.contract import (
    DETECT_TASK,
    TRAIN_MANY_TASK,
    TRAIN_TASK,
    queue_of,
)
from pynomaly_workers.domain.summaries import kwargs_summary
from pynomaly_workers.settings import Settings, get_settings


@dataclass(frozen=True, slots=True)
class Submission:
    """What was published: the job's idempotency key and Celery's task id."""

    job_id: str
    task_id: str


def client_app(settings: Settings | None = None) -> Celery:
    """A Celery app that can publish (and read results) but defines no tasks."""
    from pynomaly_workers.celery_config import celery_config, stamp_sent_at

    settings = settings or get_settings()
    app = Celery("pynomaly_client", set_as_current=False)
    app.conf.update(celery_config(settings))
    before_task_publish.connect(stamp_sent_at, weak=False, dispatch_uid="pynomaly-sent-at")
    return app


def publish(app: Celery, name: str, *, kwargs: dict[str, Any], **options: Any) -> Any:
    """Send task ``name`` with ``kwargs``. What events, Flower and logs show of the
    arguments is a bounded summary (``kwargsrepr``), never the records themselves."""
    return app.send_task(
        name,
        kwargs=kwargs,
        argsrepr="()",
        kwargsrepr=kwargs_summary(kwargs),
        queue=options.pop("queue", queue_of(name)),
        **options,
    )


def close_app(app: Celery) -> None:
    """Release a client app's broker and result-backend connections."""
    backend: Any = app.backend
    consumer: Any = getattr(backend, "result_consumer", None)
    pubsub = getattr(consumer, "_pubsub", None)
    if pubsub is not None:
        pubsub.close()
        # Forgotten, not only closed: an AsyncResult collected later unsubscribes in its
        # __del__, and a closed PubSub takes a fresh connection from the pool for that,
        # which nothing would close.
        consumer._pubsub = None
    client = getattr(backend, "client", None)
    if client is not None and hasattr(client, "close"):
        client.close()
        # Celery hands the client its own pool, which close() leaves connected.
        pool = getattr(client, "connection_pool", None)
        if pool is not None:
            pool.disconnect()
    app.close()


def new_job_id() -> str:
    """A fresh, unique job id."""
    return f"job-{uuid.uuid4().hex}"


def detection_kwargs(
    *,
    model: str,
    records: Sequence[Sequence[float]] | None = None,
    record_ids: Sequence[str | int] | None = None,
    timestamps: Sequence[str | float] | None = None,
    dataset: str | None = None,
    source: str | None = None,
    job_id: str | None = None,
    entities: Sequence[str | int] | None = None,
    entity_field: str | None = None,
) -> dict[str, Any]:
    """The keyword arguments of ``pynomaly.detect`` (``contract.DETECT_KWARGS_SCHEMA``)."""
    kwargs: dict[str, Any] = {"job_id": job_id or new_job_id(), "model": model}
    optional = {
        "records": [list(map(float, row)) for row in records] if records is not None else None,
        "record_ids": list(record_ids) if record_ids is not None else None,
        "timestamps": list(timestamps) if timestamps is not None else None,
        "dataset": dataset,
        "source": source,
        "entities": list(entities) if entities is not None else None,
        "entity_field": entity_field,
    }
    kwargs.update({key: value for key, value in optional.items() if value is not None})
    return kwargs


def submit_detection(
    *,
    model: str,
    records: Sequence[Sequence[float]] | None = None,
    record_ids: Sequence[str | int] | None = None,
    timestamps: Sequence[str | float] | None = None,
    dataset: str | None = None,
    source: str | None = None,
    job_id: str | None = None,
    app: Celery | None = None,
    entities: Sequence[str | int] | None = None,
    entity_field: str | None = None,
) -> Submission:
    """Publish ``pynomaly.detect``. Re-sending the same ``job_id`` is safe: the workers
    run each job id to one outcome and write its anomalies once."""
    kwargs = detection_kwargs(
        model=model,
        records=records,
        record_ids=record_ids,
        timestamps=timestamps,
        dataset=dataset,
        source=source,
        job_id=job_id,
        entities=entities,
        entity_field=entity_field,
    )
    result = publish(app or client_app(), DETECT_TASK, kwargs=kwargs)
    return Submission(job_id=kwargs["job_id"], task_id=str(result.id))


def training_kwargs(
    *,
    model: str,
    algorithm: str = "iforest",
    records: Sequence[Sequence[float]] | None = None,
    dataset: str | None = None,
    source: str | None = None,
    contamination: float = 0.01,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The keyword arguments of ``pynomaly.train`` (``contract.TRAIN_KWARGS_SCHEMA``)."""
    kwargs: dict[str, Any] = {
        "model": model,
        "algorithm": algorithm,
        "contamination": contamination,
        "params": params or {},
    }
    if records is not None:
        kwargs["records"] = [list(map(float, row)) for row in records]
    kwargs.update({k: v for k, v in {"dataset": dataset, "source": source}.items() if v})
    return kwargs


def submit_training(
    *,
    model: str,
    algorithm: str = "iforest",
    records: Sequence[Sequence[float]] | None = None,
    dataset: str | None = None,
    source: str | None = None,
    contamination: float = 0.01,
    params: dict[str, Any] | None = None,
    app: Celery | None = None,
) -> Submission:
    """Publish ``pynomaly.train``; the job id is Celery's task id."""
    kwargs = training_kwargs(
        model=model,
        algorithm=algorithm,
        records=records,
        dataset=dataset,
        source=source,
        contamination=contamination,
        params=params,
    )
    result = publish(app or client_app(), TRAIN_TASK, kwargs=kwargs)
    return Submission(job_id=str(result.id), task_id=str(result.id))


def training_many_kwargs(models: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The keyword arguments of ``pynomaly.train_many``
    (``contract.TRAIN_MANY_KWARGS_SCHEMA``): one :func:`training_kwargs` object per model."""
    return {"models": [dict(item) for item in models]}


def submit_training_many(
    *,
    models: Sequence[Mapping[str, Any]],
    task_id: str | None = None,
    app: Celery | None = None,
) -> Submission:
    """Publish ``pynomaly.train_many``: many models in one message, each item the
    keyword arguments of ``pynomaly.train`` (as :func:`training_kwargs` builds them), each
    registered as its own version. The job id is the task id; re-sending with the same
    ``task_id`` registers no model twice."""
    task_id = task_id or str(uuid.uuid4())
    kwargs = training_many_kwargs(models)
    publish(app or client_app(), TRAIN_MANY_TASK, kwargs=kwargs, task_id=task_id)
    return Submission(job_id=task_id, task_id=task_id)
