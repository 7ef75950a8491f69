"""The interfaces the core needs from the outside world. Adapters implement them."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from pynomaly_workers.contract import JobStatus
from pynomaly_workers.domain.alerting import AlertedIncident
from pynomaly_workers.domain.drift import DriftCounts
from pynomaly_workers.domain.errors import InvalidInput
from pynomaly_workers.domain.evaluation import Evaluation
from pynomaly_workers.domain.explain import Attribution
from pynomaly_workers.domain.incidents import IncidentStatus, Label
from pynomaly_workers.domain.joblog import JobLine
from pynomaly_workers.domain.jobs import ChunkTally, JobSummary
from pynomaly_workers.domain.models import AliasMove, ModelRef, ModelVersion
from pynomaly_workers.domain.notifications import (
    Claim,
    Decision,
    Delivery,
    PostResult,
    Subscription,
)
from pynomaly_workers.domain.profile import TrainingProfile
from pynomaly_workers.domain.records import Matrix
from pynomaly_workers.domain.scoring import Scores, ScoreStats
from pynomaly_workers.domain.shadow import ShadowTally
from pynomaly_workers.domain.suppression import RuleDraft, SuppressionRule
from pynomaly_workers.domain.thresholds import AlertPrecision, ThresholdChange


@dataclass(frozen=True, slots=True)
class ModelDraft:
    """Everything needed to register a new version; the store assigns id and version."""

    name: str
    algorithm: str
    artifact: bytes
    onnx: bytes | None
    n_features: int
    stats: ScoreStats
    params: dict[str, Any]
    parity_max_error: float | None
    parity_tolerance: float | None
    n_training_rows: int
    profile: TrainingProfile | None = None
    training_task_id: str | None = None
    """The Celery task id of the training request; one version per id, however often
    the message is delivered."""


@dataclass(frozen=True, slots=True)
class AnomalyBatch:
    """Columnar anomalies of one job (or one chunk of it), ready for a bulk write."""

    job_id: str
    model_id: int
    record_index: npt.NDArray[np.int64]
    score: Scores
    severity: Scores
    timestamp: Sequence[datetime]
    record_id: Sequence[str | None]
    explanation: Sequence[dict[str, Any] | None] | None = None
    entity: Sequence[str | None] | None = None
    suppressed_by: Sequence[int | None] | None = None
    """Per row, the suppression rule that matched it (None: no row was suppressed)."""

    def __len__(self) -> int:
        return int(self.record_index.size)

    @property
    def n_suppressed(self) -> int:
        """Rows a suppression rule matched."""
        marks = self.suppressed_by
        return 0 if marks is None else sum(1 for m in marks if m is not None)


@dataclass(frozen=True, slots=True)
class JobResult:
    """A scored job ready to be settled: its summary and its anomalies."""

    summary: JobSummary
    model_id: int
    anomalies: AnomalyBatch
    dataset_name: str | None = None


@dataclass(frozen=True, slots=True)
class JobFailure:
    """A job that failed on bad input."""

    job_id: str
    model: str
    error: str
    error_type: str


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """One scored chunk of a job: what it adds to the summary, and its anomalies."""

    chunk_index: int
    tally: ChunkTally
    anomalies: AnomalyBatch


@dataclass(frozen=True, slots=True)
class ChunkOutcome:
    """What settling a chunk of a fanned-out job did: ``job`` is the job afterwards;
    ``completed`` is True for the one chunk whose commit finished it."""

    job: JobRecord
    completed: bool


@dataclass(frozen=True, slots=True)
class AnomalyRecord:
    """One stored anomaly."""

    job_id: str
    record_index: int
    model_id: int
    record_id: str | None
    timestamp: datetime
    score: float
    severity: float
    status: str
    explanation: dict[str, Any] | None = None
    id: int | None = None
    entity: str | None = None
    suppressed_by: int | None = None
    """The suppression rule that matched it: stored, never notified, not in incidents."""


@dataclass(frozen=True, slots=True)
class JobRecord:
    """The stored state of a detection job."""

    job_id: str
    status: JobStatus
    model: str | None
    n_records: int | None = None
    n_anomalies: int | None = None
    cache_hits: int | None = None
    threshold: float | None = None
    error: str | None = None
    error_type: str | None = None
    summary: dict[str, Any] | None = None
    attempts: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: float | None = None
    task_id: str | None = None


@dataclass(frozen=True, slots=True)
class JobProgress:
    """How far a fanned-out job has got: its chunks done of total, and their records."""

    chunks_done: int
    chunks_total: int
    records: int


@dataclass(frozen=True, slots=True)
class Dataset:
    """A named CSV/Parquet file registered for training and detection."""

    name: str
    uri: str
    format: str
    n_rows: int
    n_features: int
    status: str = "ready"
    created_at: datetime | None = None
    columns: list[str] = field(default_factory=list)
    label_column: str | None = None
    """The column saying which records are anomalies (1) or normal (0): read only by
    ``evaluate``, never a feature."""


class ModelStore(Protocol):
    """Registry of immutable model versions and their artifacts."""

    def register_model(self, draft: ModelDraft, *, now: datetime) -> ModelVersion:
        """Store a new version (next number for the name) and make it the active one;
        if a version already carries the draft's ``training_task_id``, return that one."""

    def find_trained_by(self, training_task_id: str) -> ModelVersion | None:
        """The version registered by that training task, if any."""

    def get_model(self, ref: ModelRef) -> ModelVersion:
        """The referenced version; raises ``UnknownModel``."""

    def get_active_models(self, names: Collection[str]) -> dict[str, ModelVersion]:
        """The active version of each of ``names`` that has one, in one read (a name
        without one is left out: ``get_model`` says why)."""

    def list_models(
        self,
        *,
        name: str | None = None,
        match: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ModelVersion]:
        """Versions by name, newest first per name: those named ``name`` and/or whose name
        contains ``match`` (any case); the ``limit`` after the first ``offset`` (all when
        ``limit`` is None)."""

    def count_models(self, *, name: str | None = None, match: str | None = None) -> int:
        """How many versions :meth:`list_models` would list without a limit."""

    def count_trained_by(self, task_id: str) -> int:
        """How many versions the ``pynomaly.train_many`` task ``task_id`` has registered
        so far (each records ``task_id:index``)."""

    def load_artifact(self, sha256: str) -> bytes:
        """Artifact bytes by content hash; raises ``ArtifactCorrupt`` if they do not match."""

    def set_alias(
        self,
        name: str,
        alias: str,
        version: int,
        *,
        now: datetime,
        actor: str | None = None,
        reason: str | None = None,
        evidence: dict[str, Any] | None = None,
    ) -> AliasMove:
        """Point ``name@alias`` at ``version`` (raises ``UnknownModel``); record the move."""

    def rollback_alias(self, name: str, alias: str, *, now: datetime) -> AliasMove:
        """Point the alias back where it pointed before its last move; record the move."""

    def alias_history(self, name: str, *, alias: str | None = None) -> list[AliasMove]:
        """Every move of the model's aliases, newest first."""


