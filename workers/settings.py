"""The one typed settings object. No other module reads the environment.

With no ``PYNOMALY_*`` variable set, everything runs on an embedded default under
``./.pynomaly/``: a SQLite database, a file-system broker, a SQLite result backend and
no cache server. Setting the URLs moves the same code onto Redis + PostgreSQL.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EMBEDDED_BROKER = "filesystem://"
REDIS_SCHEMES = ("redis://", "rediss://")
AMQP_SCHEMES = ("amqp://", "amqps://")
"""RabbitMQ (kombu's py-amqp transport); ``amqps://`` is AMQP over TLS."""
SOURCE_FOLDER = "data"
"""The folder under PYNOMALY_HOME that local ``source`` files may be read from when
PYNOMALY_SOURCE_ROOTS is unset."""
ANY_SOURCE_PATH = '["/"]'
"""PYNOMALY_SOURCE_ROOTS that lets ``source`` name any file the worker can read."""


class Settings(BaseSettings):
    """Runtime configuration, read once from ``PYNOMALY_*`` variables (or a ``.env`` file)."""

    model_config = SettingsConfigDict(
        env_prefix="PYNOMALY_", env_file=".env", extra="ignore", frozen=True
    )

    environment: Literal["development", "test", "production"] = "development"
    home: Path = Field(
        default=Path(".pynomaly"),
        description="Folder for embedded-mode state: SQLite files, broker folders, artifacts.",
    )

    broker_url: str = EMBEDDED_BROKER
    result_backend: str = ""
    database_url: str = ""
    cache_url: str = Field(
        default="", description="Redis URL of the prediction cache; empty = off."
    )
    database_idle_in_transaction_timeout_seconds: float = Field(
        default=60.0,
        ge=0,
        description="PostgreSQL ends a worker's session left this long inside a transaction "
        "(a worker host cut off mid-write), releasing its row locks so the job can complete "
        "on another worker; keep it below the visibility timeout. 0 = the server's setting.",
    )

    # Detection limits: anything past these is bad input, failed without retry.
    max_records_per_job: int = Field(default=100_000, gt=0)
    bulk_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="Nice value added to bulk work (chunks, file and large jobs, training) "
        "so one-record jobs win a core at once; 0 = same priority. Bulk work still gets "
        "every idle core.",
    )
    small_job_max_records: int = Field(
        default=1_000,
        ge=1,
        description="A detection job with at most this many inline records runs in the "
        "small lane (micro-batched, never queued behind bulk work); larger jobs and jobs "
        "that read a file run in the bulk lane with fan-out chunks, training and "
        "maintenance.",
    )
    max_features: int = Field(default=1_024, gt=0)
    top_anomalies: int = Field(default=10, ge=0, le=1_000)
    explain_top_features: int = Field(
        default=5,
        ge=0,
        le=100,
        description="Features named in each anomaly's explanation; 0 = no explanations.",
    )
    chunk_rows: int = Field(default=100_000, gt=0, description="Rows read per source chunk.")
    chunk_max_mb: float = Field(
        default=12.8,
        gt=0,
        description="Largest float64 feature matrix of one source chunk, in MB (10^6 "
        "bytes): a chunk has at most this / (8 x features) rows (100,000 at 16 features), "
        "and at most CHUNK_ROWS.",
    )
    s3_endpoint_url: str = Field(
        default="",
        description="S3-compatible endpoint for s3:// sources (MinIO, Ceph, ...); empty "
        "= AWS (or AWS_ENDPOINT_URL_S3).",
    )
    s3_region: str = Field(default="", description="Region of s3:// sources; empty = AWS_REGION.")
    s3_access_key_id: str = Field(default="", description="Empty = the standard AWS chain.")
    s3_secret_access_key: SecretStr = Field(default=SecretStr(""))
    source_roots: tuple[Path, ...] | None = Field(
        default=None,
        description="Folders local 'source' files must lie in, as a JSON list; unset = "
        f"PYNOMALY_HOME/{SOURCE_FOLDER}. '[\"/\"]' allows any path the worker can read.",
    )

    # Prediction cache.
    cache_ttl_seconds: int = Field(default=3_600, gt=0)
    cache_min_row_cost_us: float = Field(
        default=20.0,
        ge=0,
        description="Use the cache only for models slower than this per row (a Redis "
        "round trip costs a few microseconds per row; fast models skip it).",
    )

    # Micro-batching of detection messages (celery-batches).
    batch_max_jobs: int = Field(default=64, gt=0, description="Flush after this many jobs.")
    batch_max_wait_ms: float = Field(
        default=2.0,
        gt=0,
        description="How often the flush timer looks at waiting jobs (they go once a pool "
        "process is idle; with BATCH_EAGER false, on every tick).",
    )
    batch_eager: bool = Field(
        default=True,
        description="Hand a batch to a pool process as soon as one is idle, and hold it "
        "while none is (until BATCH_MAX_JOBS wait); false flushes every BATCH_MAX_WAIT_MS "
        "or BATCH_MAX_JOBS whatever the pool is doing (celery-batches' own behaviour).",
    )
    prefetch_multiplier: int = Field(
        default=64, gt=0, description="Messages each worker process may hold unacknowledged."
    )

    # Training.
    onnx_parity_tolerance: float = Field(default=1e-4, gt=0)
    max_training_rows: int = Field(default=1_000_000, gt=0)
    train_many_max_models: int = Field(
        default=1_000,
        gt=0,
        description="Most models one pynomaly.train_many message may carry; a longer list "
        "is refused whole (split it). The message must still finish within "
        "TASK_SOFT_TIME_LIMIT: size batches by how long one model takes to train.",
    )

    # Worker behaviour.
    task_soft_time_limit: int = Field(default=600, gt=0)
    task_time_limit: int = Field(default=660, gt=0)
    visibility_timeout_seconds: int = Field(
        default=0,
        ge=0,
        description="Redis brokers: seconds a delivered, unacknowledged message waits before "
        "it is handed to another worker (a worker that died or lost its network). 0 = twice "
        "PYNOMALY_TASK_TIME_LIMIT plus 60 s; if set, it must exceed PYNOMALY_TASK_TIME_LIMIT, "
        "or a long job would run on two workers at once.",
    )
    consumer_dead_after_seconds: int = Field(
        default=30,
        ge=5,
        le=600,
        description="Redis brokers: a consumer whose heartbeat (every sixth of this) is older "
        "than this many seconds is dead, and any live worker requeues the messages it held, "
        "within half this again. Independent of the visibility timeout, which still bounds a "
        "live but stuck worker.",
    )
    retry_max: int = Field(
        default=8,
        ge=0,
        description="Retries of a job on a transient fault (database or Redis down) before "
        "it is failed; every job outlasts an outage of sum(min(BACKOFF_MAX, 2**r) / 2 for r "
        "< RETRY_MAX) seconds (127.5 s with the defaults; domain.retries.outage_tolerance).",
    )
    retry_backoff_max: int = Field(
        default=300,
        gt=0,
        description="Longest wait before a retry, in seconds: once the fault is gone every "
        "waiting job runs again within this.",
    )
    model_cache_size: int = Field(
        default=1_000,
        gt=0,
        description="Model versions a worker process keeps loaded at most (besides "
        "MODEL_CACHE_MB).",
    )
    model_cache_mb: float = Field(
        default=64.0,
        gt=0,
        description="MB of loaded model versions a worker process keeps, least recently "
        "used dropped first (memory-mapped forest arrays are shared by the processes of "
        "a host and count in each).",
    )
    model_ref_ttl_seconds: float = Field(
        default=1.0,
        ge=0,
        description="How long a worker keeps resolving a model name to the same version "
        "(and threshold) before asking the database again, where it cannot hear of "
        "changes: on PostgreSQL a worker LISTENs and sees a new version, a moved alias or "
        "a changed threshold once it commits; on SQLite, or while that connection is "
        "down, this much later.",
    )
    registry_listen: bool = Field(
        default=True,
        description="On PostgreSQL, each worker process LISTENs for registry changes "
        "(one more connection each) and keeps what model names resolve to until one is "
        "heard. Turn it off behind PgBouncer in transaction mode, where LISTEN does not "
        "work: workers then re-read after PYNOMALY_MODEL_REF_TTL_SECONDS.",
    )
    suppression_ttl_seconds: float = Field(
        default=1.0,
        ge=0,
        description="How long a worker keeps the live suppression rules it read (every "
        "model's, in one query) before asking the database again: a rule added or removed "
        "applies within this.",
    )
    worker_concurrency: int = Field(
        default=0,
        ge=0,
        description="Pool processes. 0 = one per core, plus one kept for small detection "
        "jobs when the worker consumes the detection queue (bulk work may use all "
        "processes but that one).",
    )
    worker_max_memory_mb: int = Field(
        default=768,
        ge=0,
        description="Replace a pool process after a task leaves it above this resident "
        "size (training and ONNX export grow a process for good); 0 = never.",
    )

    shadow_fraction: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of the records sent to NAME@champion also scored by "
        "NAME@challenger; 0 = no shadow scoring.",
    )

    # Drift monitoring.
    drift_profiling: bool = Field(
        default=True, description="Fold scored records into drift counts while scoring."
    )
    drift_window_seconds: int = Field(default=3_600, gt=0)
    drift_flush_seconds: float = Field(
        default=10.0, ge=0, description="How often a worker process adds its counts."
    )
    drift_lookback_hours: float = Field(default=24.0, gt=0)
    drift_alpha: float = Field(default=0.01, gt=0, lt=1)
    drift_psi_threshold: float = Field(default=0.1, ge=0)
    drift_min_records: int = Field(default=500, gt=0)

    # Operations.
    metrics_port: int = Field(default=9808, ge=0, le=65_535)
    flower_basic_auth: str = ""
    flower_broker_api: str = Field(
        default="",
        description="RabbitMQ management API URL for Flower's Broker page, e.g. "
        "http://user:password@host:15672/api/ (RabbitMQ only; Redis needs none).",
    )
    flower_max_tasks: int = Field(
        default=10_000, gt=0, description="Tasks Flower keeps in memory (oldest dropped)."
    )
    flower_purge_offline_seconds: int = Field(
        default=600, gt=0, description="Flower forgets a worker offline this long."
    )
    result_ttl_seconds: int = Field(
        default=300,
        gt=0,
        description="How long a job's summary stays in the result backend (the job record "
        "in the database keeps it for good). 1,000 jobs/s x 1 KB x 300 s = 300 MB.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="json: one JSON object a line, for log shippers."
    )
    job_log: bool = Field(
        default=True,
        description="Log one INFO line per finished job (detection job, model trained) "
        "with its job_id, counts, status, duration and queue wait; false turns it off.",
    )
    queue_sample_seconds: float = Field(
        default=15.0, gt=0, description="How often a worker samples the queue lengths."
    )
    liveness_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often the worker writes its heartbeat."
    )
    liveness_max_age_seconds: float = Field(
        default=60.0, gt=0, description="A heartbeat or loop tick older than this fails."
    )
    retention_days: int = Field(
        default=90, ge=1, description="Keep anomalies this many days after detection."
    )
    reindex_bloat_threshold: float = Field(
        default=0.3,
        gt=0,
        lt=1,
        description="REINDEX an index once this fraction of its pages would be freed.",
    )
    slow_queries_top: int = Field(default=20, gt=0, description="Statements slow_queries keeps.")
    stale_job_grace_seconds: int = Field(
        default=60,
        ge=0,
        description="A job still running this long past the hard time limit is stale.",
    )
    stale_job_max_attempts: int = Field(
        default=3, ge=1, description="Attempts before the sweeper fails a stale job."
    )

    # After detection: incidents, webhook notifications, Alertmanager.
    incident_gap_seconds: float = Field(
        default=3_600.0,
        gt=0,
        description="Anomalies of one model version and entity whose record timestamps lie "
        "within this of each other form one incident.",
    )
    incident_resolve_after_seconds: float = Field(
        default=3_600.0,
        gt=0,
        description="An incident without a new anomaly for this long resolves itself.",
    )
    incident_fold_seconds: float = Field(
        default=1.0,
        gt=0,
        description="A worker asks for incident upkeep at most this often (and beat every "
        "ten times this), after settling jobs that found anomalies.",
    )
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, le=60, description="How long one webhook POST may take."
    )
    webhook_max_attempts: int = Field(
        default=10, ge=1, le=50, description="Attempts before a notification is failed."
    )
    webhook_retry_base_seconds: float = Field(
        default=5.0,
        gt=0,
        description="First retry delay of a webhook; each retry doubles it (with full "
        "jitter), up to PYNOMALY_WEBHOOK_RETRY_MAX_SECONDS.",
    )
    webhook_retry_max_seconds: float = Field(
        default=3_600.0, gt=0, description="The longest wait between two webhook attempts."
    )
    alertmanager_url: str = Field(
        default="",
        description="Alertmanager's base URL (e.g. http://alertmanager:9093); empty: open "
        "incidents are not posted as alerts.",
    )
    alertmanager_resend_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How often open incidents are posted again to Alertmanager; each alert "
        "ends four of these later unless posted again.",
    )

    # Beat: the maintenance schedule and the single-beat lock (schedules/).
    maintenance_intervals: dict[str, float] = Field(
        default_factory=dict,
        description="Seconds between runs per maintenance task, as JSON, merged over the "
        "defaults in pynomaly_workers.schedules (0 turns a task off).",
    )
    schedule_jitter_seconds: float = Field(
        default=30.0,
        ge=0,
        description="Each task's interval is stretched by a fixed per-task share of this, so "
        "tasks of equal interval do not all start at once.",
    )
    beat_lock_timeout: int = Field(
        default=10,
        ge=2,
        description="Seconds the leading beat's Redis lock lives unless renewed: a standby "
        "takes over within this plus PYNOMALY_BEAT_MAX_LOOP_INTERVAL of its death.",
    )
    beat_max_loop_interval: int = Field(
        default=2, ge=1, description="Longest a beat sleeps between ticks (and lock renewals)."
    )
    beat_redis_url: str = Field(
        default="",
        description="Redis holding the beat lock and schedule state; default: the broker "
        "when it is Redis, else a Redis result backend beside a RabbitMQ broker. None of "
        "these: a single local beat (the embedded default).",
    )

    @field_validator("flower_basic_auth")
    @classmethod
    def _check_basic_auth(cls, value: str) -> str:
        if value and ":" not in value:
            raise ValueError(
                "PYNOMALY_FLOWER_BASIC_AUTH must look like 'user:password' (a colon between them)"
            )
        return value

    @field_validator("source_roots", mode="before")
    @classmethod
    def _parse_source_roots(cls, value: object) -> object:
        # The environment gives JSON text (parsed by pydantic-settings); accept the same
        # text when settings are built from a mapping of variables.
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except ValueError:
            raise ValueError(
                f"PYNOMALY_SOURCE_ROOTS must be a JSON list of folders, like '[\"/data\"]'; "
                f"got {value!r}"
            ) from None

    @field_validator("source_roots")
    @classmethod
    def _check_source_roots(cls, value: tuple[Path, ...] | None) -> tuple[Path, ...] | None:
        if value is not None and not value:
            raise ValueError(
                "PYNOMALY_SOURCE_ROOTS is an empty list, which would let no source file be "
                "read: list the folders (a JSON list of paths), leave it unset for "
                f"PYNOMALY_HOME/{SOURCE_FOLDER}, or set it to {ANY_SOURCE_PATH} to allow any path"
            )
        return value

    @model_validator(mode="after")
    def _check_result_backend(self) -> Settings:
        if self.result_backend.startswith("rpc://"):
            raise ValueError(
                "PYNOMALY_RESULT_BACKEND=rpc:// cannot hold fanned-out job summaries (a result "
                "goes only to the client that sent the task); set it to a Redis URL, e.g. "
                "redis://host:6379/1"
            )
        if self.is_amqp and not self.result_backend:
            raise ValueError(
                "PYNOMALY_BROKER_URL is RabbitMQ (amqp://), which holds no results: set "
                "PYNOMALY_RESULT_BACKEND to a Redis URL, e.g. redis://host:6379/1"
            )
        return self

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if self.task_time_limit <= self.task_soft_time_limit:
            raise ValueError(
                "PYNOMALY_TASK_TIME_LIMIT must be greater than PYNOMALY_TASK_SOFT_TIME_LIMIT "
                "so a task can clean up between the soft and the hard limit"
            )
        if 0 < self.visibility_timeout_seconds <= self.task_time_limit:
            raise ValueError(
                "PYNOMALY_VISIBILITY_TIMEOUT_SECONDS must be greater than "
                "PYNOMALY_TASK_TIME_LIMIT, or Redis would hand a job still running to a "
                "second worker"
            )
        if self.beat_lock_timeout < 2 * self.beat_max_loop_interval:
            raise ValueError(
                "PYNOMALY_BEAT_LOCK_TIMEOUT must be at least twice PYNOMALY_BEAT_MAX_LOOP_INTERVAL "
                "so the leading beat renews its lock before it expires"
            )
        if self.environment == "production" and self.is_embedded:
            raise ValueError(
                "PYNOMALY_ENVIRONMENT=production needs PYNOMALY_BROKER_URL and "
                "PYNOMALY_DATABASE_URL: the embedded SQLite/file-system default is for one machine"
            )
        return self

    @property
    def is_embedded(self) -> bool:
        """True when the broker is the file-system default (one machine, no servers)."""
        return self.broker_url == EMBEDDED_BROKER

    @property
    def is_redis(self) -> bool:
        """True when the broker is Redis (``redis://`` or ``rediss://``)."""
        return self.broker_url.startswith(REDIS_SCHEMES)

    @property
    def is_amqp(self) -> bool:
        """True when the broker is RabbitMQ (``amqp://`` or ``amqps://``)."""
        return self.broker_url.startswith(AMQP_SCHEMES)

    @property
    def resolved_database_url(self) -> str:
        """The SQLAlchemy URL of the store: the configured one or the embedded SQLite file."""
        return self.database_url or f"sqlite:///{(self.home / 'pynomaly.sqlite3').resolve()}"

    @property
    def resolved_result_backend(self) -> str:
        """Celery's result backend: the configured one, else Redis beside a Redis broker,
        else a SQLite file."""
        if self.result_backend:
            return self.result_backend
        if self.is_redis:
            return self.broker_url
        return f"db+sqlite:///{(self.home / 'results.sqlite3').resolve()}"

    @property
    def resolved_source_roots(self) -> tuple[Path, ...]:
        """The folders local ``source`` files must lie in, absolute, symlinks resolved:
        PYNOMALY_SOURCE_ROOTS, else PYNOMALY_HOME/data."""
        roots = self.source_roots or (self.home / SOURCE_FOLDER,)
        return tuple(root.resolve() for root in roots)

    @property
    def broker_folder(self) -> Path:
        """Where the embedded file-system broker keeps its messages."""
        return (self.home / "broker").resolve()

    @property
    def resolved_beat_redis_url(self) -> str:
        """Where the beat lock lives: the configured Redis, else a Redis broker, else the
        Redis result backend of a RabbitMQ broker, else '' (one local beat)."""
        if self.beat_redis_url:
            return self.beat_redis_url
        if self.is_redis:
            return self.broker_url
        if self.is_amqp and self.result_backend.startswith(REDIS_SCHEMES):
            return self.result_backend
        return ""

    @property
    def visibility_timeout(self) -> int:
        """Seconds before Redis redelivers an unacknowledged message: longer than the hard
        time limit, or a long task would run twice."""
        return self.visibility_timeout_seconds or self.task_time_limit * 2 + 60


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built on first use."""
    return Settings()
