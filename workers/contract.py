"""The public contract: every name an upstream service or an operator depends on.

Task names, queue names, routes, job statuses and the keyword arguments of each public
task are written here once; everything else imports them. Adapters in other languages
read the same contract as JSON Schema files (``workers/schemas/*.json``, generated from
:data:`KWARGS_SCHEMAS` by ``make schemas`` and checked by the tests).

This module is plain data: importing it has no effect and needs nothing but the
standard library.
"""

from __future__ import annotations

from typing import Any, Final, Literal

# -- tasks -------------------------------------------------------------------------------
DETECT_TASK: Final = "pynomaly.detect"
"""Score records with a model; the public entry point (micro-batched)."""
DETECT_CHUNK_TASK: Final = "pynomaly.detect.chunk"
"""One chunk of a fanned-out detection job (internal: published by the workers)."""
TRAIN_TASK: Final = "pynomaly.train"
"""Fit and register a new model version."""
TRAIN_MANY_TASK: Final = "pynomaly.train_many"
"""Fit and register many models from one message, each as its own version."""
EVALUATE_TASK: Final = "pynomaly.evaluate"
"""Score a labelled dataset with a model version and store how well the scores rank the
labelled anomalies (``evaluations``); writes no anomaly. Planned on the bulk lane."""
EVALUATE_CHUNK_TASK: Final = "pynomaly.evaluate.chunk"
"""One chunk of an evaluation (internal: published by ``pynomaly.evaluate``)."""
PING_TASK: Final = "pynomaly.health.ping"
"""The canary whose round trip proves a worker consumes."""
MAINTENANCE_PREFIX: Final = "pynomaly.maintenance."
INCIDENTS_PREFIX: Final = "pynomaly.incidents."
NOTIFICATIONS_PREFIX: Final = "pynomaly.notifications."
FOLD_INCIDENTS_TASK: Final = "pynomaly.incidents.fold"
"""Fold the anomalies of settled jobs into incidents (internal: workers and beat send it)."""
RESOLVE_IDLE_TASK: Final = "pynomaly.incidents.resolve_idle"
"""Resolve incidents without a new anomaly for ``PYNOMALY_INCIDENT_RESOLVE_AFTER_SECONDS``."""
DELIVER_TASK: Final = "pynomaly.notifications.deliver"
"""POST one notification to its subscription's webhook (retried with backoff)."""
SWEEP_NOTIFICATIONS_TASK: Final = "pynomaly.notifications.sweep"
"""Send again the notifications whose delivery is overdue (beat)."""
ALERTMANAGER_TASK: Final = "pynomaly.notifications.alertmanager"
"""Post the open incidents to Alertmanager and end the resolved ones (beat)."""


def maintenance_task(name: str) -> str:
    """The task name of maintenance job ``name`` (``pynomaly.maintenance.<name>``)."""
    return f"{MAINTENANCE_PREFIX}{name}"


# -- queues and routes -------------------------------------------------------------------
DETECTION_QUEUE: Final = "detection"
TRAINING_QUEUE: Final = "training"
MAINTENANCE_QUEUE: Final = "maintenance"
NOTIFICATIONS_QUEUE: Final = "notifications"
QUEUES: Final = (DETECTION_QUEUE, TRAINING_QUEUE, MAINTENANCE_QUEUE, NOTIFICATIONS_QUEUE)
"""The public queues: producers publish to these."""
BULK_QUEUE: Final = "detection.bulk"
"""Internal: fan-out chunks, and the detection jobs a worker forwarded because they read
a file or carry more than ``PYNOMALY_SMALL_JOB_MAX_RECORDS`` records. Producers never
publish here; a worker that consumes ``detection`` consumes it too, with a bounded share
of its pool, so a one-record job never queues behind bulk work."""
INTERNAL_QUEUES: Final = (BULK_QUEUE,)
ALL_QUEUES: Final = (*QUEUES, *INTERNAL_QUEUES)