class JobStore(Protocol):
    """Detection job records: one row per ``job_id``, one terminal status."""

    def enqueue_job(self, job_id: str, *, model: str, now: datetime) -> None:
        """Record a job as ``queued`` unless it exists already."""

    def claim_job(self, job_id: str, *, model: str, now: datetime) -> JobRecord:
        """Mark the job ``running`` (creating it if needed) and return it. A job that is
        already ``succeeded`` or ``failed`` is returned unchanged."""

    def complete_job(
        self, summary: JobSummary, *, model_id: int, now: datetime, extra: dict[str, Any]
    ) -> None:
        """Store the summary and mark the job ``succeeded``."""

    def fail_job(self, job_id: str, *, error: str, error_type: str, now: datetime) -> JobRecord:
        """Mark the job ``failed`` with a message and drop its anomalies, unless it
        already succeeded (a failed job has no anomalies); return the job afterwards."""

    def settle_jobs(
        self, results: Sequence[JobResult], failures: Sequence[JobFailure], *, now: datetime
    ) -> dict[str, JobRecord]:
        """In one transaction, record finished small jobs (anomalies and summary) and
        failed ones. Jobs that had already finished are left alone and returned, so the
        caller can answer with their stored outcome."""

    def start_fan_out(
        self,
        job_id: str,
        *,
        task_id: str,
        chunks_total: int,
        model_id: int,
        dataset_name: str | None,
    ) -> None:
        """Record that a claimed (running) job is scored in ``chunks_total`` chunks and
        that ``task_id`` waits for its outcome."""

    def complete_chunk(
        self, job_id: str, chunk: ChunkResult, *, version: ModelVersion, top_k: int, now: datetime
    ) -> ChunkOutcome:
        """Write a chunk's anomalies and counts once; the last chunk completes the job
        with the summary of all its chunks (``summarize``) in the same transaction."""

    def get_job(self, job_id: str) -> JobRecord | None:
        """The job, or None."""

    def job_progress(self, job_id: str) -> JobProgress | None:
        """The chunks a fanned-out job has finished so far, or None for a job that is
        unknown or not (yet) fanned out."""

    def list_jobs(self, *, status: str | None = None, limit: int = 50) -> list[JobRecord]:
        """Most recent jobs first."""


