"""The guide's per-record pattern, kept only as the baseline the project must beat.

One Celery task per record; a per-item Redis look-up whose value is a pickle (GET, then
``pickle.loads`` on a hit, ``SET`` of ``pickle.dumps`` on a miss); the record scored alone
with scikit-learn; an ORM insert and a commit per anomaly. The pickle cache is the
guide's unsafe pattern (anyone who can write to that Redis can run code in the worker);
it is confined to this benchmark baseline and must not be copied into the project.

Run by the suite as ``python -m celery -A benchmarks.naive worker -c 2 -Q bench-naive``
with its own Redis database; its own small app, JSON serializer only.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import redis
from celery import Celery
from celery.signals import worker_init, worker_process_init
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from pynomaly_workers.adapters.scorers import sklearn
from pynomaly_workers.adapters.stores.engine import build_engine
from pynomaly_workers.adapters.stores.sql import SqlStore
from pynomaly_workers.adapters.stores.tables import AnomalyRow
from pynomaly_workers.domain.models import ModelRef, ModelVersion
from pynomaly_workers.domain.scoring import severity

QUEUE = "bench-naive"
TASK_NAME = "bench.naive.score_record"
DONE_KEY = "bench:naive:done"
CACHE_TTL_SECONDS = 3600
_DEFAULT_REDIS = "redis://127.0.0.1:6379/11"


@dataclass(frozen=True, slots=True)
class NaiveConfig:
    """Where the baseline's broker, prediction cache and database are."""

    broker_url: str
    cache_url: str
    database_url: str


def config_from_env() -> NaiveConfig:
    """The worker reads its URLs from ``BENCH_NAIVE_*`` (set by the suite)."""
    return NaiveConfig(
        broker_url=os.environ.get("BENCH_NAIVE_BROKER_URL", _DEFAULT_REDIS),
        cache_url=os.environ.get("BENCH_NAIVE_CACHE_URL", _DEFAULT_REDIS),
        database_url=os.environ.get("BENCH_NAIVE_DATABASE_URL", ""),
    )


def create_app(config: NaiveConfig) -> Celery:
    """A Celery app of its own: JSON only, no result backend, one queue."""
    naive_app = Celery("bench_naive", broker=config.broker_url, set_as_current=False)
    naive_app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue=QUEUE,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return naive_app


CONFIG = config_from_env()
app = create_app(CONFIG)


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model version and its fitted estimator, loaded once per process."""

    version: ModelVersion
    estimator: Any


@dataclass(slots=True)
class ProcessState:
    """Per-process resources, built after fork on the first task."""

    engine: Engine
    cache: redis.Redis
    models: dict[str, LoadedModel] = field(default_factory=dict)

    def model(self, name: str) -> LoadedModel:
        """The active version of ``name``, loaded from the store on first use."""
        if name not in self.models:
            store = SqlStore(self.engine)
            version = store.get_model(ModelRef(name))
            estimator = sklearn.load(store.load_artifact(version.artifact_sha256))
            self.models[name] = LoadedModel(version=version, estimator=estimator)
        return self.models[name]


_state: ProcessState | None = None


def process_state() -> ProcessState:
    """This process's resources."""
    global _state  # noqa: PLW0603 - one set per process, as in the guide
    if _state is None:
        _state = ProcessState(
            engine=build_engine(CONFIG.database_url),
            cache=redis.Redis.from_url(CONFIG.cache_url),
        )
    return _state


@worker_init.connect
def _import_before_fork(**_: Any) -> None:
    # scikit-learn is imported lazily by the project's scorer module; import it once in
    # the parent so each pool process does not pay for it on its first record.
    import sklearn.ensemble  # noqa: F401


@worker_process_init.connect
def _reset_after_fork(**_: Any) -> None:
    global _state  # noqa: PLW0603
    _state = None


def predict(model: LoadedModel, record: list[float]) -> dict[str, Any]:
    """Score one record on its own."""
    scores = sklearn.SklearnScorer(model.estimator).score(np.asarray([record], dtype=np.float64))
    return {
        "score": float(scores[0]),
        "severity": float(severity(scores, model.version.stats)[0]),
        "is_anomaly": bool(scores[0] > model.version.threshold),
    }


def cached_predict(cache: redis.Redis, model: LoadedModel, record: list[float]) -> dict[str, Any]:
    """The guide's per-item cache: one GET per record, pickled values."""
    key = f"prediction:{model.version.id}:{hash(str(record))}"
    cached = cache.get(key)
    if isinstance(cached, bytes):
        prediction: dict[str, Any] = pickle.loads(cached)  # the guide's unsafe pattern
        return prediction
    prediction = predict(model, record)
    cache.set(key, pickle.dumps(prediction), ex=CACHE_TTL_SECONDS)
    return prediction


def insert_anomaly(
    engine: Engine,
    model: LoadedModel,
    *,
    job_id: str,
    record_index: int,
    prediction: dict[str, Any],
) -> None:
    """One ORM insert and one commit for one anomaly."""
    with Session(engine) as session:
        session.add(
            AnomalyRow(
                job_id=job_id,
                record_index=record_index,
                model_id=model.version.id,
                record_id=None,
                timestamp=datetime.now(UTC),
                score=prediction["score"],
                severity=prediction["severity"],
                status="active",
            )
        )
        session.commit()


@app.task(name=TASK_NAME)
def score_record(job_id: str, model: str, record_index: int, record: list[float]) -> None:
    """Score one record and store it if it is an anomaly; count it as done."""
    state = process_state()
    loaded = state.model(model)
    prediction = cached_predict(state.cache, loaded, record)
    if prediction["is_anomaly"]:
        insert_anomaly(
            state.engine, loaded, job_id=job_id, record_index=record_index, prediction=prediction
        )
    # Stands in for the result Celery would store: one Redis write, countable in one call.
    state.cache.incr(DONE_KEY)