ROUTES: Final[dict[str, dict[str, str]]] = {
    DETECT_TASK: {"queue": DETECTION_QUEUE, "routing_key": DETECTION_QUEUE},
    DETECT_CHUNK_TASK: {"queue": BULK_QUEUE, "routing_key": BULK_QUEUE},
    # An evaluation reads a whole file: both its planning and its chunks are bulk work.
    EVALUATE_TASK: {"queue": BULK_QUEUE, "routing_key": BULK_QUEUE},
    EVALUATE_CHUNK_TASK: {"queue": BULK_QUEUE, "routing_key": BULK_QUEUE},
    TRAIN_TASK: {"queue": TRAINING_QUEUE, "routing_key": TRAINING_QUEUE},
    TRAIN_MANY_TASK: {"queue": TRAINING_QUEUE, "routing_key": TRAINING_QUEUE},
    f"{MAINTENANCE_PREFIX}*": {"queue": MAINTENANCE_QUEUE, "routing_key": MAINTENANCE_QUEUE},
    f"{INCIDENTS_PREFIX}*": {"queue": NOTIFICATIONS_QUEUE, "routing_key": NOTIFICATIONS_QUEUE},
    f"{NOTIFICATIONS_PREFIX}*": {
        "queue": NOTIFICATIONS_QUEUE,
        "routing_key": NOTIFICATIONS_QUEUE,
    },
}


def queue_of(task_name: str) -> str:
    """The queue a task is routed to (the detection queue for anything unrouted)."""
    route = ROUTES.get(task_name)
    for prefix in (MAINTENANCE_PREFIX, INCIDENTS_PREFIX, NOTIFICATIONS_PREFIX):
        if route is None and task_name.startswith(prefix):
            route = ROUTES[f"{prefix}*"]
    return route["queue"] if route else DETECTION_QUEUE


# -- job statuses ------------------------------------------------------------------------
JobStatus = Literal["queued", "running", "succeeded", "failed"]
QUEUED: Final[JobStatus] = "queued"
RUNNING: Final[JobStatus] = "running"
SUCCEEDED: Final[JobStatus] = "succeeded"
FAILED: Final[JobStatus] = "failed"
JOB_STATUSES: Final[tuple[JobStatus, ...]] = (QUEUED, RUNNING, SUCCEEDED, FAILED)
OPEN_STATUSES: Final[tuple[JobStatus, ...]] = (QUEUED, RUNNING)
"""A job in one of these may still be (re)started."""
FINAL_STATUSES: Final[tuple[JobStatus, ...]] = (SUCCEEDED, FAILED)
"""A job in one of these never changes again."""

# -- keyword arguments -------------------------------------------------------------------
ALGORITHMS: Final = ("iforest", "lof", "ocsvm", "elliptic", "hbos", "ecod")
NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
JOB_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
ALIAS_PATTERN: Final = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
MODEL_REF_PATTERN: Final = (
    r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}(@([1-9][0-9]*|[A-Za-z][A-Za-z0-9_-]{0,63}))?$"
)

_RECORDS: dict[str, Any] = {
    "type": "array",
    "minItems": 1,
    "description": "Rows of equal length; each value a finite number.",
    "items": {"type": "array", "minItems": 1, "items": {"type": "number"}},
}
_INPUT_PROPERTIES: dict[str, Any] = {
    "records": _RECORDS,
    "dataset": {
        "type": "string",
        "pattern": NAME_PATTERN,
        "description": "Name of a registered dataset.",
    },
    "source": {
        "type": "string",
        "minLength": 1,
        "description": "Path or file:// URI of a CSV/Parquet file the workers can read.",
    },
}
_INPUTS = ("records", "dataset", "source")
_ONE_INPUT: list[dict[str, Any]] = [
    {"required": [key], "not": {"anyOf": [{"required": [o]} for o in _INPUTS if o != key]}}
    for key in _INPUTS
]

DETECT_KWARGS_SCHEMA: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "pynomaly.detect.kwargs.json",
    "title": f"{DETECT_TASK} keyword arguments",
    "description": "Score records with a model version. Give exactly one of records, "
    "dataset or source. Send as the kwargs of a Celery protocol-2 message (no args).",
    "type": "object",
    "additionalProperties": False,
    "required": ["model"],
    "oneOf": _ONE_INPUT,
    "properties": {
        "job_id": {
            "type": "string",
            "pattern": JOB_ID_PATTERN,
            "description": "Idempotency key; the task id when absent.",
        },
        "model": {
            "type": "string",
            "pattern": MODEL_REF_PATTERN,
            "description": "'name' (its active version), 'name@version' or 'name@alias' "
            "(e.g. name@champion: the version the alias points at).",
        },
        **_INPUT_PROPERTIES,
        "record_ids": {
            "type": "array",
            "description": "One id per record (with records only).",
            "items": {"type": ["string", "integer"], "maxLength": 256},
        },
        "timestamps": {
            "type": "array",
            "description": "One per record: ISO-8601 text or Unix seconds (with records only).",
            "items": {"type": ["string", "number"]},
        },
        "entities": {
            "type": "array",
            "description": "One entity per record (a device, a customer; with records only): "
            "incidents group anomalies per model version and entity.",
            "items": {"type": ["string", "integer"], "maxLength": 256},
        },
        "entity_field": {
            "type": "string",
            "minLength": 1,
            "description": "With dataset or source: the column that names each record's "
            "entity (read as text, not a feature).",
        },
    },
}