class AnomalyStore(Protocol):
    """Anomalies, unique on (job_id, record_index)."""

    def add_anomalies(self, batch: AnomalyBatch) -> int:
        """Insert the batch, skipping rows that exist; return how many were new."""

    def list_anomalies(
        self,
        *,
        job_id: str | None = None,
        model: str | None = None,
        min_severity: float = 0.0,
        limit: int = 50,
    ) -> list[AnomalyRecord]:
        """Most severe first."""


class DatasetStore(Protocol):
    """Named datasets."""

    def register_dataset(self, dataset: Dataset, *, now: datetime) -> Dataset:
        """Create or replace the dataset of that name."""

    def get_dataset(self, name: str) -> Dataset:
        """The dataset; raises ``UnknownDataset``."""

    def list_datasets(self) -> list[Dataset]:
        """All datasets, newest first."""


class DriftStore(Protocol):
    """Per-window counts of what each model version scored, and drift reports."""

    def add_drift_counts(
        self, counts: Mapping[tuple[int, datetime], DriftCounts], *, now: datetime
    ) -> None:
        """Add counts, keyed by (model version id, window start), to the stored ones."""

    def drift_windows(self, *, since: datetime) -> dict[int, list[DriftCounts]]:
        """Per model version id, the counts of the windows starting at ``since`` or later."""

    def save_drift_report(
        self, model_id: int, report: dict[str, Any], *, drifted: bool, now: datetime
    ) -> None:
        """Keep the outcome of one drift check."""


class ShadowStore(Protocol):
    """How challengers compare with the champions they shadow."""

    def add_shadow(
        self,
        job_id: str,
        chunk_index: int,
        *,
        champion_id: int,
        challenger_id: int,
        tally: ShadowTally,
        flagged: Sequence[tuple[int, float, float]],
        now: datetime,
    ) -> None:
        """Record a chunk's comparison and the challenger's flagged records, once."""

    def shadow_comparison(self, name: str) -> list[dict[str, Any]]:
        """Per (champion, challenger) version pair of the model: flags and scores compared."""


@dataclass(frozen=True, slots=True)
class EvaluationRun:
    """One run of ``evaluate``: where its fan-out stands."""

    job_id: str
    status: JobStatus
    model: str
    dataset_name: str
    purpose: str
    actor: str
    model_id: int | None = None
    chunks_total: int | None = None
    error: str | None = None
    error_type: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class EvaluationChunk:
    """One scored chunk of an evaluation: each record's score and label (True =
    anomaly), and its id if the file has them."""

    chunk_index: int
    offset: int
    scores: Scores
    labels: npt.NDArray[np.bool_]
    record_ids: Sequence[str] | None = None


@dataclass(frozen=True, slots=True)
class ScoredRecords:
    """Every record an evaluation scored, in file order."""

    record_index: npt.NDArray[np.int64]
    scores: Scores
    labels: npt.NDArray[np.bool_]
    record_ids: list[str | None] | None = None


@dataclass(frozen=True, slots=True)
class StoredEvaluation:
    """One row of ``evaluations``: a version's figures on a labelled dataset."""

    id: int
    job_id: str | None
    model_name: str
    model_version: int
    dataset_name: str
    threshold: float
    n_records: int
    n_positive: int
    metrics: dict[str, float]
    purpose: str
    actor: str
    created_at: datetime


class EvaluationStore(Protocol):
    """Evaluation runs, their chunks' scores, and the figures they end with."""

    def enqueue_evaluation(
        self, job_id: str, *, model: str, dataset: str, purpose: str, actor: str, now: datetime
    ) -> None:
        """Record a run about to be published (nothing if the job id exists)."""

    def claim_evaluation(
        self, job_id: str, *, model: str, dataset: str, purpose: str, actor: str, now: datetime
    ) -> EvaluationRun:
        """Mark the run running (creating it if no one enqueued it); a finished run is
        returned as it is."""

    def start_evaluation(self, job_id: str, *, model_id: int, chunks_total: int) -> None:
        """Record the version being evaluated and how many chunks will report."""

    def fail_evaluation(
        self, job_id: str, *, error: str, error_type: str, now: datetime
    ) -> EvaluationRun:
        """Fail a run that is not finished yet."""

    def add_evaluation_chunk(self, job_id: str, chunk: EvaluationChunk, *, now: datetime) -> bool:
        """Store a chunk once; True when every chunk of a running run is in."""

    def evaluation_scores(self, job_id: str) -> ScoredRecords:
        """Every record the run scored, in file order."""

    def finish_evaluation(
        self, job_id: str, evaluation: Evaluation, *, now: datetime
    ) -> EvaluationRun:
        """Store the figures and mark the run succeeded, once."""

    def get_evaluation_run(self, job_id: str) -> EvaluationRun | None:
        """The run, or None."""

    def evaluation_of(self, job_id: str) -> StoredEvaluation | None:
        """The figures a run stored, or None."""

    def list_evaluations(self, name: str, *, limit: int = 50) -> list[StoredEvaluation]:
        """The evaluations of a model's versions, newest first."""


class Scorer(Protocol):
    """Turns a feature matrix into anomaly scores (higher = more anomalous)."""

    backend: str

    def score(self, matrix: Matrix) -> Scores:
        """One score per row."""


class PredictionCache(Protocol):
    """Scores of rows already seen, keyed by model content hash and row bytes."""

    def get_many(self, model_hash: str, matrix: Matrix) -> Scores:
        """Cached scores, NaN where missing."""

    def set_many(self, model_hash: str, matrix: Matrix, scores: Scores) -> None:
        """Remember scores for the rows."""

    def close(self) -> None:
        """Release the connection."""

    def stats(self) -> dict[str, float]:
        """Memory, evictions and hits/misses of the cache's server."""


@dataclass(frozen=True, slots=True)
class SourceChunk:
    """A slice of a source file: features plus optional ids and timestamps."""

    offset: int
    matrix: Matrix
    record_ids: Sequence[str] | None
    timestamps: Sequence[datetime] | None
    features: Sequence[str] | None = None
    """Feature column names (None for inline records: features are named by index)."""
    entities: Sequence[str | None] | None = None
    """Each record's entity, when the job names them."""
    labels: Scores | None = None
    """Each record's label column as numbers (NaN where missing), when read with one."""


@dataclass(frozen=True, slots=True)
class ChunkSpec:
    """Where one chunk of a source lies: rows ``offset`` .. ``offset + n_rows`` stored in
    ``[start, stop)`` (bytes of a CSV, row groups of a Parquet file)."""

    index: int
    offset: int
    n_rows: int
    start: int
    stop: int


@dataclass(frozen=True, slots=True)
class SourcePlan:
    """A source cut into independently readable chunks."""

    format: str
    columns: list[str]
    n_rows: int
    chunks: list[ChunkSpec]
    pin: str | None = None
    """The version planned from (an object's version id or ETag, a file's size and
    modification time); every chunk is read from that version or fails."""
    entity_field: str | None = None
    label_field: str | None = None

    @property
    def n_features(self) -> int:
        """Columns that are features (not ``record_id``, ``timestamp``, the entity or the
        label)."""
        meta = ("record_id", "timestamp", self.entity_field, self.label_field)
        return len([c for c in self.columns if c not in meta])


class SourceReader(Protocol):
    """Reads CSV/Parquet sources (local files, ``s3://`` objects) in bounded chunks."""

    def describe(self, path: str) -> Dataset:
        """Row count, feature count and format of a file (name left empty)."""

    def read_chunks(
        self,
        path: str,
        *,
        chunk_rows: int,
        entity_field: str | None = None,
        label_field: str | None = None,
    ) -> Iterator[SourceChunk]:
        """The file's rows, ``chunk_rows`` at a time, in order."""

    def plan(
        self,
        path: str,
        *,
        chunk_rows: int,
        entity_field: str | None = None,
        label_field: str | None = None,
    ) -> SourcePlan:
        """Chunks of about ``chunk_rows`` rows that can be read independently; the entity
        and label columns, if named, must exist and are not features."""

    def read_chunk(
        self,
        path: str,
        spec: ChunkSpec,
        *,
        columns: list[str],
        pin: str | None = None,
        entity_field: str | None = None,
        label_field: str | None = None,
    ) -> SourceChunk:
        """The rows of one planned chunk, from the version ``pin`` names."""