TRAIN_KWARGS_SCHEMA: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "pynomaly.train.kwargs.json",
    "title": f"{TRAIN_TASK} keyword arguments",
    "description": "Fit and register a new immutable model version. Give exactly one of "
    "records, dataset or source.",
    "type": "object",
    "additionalProperties": False,
    "required": ["model"],
    "oneOf": _ONE_INPUT,
    "properties": {
        "model": {
            "type": "string",
            "pattern": NAME_PATTERN,
            "description": "Name to register the new version under.",
        },
        "algorithm": {"enum": list(ALGORITHMS), "default": ALGORITHMS[0]},
        **_INPUT_PROPERTIES,
        "contamination": {
            "type": "number",
            "exclusiveMinimum": 0,
            "exclusiveMaximum": 0.5,
            "default": 0.01,
            "description": "Expected share of anomalies; sets the threshold.",
        },
        "params": {
            "type": "object",
            "description": "Estimator parameters (scikit-learn names), e.g. n_estimators.",
        },
    },
}

TRAIN_MANY_KWARGS_SCHEMA: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "pynomaly.train_many.kwargs.json",
    "title": f"{TRAIN_MANY_TASK} keyword arguments",
    "description": "Fit and register many models, each as its own immutable version, "
    f"in order. Each item is what {TRAIN_TASK} takes. At most PYNOMALY_TRAIN_MANY_MAX_MODELS "
    "items (1000 by default). A message that breaks this schema outside the items is "
    "refused whole; an item the workers cannot train fails alone and is reported in the "
    "result. Idempotent by the Celery task id: resend with the same task id.",
    "type": "object",
    "additionalProperties": False,
    "required": ["models"],
    "properties": {
        "models": {
            "type": "array",
            "minItems": 1,
            "description": f"One {TRAIN_TASK} keyword-argument object per model.",
            "items": {
                key: value
                for key, value in TRAIN_KWARGS_SCHEMA.items()
                if key not in ("$schema", "$id", "title")
            },
        },
    },
}

EVALUATION_PURPOSES: Final = ("evaluate", "promotion")
"""Why an evaluation ran: asked for (``evaluate``), or as the evidence of an alias move
(``models alias ... --require-better``)."""

EVALUATE_KWARGS_SCHEMA: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "pynomaly.evaluate.kwargs.json",
    "title": f"{EVALUATE_TASK} keyword arguments",
    "description": "Score a dataset registered with a label column and store average "
    "precision, ROC-AUC, precision/recall/F1 at the version's threshold, precision at k "
    "and alerts per 1,000 records in 'evaluations'. No anomaly is written. Published to "
    f"the '{BULK_QUEUE}' queue by 'pynomaly-workers evaluate'; the job_id is the "
    "idempotency key (a redelivered evaluation is stored once).",
    "type": "object",
    "additionalProperties": False,
    "required": ["job_id", "model", "dataset"],
    "properties": {
        "job_id": {"type": "string", "pattern": JOB_ID_PATTERN},
        "model": {
            "type": "string",
            "pattern": MODEL_REF_PATTERN,
            "description": "'name', 'name@version' or 'name@alias', resolved once, when "
            "the evaluation is planned.",
        },
        "dataset": {
            "type": "string",
            "pattern": NAME_PATTERN,
            "description": "A dataset registered with --label-column.",
        },
        "purpose": {"enum": list(EVALUATION_PURPOSES), "default": EVALUATION_PURPOSES[0]},
        "actor": {"type": "string", "minLength": 1, "maxLength": 128},
    },
}

KWARGS_SCHEMAS: Final[dict[str, dict[str, Any]]] = {
    DETECT_TASK: DETECT_KWARGS_SCHEMA,
    TRAIN_TASK: TRAIN_KWARGS_SCHEMA,
    TRAIN_MANY_TASK: TRAIN_MANY_KWARGS_SCHEMA,
    EVALUATE_TASK: EVALUATE_KWARGS_SCHEMA,
}


def kwargs_keys(task_name: str) -> frozenset[str]:
    """The keyword arguments a public task accepts."""
    return frozenset(KWARGS_SCHEMAS[task_name]["properties"])