class LoadedModel(Protocol):
    """A model version ready to score in this process."""

    @property
    def version(self) -> ModelVersion:
        """The version loaded."""

    def scorer_for(self, n_rows: int) -> Scorer:
        """The fastest backend for a batch of ``n_rows`` rows."""

    def row_cost_us(self) -> float | None:
        """Scoring cost per row in microseconds, if measured."""

    def explain(self, matrix: Matrix) -> Attribution | None:
        """Per-feature contributions to each row's anomaly, if the model has a method."""


class ModelLoader(Protocol):
    """Resolves model references and keeps loaded versions for reuse."""

    def resolve(self, ref: ModelRef) -> ModelVersion:
        """The version ``ref`` names; raises ``UnknownModel``."""

    def resolve_many(
        self, refs: Collection[ModelRef]
    ) -> dict[ModelRef, ModelVersion | InvalidInput]:
        """:meth:`resolve` of each ref, the bare names due for a fresh read read together;
        a ref that cannot be resolved maps to its ``UnknownModel``."""

    def load(self, version: ModelVersion) -> LoadedModel:
        """The loaded model for ``version``."""

    def prepare(self, artifact_sha256: str, estimator: object) -> None:
        """Keep on this host what loading artifact ``artifact_sha256`` needs, computed
        now from the estimator just fitted (so the first load reads no artifact)."""


@dataclass(frozen=True, slots=True)
class FittedModel:
    """A freshly fitted estimator: its serialized artifact, its scores on the rows it was
    fitted on, and a scorer for parity checks. ``estimator`` is opaque to the core."""

    estimator: object
    artifact: bytes
    training_scores: Scores
    params: dict[str, Any]
    scorer: Scorer


@dataclass(frozen=True, slots=True)
class ExportedModel:
    """A portable export (ONNX) of a fitted model and a scorer that runs it."""

    content: bytes
    scorer: Scorer


class Trainer(Protocol):
    """Fits estimators and exports them to a portable format."""

    def fit(
        self, algorithm: str, matrix: Matrix, *, contamination: float, params: dict[str, Any]
    ) -> FittedModel:
        """Fit ``algorithm`` on ``matrix``."""

    def export(self, fitted: FittedModel, *, n_features: int) -> ExportedModel | None:
        """The portable export, or None where no converter exists."""


T = TypeVar("T")


class RegistryWatch(Protocol):
    """Tells a process that the model registry changed (a version registered or
    activated, an alias moved, a threshold set), once the change has committed."""

    def generation(self) -> int | None:
        """A number that grows with each change heard; None when changes cannot be
        heard now (the caller then re-reads what it resolved after a TTL)."""


class Isolation(Protocol):
    """Runs a piece of memory-hungry work (training) so that what it allocates and
    imports is given back when it ends, not kept by the long-lived worker process."""

    def run(self, work: Callable[[], T]) -> T:
        """``work()``'s result, or its exception raised here."""


class Maintenance(Protocol):
    """Database upkeep (see ``pynomaly.maintenance.*``): locks, the run record and the
    work itself. Identifiers come from the adapter's allow-lists, never from callers."""

    def try_lock(self, name: str) -> AbstractContextManager[bool]:
        """Hold task ``name``'s lock for the block if nobody else does; yield whether
        it was taken."""

    def record_run(
        self,
        *,
        task: str,
        started_at: datetime,
        duration_ms: float,
        outcome: str,
        rows_affected: int,
        detail: dict[str, Any],
    ) -> None:
        """Append one run to ``maintenance_runs``."""

    def runs(self, *, task: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The latest runs, newest first."""

    def record_metrics(self, rows: list[dict[str, Any]], *, now: datetime) -> int:
        """Append metric rows (``metric_name``, ``value``, ``labels``)."""

    def refresh_views(self) -> dict[str, Any]:
        """Refresh the materialized views without blocking readers."""

    def vacuum_analyze(self) -> dict[str, Any]:
        """Reclaim space and refresh planner statistics."""

    def reindex(self, *, threshold: float) -> dict[str, Any]:
        """Rebuild, without blocking writes, the indexes whose bloat passes ``threshold``."""

    def retention(self, *, cutoff: datetime, batch: int | None = None) -> dict[str, Any]:
        """Delete what is older than ``cutoff``, in short batches."""

    def slow_statements(self, *, limit: int) -> dict[str, Any]:
        """The slowest statements, or ``{"available": False, "reason": ...}``."""

    def sweep_stale_jobs(
        self, *, stale_before: datetime, max_attempts: int, now: datetime, reason: str
    ) -> dict[str, Any]:
        """Requeue (or fail, attempts spent) jobs running since before ``stale_before``."""


@dataclass(frozen=True, slots=True)
class ModelOverview:
    """A model version with its detection record (from ``mv_model_performance``, as of
    the last refresh)."""

    model_id: int
    name: str
    version: int
    algorithm: str
    active: bool
    n_features: int
    threshold: float
    onnx: bool
    artifact_sha256: str
    created_at: datetime
    jobs: int
    jobs_failed: int
    records_scored: int
    anomalies_found: int
    anomaly_rate: float
    p95_duration_ms: float | None
    last_job_at: datetime | None


class Reads(Protocol):
    """The dashboards' and the CLI's reads, each served by an index or a view."""

    def recent_anomalies(
        self, *, now: datetime, limit: int = 50, suppressed: bool | None = None
    ) -> list[AnomalyRecord]:
        """Newest first, from the recent-anomalies view (``suppressed``: True only the
        suppressed ones, False only the others, None all; likewise below)."""

    def anomalies_of_model(
        self,
        *,
        model_id: int,
        since: datetime,
        limit: int = 50,
        suppressed: bool | None = None,
    ) -> list[AnomalyRecord]:
        """One model version's anomalies since ``since``, newest first."""

    def top_anomalies(
        self,
        *,
        min_severity: float = 0.0,
        model: str | None = None,
        job_id: str | None = None,
        limit: int = 20,
        suppressed: bool | None = None,
    ) -> list[AnomalyRecord]:
        """Most severe first (then newest)."""

    def model_performance(self, *, name: str | None = None) -> list[ModelOverview]:
        """Every model version with its detection record."""

    def model_performance_of(self, model_ids: Sequence[int]) -> list[ModelOverview]:
        """These model versions with their detection records (a page of a listing)."""

    def dataset_summary(self) -> list[dict[str, Any]]:
        """Each dataset with the jobs that scored it."""

    def counts_per_model(self, *, since: datetime) -> list[dict[str, Any]]:
        """Anomalies per model version since ``since``."""


class DatabaseProbe(Protocol):
    """A cheap check that the database answers."""

    def ping(self) -> None:
        """Return if the database answered; raise otherwise."""


class Telemetry(Protocol):
    """Where services report what operators graph: inference time, cache lookups."""

    def inference(self, *, backend: str, seconds: float) -> None:
        """One call into a scorer took ``seconds``."""

    def cache_lookup(self, *, hits: int, misses: int) -> None:
        """A prediction-cache lookup found ``hits`` rows and missed ``misses``."""

    def model_used(self, *, name: str, contamination: float) -> None:
        """Model ``name`` scored rows; it was trained expecting ``contamination``."""

    def drift_checked(self, *, name: str, drifted_features: int, drifted: bool) -> None:
        """A drift check of model ``name`` found ``drifted_features`` drifted features
        (``drifted``: anything drifted, the score or the flagged rate included)."""

    def model_cache(self, *, hit: bool, load_seconds: float, evicted: int) -> None:
        """A model version was found in this process's cache, or loaded in
        ``load_seconds`` (``evicted`` versions made room for it)."""

    def model_cache_size(self, *, models: int, nbytes: int) -> None:
        """This process now keeps ``models`` versions holding ``nbytes``."""

    def alert_precision(self, precision: AlertPrecision) -> None:
        """Triage's labels of one version's alerts and shadow flags, as last counted."""


class JobLog(Protocol):
    """Where a finished job's one line goes (``PYNOMALY_JOB_LOG``)."""

    enabled: bool
    """False when lines are dropped: callers may skip building them."""

    def finished(self, line: JobLine) -> None:
        """A job finished (or a redelivery found it finished): write its line."""


@dataclass(frozen=True, slots=True)
class IncidentRecord:
    """An incident as operators see it."""

    id: int
    model_id: int
    model_name: str
    model_version: int
    entity: str | None
    status: IncidentStatus
    first_ts: datetime
    last_ts: datetime
    anomaly_count: int
    max_severity: float
    top_features: list[tuple[str, float]]
    opened_at: datetime
    last_seen_at: datetime
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    resolved_at: datetime | None = None
    resolved_by: str | None = None


@dataclass(frozen=True, slots=True)
class IncidentEventRecord:
    """One entry of an incident's history: what happened, who did it, when and why."""

    id: int
    kind: str
    actor: str
    comment: str | None
    detail: dict[str, Any]
    at: datetime


@dataclass(frozen=True, slots=True)
class LabelRecord:
    """A label given to an anomaly (the newest one counts)."""

    anomaly_id: int
    label: Label
    actor: str
    comment: str | None
    at: datetime
    incident_id: int | None


@dataclass(frozen=True, slots=True)
class IncidentDetail:
    incident: IncidentRecord
    events: list[IncidentEventRecord]
    top_anomalies: list[AnomalyRecord]
    labels: dict[str, int]
    """How many of its anomalies carry each label now."""


@dataclass(frozen=True, slots=True)
class FoldReport:
    """What one incident upkeep transaction did."""

    jobs: int = 0
    anomalies: int = 0
    opened: int = 0
    grown: int = 0
    resolved: int = 0
    notifications: list[int] = field(default_factory=list)
    """Notifications queued in it, to dispatch now that it committed."""
    more: bool = False
    """Jobs are still waiting in the inbox."""


class IncidentStore(Protocol):
    """Incidents, their history, and labels."""

    def fold_inbox(self, *, gap: timedelta, now: datetime, limit: int = 500) -> FoldReport:
        """Fold the anomalies of up to ``limit`` settled jobs into incidents, each job once."""

    def resolve_idle(self, *, idle: timedelta, now: datetime) -> FoldReport:
        """Resolve the live incidents no anomaly joined for ``idle``."""

    def acknowledge_incident(
        self, incident_id: int, *, by: str, comment: str | None, now: datetime
    ) -> IncidentRecord:
        """Mark an open incident acknowledged (kept in its history)."""

    def resolve_incident(
        self, incident_id: int, *, by: str, comment: str | None, now: datetime
    ) -> tuple[IncidentRecord, list[int]]:
        """Resolve a live incident; return it and the notifications that queued."""

    def label_anomaly(
        self, anomaly_id: int, *, label: Label, by: str, comment: str | None, now: datetime
    ) -> LabelRecord:
        """Label one anomaly (earlier labels are kept)."""

    def label_incident(
        self, incident_id: int, *, label: Label, by: str, comment: str | None, now: datetime
    ) -> int:
        """Label every anomaly of an incident; return how many."""

    def list_incidents(
        self, *, status: IncidentStatus | None = None, model: str | None = None, limit: int = 50
    ) -> list[IncidentRecord]:
        """Newest first."""

    def get_incident(self, incident_id: int, *, top: int = 10) -> IncidentDetail:
        """The incident, its history, its most severe anomalies and its label counts."""

    def anomaly_labels(self, anomaly_id: int) -> list[LabelRecord]:
        """Every label the anomaly was given, newest first."""


class ThresholdStore(Protocol):
    """Thresholds set by intent: the one in force per version and every change; what a
    projection reads; the alert precision triage's labels give each version."""

    def set_threshold(
        self,
        model_id: int,
        threshold: float,
        *,
        intent: dict[str, Any],
        projection: dict[str, Any],
        actor: str,
        reason: str | None,
        now: datetime,
    ) -> ThresholdChange:
        """Put ``threshold`` in force for the version and record the change."""

    def rollback_threshold(
        self,
        model_id: int,
        *,
        last_change_id: int,
        projection: dict[str, Any],
        actor: str,
        reason: str | None,
        now: datetime,
    ) -> ThresholdChange:
        """Put back the threshold in force before the version's last change (which must
        be ``last_change_id``, else ``InvalidInput``); record it as a rollback."""

    def threshold_history(self, model_id: int) -> list[ThresholdChange]:
        """Every change of the version's threshold, newest first."""

    def score_windows(
        self, model_id: int, *, since: datetime
    ) -> list[tuple[datetime, DriftCounts]]:
        """The version's drift windows (start, counts) from ``since``, oldest first."""

    def labelled_scores(self, model_id: int) -> list[tuple[float, str]]:
        """(score, newest label) of each labelled anomaly the version stored."""

    def alert_precision(self, *, name: str | None = None) -> list[AlertPrecision]:
        """Per version with labels or shadow flags: labelled and confirmed counts."""


class Store(
    ModelStore,
    JobStore,
    AnomalyStore,
    DatasetStore,
    DriftStore,
    ShadowStore,
    IncidentStore,
    EvaluationStore,
    ThresholdStore,
    Protocol,
):
    """Every role; one database implements them together."""


class AlertingStore(Protocol):
    """Which incidents Alertmanager must hear about, and what it was last told."""

    def incidents_to_alert(self, *, resend_before: datetime, limit: int) -> list[AlertedIncident]:
        """Up to ``limit`` incidents, oldest id first: live ones never posted, posted
        before ``resend_before``, or changed since their last post; and resolved ones
        whose alert was posted and not yet ended."""

    def mark_alerts_sent(self, sent: Mapping[int, str], *, at: datetime) -> None:
        """These live incidents' alerts (incident id -> severity band) were accepted at
        ``at``: the time read before their state was, so a later change is seen."""

    def mark_alerts_ended(self, ids: Sequence[int], *, at: datetime) -> None:
        """These resolved incidents' alerts were ended at ``at``."""


class NotificationStore(Protocol):
    """Webhook subscriptions, the notifications of incident events, and every attempt to
    deliver one."""

    def add_subscription(
        self,
        *,
        name: str,
        url: str,
        model: str | None,
        min_severity: float,
        secret: str,
        now: datetime,
    ) -> Subscription:
        """Store a new subscription; a name in use raises ``SubscriptionError``."""

    def list_subscriptions(self) -> list[Subscription]:
        """Every subscription, by name."""

    def get_subscription(self, name: str) -> Subscription:
        """The subscription called ``name``; an unknown name raises ``SubscriptionError``."""

    def remove_subscription(self, name: str) -> Subscription:
        """Delete a subscription with its notifications and their attempts."""

    def claim_notifications(
        self, notification_ids: Sequence[int], *, now: datetime, lease_seconds: float
    ) -> list[Claim]:
        """Take those of the notifications that are pending and due, for one attempt
        each (and push their next attempt ``lease_seconds`` away, so nobody else takes
        them meanwhile), in one transaction; the ones not pending, not due or gone are
        left out."""

    def record_attempts(
        self, outcomes: Sequence[tuple[Claim, PostResult, Decision]], *, now: datetime
    ) -> list[bool]:
        """Record attempts and apply their decisions (a 410 disables the subscription
        and cancels its pending notifications), in one transaction; for each, False if
        its claim was lost to another attempt meanwhile (recorded all the same)."""

    def deliveries(self, *, failed: bool = False, limit: int = 50) -> list[Delivery]:
        """The newest notifications (only the failed and cancelled ones if ``failed``)."""

    def attempts_of(self, notification_id: int) -> list[dict[str, Any]]:
        """Every recorded attempt of one notification, oldest first."""

    def replay_notification(self, notification_id: int, *, now: datetime) -> Delivery:
        """Make a failed or cancelled notification pending again, due now, with its
        attempts and webhook id kept; anything else raises ``SubscriptionError``."""

    def overdue_notifications(self, *, before: datetime, now: datetime, limit: int) -> list[int]:
        """Pending notifications due before ``before`` (their message was lost), marked
        due ``now`` so the next sweep leaves them alone for a while."""


class SuppressionStore(Protocol):
    """Suppression rules, never deleted: a removed rule keeps who removed it, and each
    counts the anomalies it suppressed (added in the transaction that stores them)."""

    def add_rule(self, draft: RuleDraft, *, now: datetime) -> SuppressionRule:
        """Store a checked rule (``check_draft``) with a zero count."""

    def remove_rule(self, rule_id: int, *, by: str, now: datetime) -> SuppressionRule:
        """Mark a rule removed by ``by`` (it is kept); an unknown or already removed one
        raises ``SuppressionError``."""

    def list_rules(
        self, *, now: datetime, model: str | None = None, ended: bool = False
    ) -> list[SuppressionRule]:
        """The rules live at ``now`` (and, with ``ended``, the expired and removed ones
        too), newest first."""

    def live_rules(self, model_name: str | None, *, now: datetime) -> list[SuppressionRule]:
        """The rules of ``model_name`` (of every model: None) live at ``now``, oldest
        first."""


class Suppressions(SuppressionStore, Protocol):
    """The store's rules, and the live rules of a model as a worker sees them: read
    again at most every so often (a new rule applies within that), so one-record jobs do
    not pay a query each."""

    def rules_of(self, model_name: str, *, now: datetime) -> Sequence[SuppressionRule]:
        """The model's rules live at ``now`` as last read (rules that expired since the
        read are returned too: matching checks ``until`` against the detection time)."""
