"""One contract, two backends: SqlStore on SQLite (the embedded default, and the fast
store the service tests run on) and SqlStore on PostgreSQL.

Every test runs against each backend, so the embedded store cannot drift from the one
production uses.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import numpy as np
import pytest
from sqlalchemy import update

from pynomaly_workers.adapters.stores import bulk
from pynomaly_workers.adapters.stores.engine import build_engine
from pynomaly_workers.adapters.stores.sql import SqlStore, sha256
from pynomaly_workers.adapters.stores.tables import ModelArtifactRow
from pynomaly_workers.domain.errors import (
    ArtifactCorrupt,
    InvalidInput,
    UnknownDataset,
    UnknownModel,
)
from pynomaly_workers.domain.jobs import ChunkTally, JobSummary, TopAnomaly
from pynomaly_workers.domain.models import ModelRef, ModelVersion
from pynomaly_workers.domain.ports import (
    AnomalyBatch,
    AnomalyRecord,
    ChunkOutcome,
    ChunkResult,
    Dataset,
    JobFailure,
    JobProgress,
    JobRecord,
    JobResult,
    ModelDraft,
    Store,
)
from pynomaly_workers.domain.scoring import fit_score_stats

pytestmark = pytest.mark.integration
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
_Record = TypeVar("_Record", AnomalyRecord, Dataset, JobRecord, ModelVersion)


# -- fixtures and factories -------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    """Each store backend in turn, empty."""
    fixture = "sqlite_url" if request.param == "sqlite" else "clean_pg"
    engine = build_engine(str(request.getfixturevalue(fixture)))
    yield SqlStore(engine)
    engine.dispose()


def corrupt_artifact(store: Store, digest: str, content: bytes) -> None:
    """Replace stored artifact bytes behind the store's back, as a bad disk would."""
    assert isinstance(store, SqlStore)
    with store.engine.begin() as conn:
        conn.execute(
            update(ModelArtifactRow)
            .where(ModelArtifactRow.sha256 == digest)
            .values(content=content)
        )


def draft(
    name: str = "m",
    *,
    artifact: bytes = b"sklearn-bytes",
    onnx: bytes | None = None,
    training_task_id: str | None = None,
) -> ModelDraft:
    scores = np.linspace(0.0, 1.0, 101)
    return ModelDraft(
        name=name,
        algorithm="iforest",
        artifact=artifact,
        onnx=onnx,
        n_features=4,
        stats=fit_score_stats(scores, contamination=0.1),
        params={"n_estimators": 50},
        parity_max_error=1e-6,
        parity_tolerance=1e-4,
        n_training_rows=101,
        training_task_id=training_task_id,
    )


def batch(
    model_id: int,
    indices: list[int],
    *,
    job_id: str = "job-1",
    severities: list[float] | None = None,
) -> AnomalyBatch:
    severity = severities if severities is not None else [0.6 + i / 1000 for i in indices]
    return AnomalyBatch(
        job_id=job_id,
        model_id=model_id,
        record_index=np.asarray(indices, dtype=np.int64),
        score=np.asarray([1.0 + s for s in severity], dtype=np.float64),
        severity=np.asarray(severity, dtype=np.float64),
        timestamp=[T0 + timedelta(seconds=i) for i in indices],
        record_id=[f"r{i}" if i % 2 == 0 else None for i in indices],
    )


def job_summary(job_id: str = "job-1") -> JobSummary:
    return JobSummary(
        job_id=job_id,
        model="m",
        model_version=1,
        n_records=100,
        n_anomalies=2,
        threshold=0.9,
        cache_hits=7,
        duration_ms=12.5,
        top_anomalies=[TopAnomaly(record_index=3, record_id="r3", score=2.0, severity=0.8)],
    )


def dataset(name: str = "ds", *, n_rows: int = 10) -> Dataset:
    return Dataset(
        name=name,
        uri=f"file:///data/{name}.csv",
        format="csv",
        n_rows=n_rows,
        n_features=3,
        columns=["a", "b", "c"],
    )


def utc(moment: datetime | None) -> datetime | None:
    """The same instant in UTC. SQLite hands back naive datetimes, stored as UTC."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def normalized(item: _Record) -> _Record:
    """A record with its datetime fields in UTC, so backends compare equal."""
    changes: dict[str, Any] = {
        f.name: utc(getattr(item, f.name))
        for f in dataclasses.fields(item)
        if isinstance(getattr(item, f.name), datetime)
    }
    return dataclasses.replace(item, **changes)


def stored_job(store: Store, job_id: str = "job-1") -> JobRecord:
    job = store.get_job(job_id)
    assert job is not None, f"{job_id} is not stored"
    return job


# -- models -----------------------------------------------------------------------------
def test_first_registration_is_version_1_active_and_round_trips(store: Store) -> None:
    # Given a draft
    given = draft(onnx=b"onnx-bytes")

    # When it is registered
    version = store.register_model(given, now=T0)

    # Then it is version 1, active, hashed, and reads back as registered
    assert (version.name, version.version, version.active) == ("m", 1, True)
    assert version.artifact_sha256 == sha256(given.artifact)
    assert version.onnx_sha256 == sha256(b"onnx-bytes")
    assert version.stats == given.stats
    assert version.params == {"n_estimators": 50}
    assert (version.parity_max_error, version.parity_tolerance) == (1e-6, 1e-4)
    assert (version.n_features, version.n_training_rows, version.algorithm) == (4, 101, "iforest")
    assert utc(version.created_at) == T0
    assert normalized(store.get_model(ModelRef("m"))) == normalized(version)


def test_second_registration_is_version_2_and_the_only_active_one(store: Store) -> None:
    # Given a registered model
    first = store.register_model(draft(artifact=b"v1"), now=T0)

    # When a second version of the same name is registered
    second = store.register_model(draft(artifact=b"v2"), now=T0 + timedelta(hours=1))

    # Then it is version 2, the name resolves to it, and only it is active
    assert second.version == 2
    assert second.id != first.id
    assert store.get_model(ModelRef("m")).version == 2
    listed = store.list_models(name="m")
    assert [(m.version, m.active) for m in listed] == [(2, True), (1, False)]


def test_a_training_task_id_registers_one_version_however_often_it_is_sent(
    store: Store,
) -> None:
    # Given a version registered by training task "t-1", then one by another task
    first = store.register_model(draft(artifact=b"v1", training_task_id="t-1"), now=T0)
    other = store.register_model(draft(artifact=b"v2", training_task_id="t-2"), now=T0)

    # When "t-1" registers again (its message was redelivered and trained again)
    again = store.register_model(draft(artifact=b"v1-again", training_task_id="t-1"), now=T0)

    # Then it gets its first version back; no third version, and the active one stays
    assert (again.id, again.version) == (first.id, 1)
    assert [m.version for m in store.list_models(name="m")] == [2, 1]
    assert store.get_model(ModelRef("m")).id == other.id
    found = store.find_trained_by("t-1")
    assert found is not None
    assert found.id == first.id
    assert store.find_trained_by("never-sent") is None


def test_versions_without_a_training_task_id_do_not_collide(store: Store) -> None:
    # Given two registrations with no task id (NULL under the unique index)
    store.register_model(draft(artifact=b"v1"), now=T0)
    store.register_model(draft(artifact=b"v2"), now=T0)

    # Then both are versions
    assert [m.version for m in store.list_models(name="m")] == [2, 1]


def test_the_active_versions_of_many_names_are_read_together(store: Store) -> None:
    # Given two versions of "m", one of "n", and nothing named "x"
    store.register_model(draft(artifact=b"v1"), now=T0)
    second = store.register_model(draft(artifact=b"v2"), now=T0)
    other = store.register_model(draft("n", artifact=b"n1"), now=T0)

    # When the active versions of all three names are asked for at once
    found = store.get_active_models(["m", "n", "x"])

    # Then each existing name maps to its active version, as get_model says, and the
    # unknown one is left out
    assert {name: v.id for name, v in found.items()} == {"m": second.id, "n": other.id}
    assert found["m"] == store.get_model(ModelRef("m"))
    assert store.get_active_models([]) == {}


def test_name_at_version_resolves_an_inactive_version(store: Store) -> None:
    # Given two versions of a model
    first = store.register_model(draft(artifact=b"v1"), now=T0)
    store.register_model(draft(artifact=b"v2"), now=T0)

    # When version 1 is asked for by number
    found = store.get_model(ModelRef("m", 1))

    # Then that exact version comes back, no longer active
    assert (found.id, found.version, found.active) == (first.id, 1, False)
    assert found.artifact_sha256 == sha256(b"v1")


def test_versions_are_numbered_per_name(store: Store) -> None:
    # Given two versions of one name
    store.register_model(draft("a", artifact=b"a1"), now=T0)
    store.register_model(draft("a", artifact=b"a2"), now=T0)

    # When another name is registered
    other = store.register_model(draft("b"), now=T0)

    # Then it starts at 1, and each name keeps its own active version
    assert other.version == 1
    assert [(m.name, m.version, m.active) for m in store.list_models()] == [
        ("a", 2, True),
        ("a", 1, False),
        ("b", 1, True),
    ]
    assert [m.name for m in store.list_models(name="b")] == ["b"]


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        (
            ModelRef("ghost"),
            "no model named 'ghost'; train one with pynomaly.train "
            "('pynomaly-workers train') or check the name with 'pynomaly-workers models'",
        ),
        (ModelRef("ghost", 1), "no model named 'ghost'"),
        (ModelRef("m", 3), "model 'm' has no version 3; it has versions [1, 2]"),
    ],
)
def test_unknown_model_says_what_exists(store: Store, ref: ModelRef, message: str) -> None:
    # Given versions 1 and 2 of "m"
    store.register_model(draft(artifact=b"v1"), now=T0)
    store.register_model(draft(artifact=b"v2"), now=T0)

    # When / Then an unknown reference names what does exist
    with pytest.raises(UnknownModel) as raised:
        store.get_model(ref)
    assert str(raised.value).startswith(message)


def test_artifacts_are_content_addressed_and_shared(store: Store) -> None:
    # Given two versions with the same artifact bytes, one also with ONNX bytes
    first = store.register_model(draft(artifact=b"same"), now=T0)
    second = store.register_model(draft(artifact=b"same", onnx=b"onnx"), now=T0)

    # When / Then both point at one artifact, and every artifact loads by its hash
    assert first.artifact_sha256 == second.artifact_sha256 == sha256(b"same")
    assert store.load_artifact(first.artifact_sha256) == b"same"
    assert second.onnx_sha256 is not None
    assert store.load_artifact(second.onnx_sha256) == b"onnx"


def test_missing_artifact_is_refused(store: Store) -> None:
    with pytest.raises(ArtifactCorrupt, match="missing"):
        store.load_artifact(sha256(b"never stored"))


def test_corrupted_artifact_is_refused(store: Store) -> None:
    # Given a registered model whose artifact bytes were changed behind the store's back
    version = store.register_model(draft(artifact=b"good bytes"), now=T0)
    corrupt_artifact(store, version.artifact_sha256, b"evil bytes")

    # When / Then loading it fails instead of unpickling the wrong bytes
    with pytest.raises(ArtifactCorrupt, match="does not match its sha256"):
        store.load_artifact(version.artifact_sha256)


def test_concurrent_registrations_get_distinct_versions(store: Store) -> None:
    # Given eight trainers registering the same name at once
    versions: list[ModelVersion] = []
    errors: list[BaseException] = []

    def register(i: int) -> None:
        try:
            versions.append(store.register_model(draft(artifact=f"v{i}".encode()), now=T0))
        except BaseException as exc:
            errors.append(exc)

    run_in_threads(register, 8)

    # Then each got its own number and exactly one version is active
    assert errors == []
    assert sorted(v.version for v in versions) == list(range(1, 9))
    assert [m.version for m in store.list_models(name="m") if m.active] == [8]


def run_in_threads(target: Callable[[int], None], n: int) -> None:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not [t for t in threads if t.is_alive()], "a thread still runs after 60 s"


# -- aliases ----------------------------------------------------------------------------
def three_versions(store: Store) -> list[ModelVersion]:
    return [store.register_model(draft(), now=T0 + timedelta(minutes=i)) for i in range(3)]


def test_an_alias_names_the_version_it_points_at(store: Store) -> None:
    # Given three versions of m (v3 active) and m@champion on v1
    v1, _, v3 = three_versions(store)
    moved = store.set_alias("m", "champion", 1, now=T0)

    # Then the alias resolves to v1 while the bare name stays on the active v3
    assert (moved.version, moved.previous_version, moved.action) == (1, None, "set")
    assert store.get_model(ModelRef("m", alias="champion")).id == v1.id
    assert store.get_model(ModelRef("m")).id == v3.id


def test_moving_an_alias_and_rolling_it_back(store: Store) -> None:
    # Given m@champion moved v1 -> v2 -> v3
    versions = three_versions(store)
    for version in (1, 2, 3):
        store.set_alias("m", "champion", version, now=T0 + timedelta(hours=version))

    # When it is rolled back, and rolled back again
    first = store.rollback_alias("m", "champion", now=T0 + timedelta(hours=4))
    champion = store.get_model(ModelRef("m", alias="champion"))
    second = store.rollback_alias("m", "champion", now=T0 + timedelta(hours=5))

    # Then the first rollback returns to v2, the second undoes it (v3), like an undo
    assert (first.version, first.previous_version, first.action) == (2, 3, "rollback")
    assert champion.id == versions[1].id
    assert (second.version, second.previous_version) == (3, 2)
    # And the history keeps every move, newest first
    history = store.alias_history("m", alias="champion")
    assert [(h.action, h.previous_version, h.version) for h in history] == [
        ("rollback", 2, 3),
        ("rollback", 3, 2),
        ("set", 2, 3),
        ("set", 1, 2),
        ("set", None, 1),
    ]
    assert utc(history[0].moved_at) == T0 + timedelta(hours=5)


def test_aliases_are_independent(store: Store) -> None:
    three_versions(store)
    store.set_alias("m", "champion", 3, now=T0)
    store.set_alias("m", "challenger", 1, now=T0)

    assert store.get_model(ModelRef("m", alias="champion")).version == 3
    assert store.get_model(ModelRef("m", alias="challenger")).version == 1
    assert [h.alias for h in store.alias_history("m")] == ["challenger", "champion"]


def test_alias_errors_say_what_to_do(store: Store) -> None:
    three_versions(store)
    with pytest.raises(UnknownModel, match="has no version 7; it has versions"):
        store.set_alias("m", "champion", 7, now=T0)
    with pytest.raises(UnknownModel, match="no alias 'champion'; point it at a version"):
        store.get_model(ModelRef("m", alias="champion"))
    with pytest.raises(UnknownModel, match="has no alias 'champion' to roll back"):
        store.rollback_alias("m", "champion", now=T0)
    store.set_alias("m", "champion", 2, now=T0)
    with pytest.raises(InvalidInput, match="nothing to roll back to"):
        store.rollback_alias("m", "champion", now=T0)


# -- jobs -------------------------------------------------------------------------------
def test_enqueue_records_a_queued_job_once(store: Store) -> None:
    # Given an enqueued job
    store.enqueue_job("job-1", model="m", now=T0)

    # When it is enqueued again (a re-sent message)
    store.enqueue_job("job-1", model="other", now=T0 + timedelta(minutes=5))

    # Then the first record stands
    job = stored_job(store)
    assert (job.status, job.model, job.attempts, utc(job.created_at)) == ("queued", "m", 0, T0)
    assert (job.started_at, job.finished_at, job.error) == (None, None, None)


def test_get_job_of_an_unknown_id_is_none(store: Store) -> None:
    assert store.get_job("nope") is None


def test_claim_marks_running_and_counts_attempts(store: Store) -> None:
    # Given a queued job
    store.enqueue_job("job-1", model="m", now=T0)

    # When it is claimed twice (a redelivery after a crash)
    first = store.claim_job("job-1", model="m@1", now=T0 + timedelta(seconds=1))
    second = store.claim_job("job-1", model="m@1", now=T0 + timedelta(seconds=2))

    # Then it is running, counts both attempts and keeps the first start time
    assert (first.status, first.attempts) == ("running", 1)
    assert (second.status, second.attempts, second.model) == ("running", 2, "m@1")
    assert utc(second.started_at) == T0 + timedelta(seconds=1)
    assert normalized(stored_job(store)) == normalized(second)


def test_concurrent_claims_count_every_attempt(store: Store) -> None:
    # Given one job delivered to four workers at once
    store.enqueue_job("job-1", model="m", now=T0)

    def claim(_: int) -> None:
        store.claim_job("job-1", model="m", now=T0)

    run_in_threads(claim, 4)

    # Then it is running once, with every attempt counted
    job = stored_job(store)
    assert (job.status, job.attempts) == ("running", 4)


def test_claim_creates_a_job_never_enqueued(store: Store) -> None:
    job = store.claim_job("job-1", model="m", now=T0)

    assert (job.status, job.attempts, job.model) == ("running", 1, "m")
    assert utc(job.created_at) == utc(job.started_at) == T0


def test_complete_stores_the_summary(store: Store) -> None:
    # Given a running job and the model it ran
    version = store.register_model(draft(), now=T0)
    store.claim_job("job-1", model="m", now=T0)
    store.fail_job("job-1", error="transient", error_type="Retry", now=T0)
    store.claim_job("job-1", model="m", now=T0)

    # When it completes
    summary = job_summary()
    later = T0 + timedelta(seconds=3)
    store.complete_job(summary, model_id=version.id, now=later, extra={"dataset_name": None})

    # Then the record holds the summary, with the earlier error cleared
    job = stored_job(store)
    assert job.status == "succeeded"
    assert (job.n_records, job.n_anomalies, job.cache_hits) == (100, 2, 7)
    assert (job.threshold, job.duration_ms) == (0.9, 12.5)
    assert job.summary == summary.to_dict()
    assert (job.error, job.error_type) == (None, None)
    assert utc(job.finished_at) == later


@pytest.mark.parametrize("terminal", ["succeeded", "failed"])
def test_claim_of_a_finished_job_returns_it_unchanged(store: Store, terminal: str) -> None:
    # Given a job that already reached a terminal status
    finished = finish_job(store, terminal)

    # When it is claimed again (a late redelivery)
    claimed = store.claim_job("job-1", model="m", now=T0 + timedelta(hours=1))

    # Then nothing changes
    assert normalized(claimed) == normalized(finished)
    assert normalized(stored_job(store)) == normalized(finished)


def finish_job(store: Store, status: str) -> JobRecord:
    version = store.register_model(draft(), now=T0)
    store.claim_job("job-1", model="m", now=T0)
    if status == "succeeded":
        store.complete_job(job_summary(), model_id=version.id, now=T0, extra={})
    else:
        store.fail_job("job-1", error="bad input", error_type="InvalidRecords", now=T0)
    job = stored_job(store)
    assert job.status == status
    return job


def test_fail_after_success_keeps_succeeded(store: Store) -> None:
    # Given a succeeded job
    finished = finish_job(store, "succeeded")

    # When a stale failure arrives
    store.fail_job("job-1", error="late", error_type="Timeout", now=T0 + timedelta(hours=1))

    # Then it is still succeeded, without the error
    assert normalized(stored_job(store)) == normalized(finished)


def test_fail_marks_failed_with_a_bounded_message(store: Store) -> None:
    # Given a running job
    store.claim_job("job-1", model="m", now=T0)

    # When it fails with a very long message
    store.fail_job("job-1", error="x" * 5000, error_type="InvalidRecords", now=T0)

    # Then it is failed, the message is cut at 4000 characters
    job = stored_job(store)
    assert (job.status, job.error_type, utc(job.finished_at)) == ("failed", "InvalidRecords", T0)
    assert job.error == "x" * 4000


def test_fail_of_an_unknown_job_records_it(store: Store) -> None:
    store.fail_job("job-9", error="malformed", error_type="InvalidMessage", now=T0)

    job = stored_job(store, "job-9")
    assert (job.status, job.model, job.error, job.attempts) == ("failed", "", "malformed", 0)


def test_list_jobs_newest_first_with_status_filter_and_limit(store: Store) -> None:
    # Given jobs created a minute apart, one of them claimed
    for i in range(4):
        store.enqueue_job(f"job-{i}", model="m", now=T0 + timedelta(minutes=i))
    store.claim_job("job-2", model="m", now=T0 + timedelta(minutes=10))

    # When / Then they list newest first, filtered and limited
    assert [j.job_id for j in store.list_jobs()] == ["job-3", "job-2", "job-1", "job-0"]
    assert [j.job_id for j in store.list_jobs(status="queued")] == ["job-3", "job-1", "job-0"]
    assert [j.job_id for j in store.list_jobs(status="running")] == ["job-2"]
    assert [j.job_id for j in store.list_jobs(limit=2)] == ["job-3", "job-2"]
    assert store.list_jobs(status="failed") == []


# -- anomalies --------------------------------------------------------------------------
def test_adding_the_same_batch_twice_writes_it_once(store: Store) -> None:
    # Given a model and a batch of three anomalies
    version = store.register_model(draft(), now=T0)
    given = batch(version.id, [0, 5, 9])

    # When the batch is written twice (a redelivered job)
    first = store.add_anomalies(given)
    second = store.add_anomalies(given)

    # Then the second write adds nothing, and there is one row per record
    assert (first, second) == (3, 0)
    stored = store.list_anomalies(job_id="job-1", limit=100)
    assert sorted(a.record_index for a in stored) == [0, 5, 9]


def test_overlapping_batches_count_only_new_rows(store: Store) -> None:
    # Given a stored batch
    version = store.register_model(draft(), now=T0)
    store.add_anomalies(batch(version.id, [0, 1, 2]))

    # When an overlapping batch arrives, then the same indices for another job
    overlapping = store.add_anomalies(batch(version.id, [2, 3, 4]))
    other_job = store.add_anomalies(batch(version.id, [0, 1], job_id="job-2"))

    # Then only unseen (job_id, record_index) pairs count
    assert (overlapping, other_job) == (2, 2)
    assert len(store.list_anomalies(limit=100)) == 7


def test_empty_batch_adds_nothing(store: Store) -> None:
    version = store.register_model(draft(), now=T0)

    assert store.add_anomalies(batch(version.id, [])) == 0
    assert store.list_anomalies() == []


def test_concurrent_writes_of_one_batch_store_it_once(store: Store) -> None:
    # Given one batch delivered to four workers at once
    version = store.register_model(draft(), now=T0)
    given = batch(version.id, list(range(50)))
    added: list[int] = []

    def write(_: int) -> None:
        added.append(store.add_anomalies(given))

    run_in_threads(write, 4)

    # Then the rows are new exactly once in total, and every record is stored (one row
    # per record is the unique key's; that none is missing is the store's)
    assert sum(added) == 50
    assert sorted(a.record_index for a in store.list_anomalies(limit=1000)) == list(range(50))


def test_anomalies_round_trip(store: Store) -> None:
    version = store.register_model(draft(), now=T0)
    store.add_anomalies(batch(version.id, [4], severities=[0.75]))

    [found] = store.list_anomalies()

    assert normalized(found) == AnomalyRecord(
        job_id="job-1",
        record_index=4,
        model_id=version.id,
        record_id="r4",
        timestamp=T0 + timedelta(seconds=4),
        score=1.75,
        severity=0.75,
        status="active",
        id=found.id,
    )
    assert isinstance(found.id, int)


def test_list_anomalies_most_severe_first_with_filters(store: Store) -> None:
    # Given anomalies of two models and two jobs, two of them equally severe
    a = store.register_model(draft("a"), now=T0)
    b = store.register_model(draft("b"), now=T0)
    store.add_anomalies(batch(a.id, [0, 1, 2, 3], severities=[0.2, 0.9, 0.6, 0.9]))
    store.add_anomalies(batch(b.id, [0, 1], job_id="job-2", severities=[0.95, 0.4]))

    # When / Then they list most severe first, ties by record index, filtered
    def listed(
        *,
        job_id: str | None = None,
        model: str | None = None,
        min_severity: float = 0.0,
        limit: int = 50,
    ) -> list[tuple[str, int]]:
        found = store.list_anomalies(
            job_id=job_id, model=model, min_severity=min_severity, limit=limit
        )
        return [(x.job_id, x.record_index) for x in found]

    assert listed() == [
        ("job-2", 0),
        ("job-1", 1),
        ("job-1", 3),
        ("job-1", 2),
        ("job-2", 1),
        ("job-1", 0),
    ]
    assert listed(job_id="job-1", min_severity=0.6) == [("job-1", 1), ("job-1", 3), ("job-1", 2)]
    assert listed(model="b") == [("job-2", 0), ("job-2", 1)]
    assert listed(model="ghost") == []
    assert listed(model="a", limit=2) == [("job-1", 1), ("job-1", 3)]
    assert listed(min_severity=0.95) == [("job-2", 0)]


def test_model_filter_spans_every_version_of_the_name(store: Store) -> None:
    v1 = store.register_model(draft(artifact=b"v1"), now=T0)
    v2 = store.register_model(draft(artifact=b"v2"), now=T0)
    store.add_anomalies(batch(v1.id, [0]))
    store.add_anomalies(batch(v2.id, [0], job_id="job-2"))

    assert {a.model_id for a in store.list_anomalies(model="m")} == {v1.id, v2.id}


def test_fail_drops_the_jobs_anomalies(store: Store) -> None:
    # Given a running job that already wrote anomalies, and another job's anomalies
    version = store.register_model(draft(), now=T0)
    store.claim_job("job-1", model="m", now=T0)
    store.add_anomalies(batch(version.id, [0, 1, 2]))
    store.add_anomalies(batch(version.id, [0, 1], job_id="job-2"))

    # When the job fails
    store.fail_job("job-1", error="bad chunk", error_type="InvalidRecords", now=T0)

    # Then a failed job has no anomalies, and the other job keeps its own
    assert stored_job(store).status == "failed"
    assert anomaly_indices(store, "job-1") == []
    assert anomaly_indices(store, "job-2") == [0, 1]


def test_a_stale_failure_keeps_the_anomalies_of_a_succeeded_job(store: Store) -> None:
    # Given a succeeded job with anomalies
    finish_job(store, "succeeded")
    store.add_anomalies(batch(store.list_models()[0].id, [0, 1]))

    # When a stale failure arrives
    store.fail_job("job-1", error="late", error_type="Timeout", now=T0 + timedelta(hours=1))

    # Then its anomalies stay
    assert anomaly_indices(store, "job-1") == [0, 1]


# -- settling batches of small jobs -----------------------------------------------------
def test_settle_writes_the_anomalies_and_summaries_of_many_jobs(store: Store) -> None:
    # Given scored results of five jobs never seen before
    version = store.register_model(draft(), now=T0)
    results = [job_result(version.id, f"job-{i}", list(range(i, 3 * i + 1))) for i in range(5)]

    # When they are settled in one call
    replays = store.settle_jobs(results, [], now=T0 + timedelta(seconds=1))

    # Then none was a replay, and every job holds its summary and exactly its anomalies
    assert replays == {}
    for i, result in enumerate(results):
        job = stored_job(store, f"job-{i}")
        assert (job.status, job.model, job.attempts) == ("succeeded", "m", 1)
        assert job.summary == result.summary.to_dict()
        assert (job.n_records, job.n_anomalies, job.cache_hits) == (100, 2 * i + 1, 7)
        assert (job.threshold, job.duration_ms, job.error) == (0.9, 12.5, None)
        assert utc(job.created_at) == utc(job.started_at) == utc(job.finished_at)
        assert anomaly_indices(store, f"job-{i}") == list(range(i, 3 * i + 1))


def test_settling_nothing_does_nothing(store: Store) -> None:
    assert store.settle_jobs([], [], now=T0) == {}
    assert store.list_jobs() == []


def test_resettling_returns_the_stored_jobs_and_writes_nothing(store: Store) -> None:
    # Given a batch of one success and one failure, settled
    version = store.register_model(draft(), now=T0)
    store.settle_jobs([job_result(version.id, "job-1", [0, 1])], [failure("job-2")], now=T0)
    before = [normalized(stored_job(store, j)) for j in ("job-1", "job-2")]

    # When the same jobs are settled again with different outcomes (a redelivered batch)
    replays = store.settle_jobs(
        [job_result(version.id, "job-2", [5, 6], n_records=999)],
        [failure("job-1", "late failure")],
        now=T0 + timedelta(hours=1),
    )

    # Then both come back as stored, nothing changed, and no anomaly was written
    assert {j: normalized(r) for j, r in replays.items()} == {
        "job-1": before[0],
        "job-2": before[1],
    }
    assert [normalized(stored_job(store, j)) for j in ("job-1", "job-2")] == before
    assert anomaly_indices(store, "job-1") == [0, 1]
    assert anomaly_indices(store, "job-2") == []


def test_a_failure_in_the_batch_leaves_the_others_alone(store: Store) -> None:
    # Given a batch of two successes and one failure whose job had written anomalies
    version = store.register_model(draft(), now=T0)
    store.claim_job("job-3", model="m", now=T0)
    store.add_anomalies(batch(version.id, [7], job_id="job-3"))
    results = [job_result(version.id, "job-1", [0]), job_result(version.id, "job-2", [1, 2])]

    # When the batch is settled
    replays = store.settle_jobs(results, [failure("job-3", "x" * 5000)], now=T0)

    # Then the failure is recorded without anomalies, and the successes are untouched by it
    assert replays == {}
    failed = stored_job(store, "job-3")
    assert (failed.status, failed.error, failed.error_type) == (
        "failed",
        "x" * 4000,
        "invalid_records",
    )
    assert (failed.summary, anomaly_indices(store, "job-3")) == (None, [])
    assert [stored_job(store, j).status for j in ("job-1", "job-2")] == ["succeeded"] * 2
    assert anomaly_indices(store, "job-1") == [0]
    assert anomaly_indices(store, "job-2") == [1, 2]


def test_a_job_failed_earlier_is_returned_and_gets_no_anomalies(store: Store) -> None:
    # Given a job failed by an earlier attempt
    version = store.register_model(draft(), now=T0)
    store.fail_job("job-1", error="bad input", error_type="InvalidRecords", now=T0)

    # When a batch with a result for it is settled
    replays = store.settle_jobs([job_result(version.id, "job-1", [0, 1])], [], now=T0)

    # Then the failure is what the batch learns, and no anomaly is written
    assert list(replays) == ["job-1"]
    assert (replays["job-1"].status, replays["job-1"].error) == ("failed", "bad input")
    assert anomaly_indices(store, "job-1") == []


@pytest.mark.parametrize(
    ("enqueued", "claims", "attempts"),
    [
        pytest.param(False, 0, 1, id="never-seen"),
        pytest.param(True, 0, 1, id="enqueued"),
        pytest.param(True, 1, 2, id="claimed"),
        pytest.param(False, 2, 3, id="claimed-twice"),
    ],
)
@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
def test_settling_counts_the_attempt(
    store: Store, enqueued: bool, claims: int, attempts: int, outcome: str
) -> None:
    # Given a job in some open state
    version = store.register_model(draft(), now=T0)
    if enqueued:
        store.enqueue_job("job-1", model="m", now=T0)
    for _ in range(claims):
        store.claim_job("job-1", model="m", now=T0)

    # When it is settled
    results = [job_result(version.id, "job-1", [0])] if outcome == "succeeded" else []
    failures = [failure("job-1")] if outcome == "failed" else []
    store.settle_jobs(results, failures, now=T0 + timedelta(seconds=1))

    # Then this settling counts as one more attempt
    job = stored_job(store)
    assert (job.status, job.attempts) == (outcome, attempts)


def test_concurrent_overlapping_batches_settle_every_job_once(store: Store) -> None:
    # Given the same forty jobs batched by eight workers at once, in four different orders
    version = store.register_model(draft(), now=T0)
    results = [job_result(version.id, f"job-{i:02d}", [i, i + 1]) for i in range(40)]
    orders = [results, results[::-1], results[1::2] + results[::2], results[::2] + results[1::2]]
    replayed: list[set[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8, timeout=30)

    def settle(worker: int) -> None:
        try:
            barrier.wait()
            replayed.append(set(store.settle_jobs(orders[worker % 4], [], now=T0)))
        except BaseException as exc:
            errors.append(exc)

    run_in_threads(settle, 8)

    # Then no worker failed (no deadlock), each job succeeded once, and the other seven
    # workers got it back as already finished
    assert errors == []
    jobs = [stored_job(store, r.summary.job_id) for r in results]
    assert {(j.status, j.attempts) for j in jobs} == {("succeeded", 1)}
    assert sum(len(r) for r in replayed) == 7 * 40
    stored = {(a.job_id, a.record_index) for a in store.list_anomalies(limit=1000)}
    assert stored == {(r.summary.job_id, i) for r in results for i in r.anomalies.record_index}


# -- fan-out ----------------------------------------------------------------------------
def test_start_fan_out_records_the_waiting_task(store: Store) -> None:
    # Given a claimed job
    version = store.register_model(draft(), now=T0)
    store.claim_job("job-1", model="m", now=T0)

    # When it is fanned out
    store.start_fan_out(
        "job-1", task_id="task-1", chunks_total=3, model_id=version.id, dataset_name="ds"
    )

    # Then the job names the task waiting for its outcome, and stays running
    job = stored_job(store)
    assert (job.status, job.task_id) == ("running", "task-1")


@pytest.mark.parametrize("state", ["queued", "succeeded", "failed"])
def test_start_fan_out_of_a_job_not_running_does_nothing(store: Store, state: str) -> None:
    # Given a job that is not running
    if state == "queued":
        store.enqueue_job("job-1", model="m", now=T0)
    else:
        finish_job(store, state)
    before = normalized(stored_job(store))

    # When it is fanned out
    store.start_fan_out("job-1", task_id="task-1", chunks_total=3, model_id=1, dataset_name=None)

    # Then nothing changes
    assert normalized(stored_job(store)) == before


def test_job_progress_counts_each_chunk_done_once(store: Store) -> None:
    # Given a job not yet fanned out, then fanned out in three chunks
    store.enqueue_job("job-0", model="m", now=T0)
    assert store.job_progress("job-0") is None
    assert store.job_progress("nope") is None
    version = fan_out(store, chunks_total=3)
    assert store.job_progress("job-1") == JobProgress(chunks_done=0, chunks_total=3, records=0)

    # When chunk 0 arrives twice and chunk 2 once
    for index in (0, 0, 2):
        store.complete_chunk("job-1", chunk(version.id, index), version=version, top_k=5, now=T0)

    # Then two chunks of ten records each are done
    assert store.job_progress("job-1") == JobProgress(chunks_done=2, chunks_total=3, records=20)


@pytest.fixture(params=["inserted", "copied"])
def chunk_writes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Chunk anomalies written as a multi-row INSERT, then (on PostgreSQL) by COPY
    straight into the table, as a chunk with more than COPY_MIN_ROWS anomalies is."""
    if request.param == "copied":
        monkeypatch.setattr(bulk, "COPY_MIN_ROWS", 0)
    return str(request.param)


@pytest.mark.usefixtures("chunk_writes")
def test_a_redelivered_chunk_counts_once(store: Store) -> None:
    # Given a job fanned out in three chunks
    version = fan_out(store, chunks_total=3)

    # When the same chunk is delivered twice
    first = store.complete_chunk("job-1", chunk(version.id, 0), version=version, top_k=5, now=T0)
    second = store.complete_chunk("job-1", chunk(version.id, 0), version=version, top_k=5, now=T0)

    # Then its anomalies are stored once and the job still runs
    assert (first.completed, second.completed) == (False, False)
    assert second.job.status == stored_job(store).status == "running"
    assert anomaly_indices(store, "job-1") == [1, 4]

    # And once the other chunks arrive, the job's totals count it once
    for index in (1, 2):
        store.complete_chunk("job-1", chunk(version.id, index), version=version, top_k=5, now=T0)
    job = stored_job(store)
    assert (job.status, job.n_records, job.n_anomalies, job.cache_hits) == (
        "succeeded",
        30,
        6,
        3,
    )


@pytest.mark.parametrize(
    ("order", "completing_call"),
    [
        pytest.param([0, 1, 2], 2, id="in-order"),
        pytest.param([2, 0, 1], 2, id="out-of-order"),
        pytest.param([1, 1, 2, 1, 0], 4, id="same-chunk-again-and-again"),
        pytest.param([2, 0, 2, 1, 0, 1], 3, id="redelivered-after-completion"),
    ],
)
@pytest.mark.usefixtures("chunk_writes")
def test_the_last_chunk_completes_the_job_once_with_the_aggregate(
    store: Store, order: list[int], completing_call: int
) -> None:
    # Given a job claimed at T0 and fanned out in three chunks
    version = fan_out(store, chunks_total=3)

    # When the chunks arrive in the given order, one second apart
    outcomes = [
        store.complete_chunk(
            "job-1",
            chunk(version.id, index),
            version=version,
            top_k=4,
            now=T0 + timedelta(seconds=call + 1),
        )
        for call, index in enumerate(order)
    ]

    # Then only the call that completes the job says so, and the job holds the aggregate
    # of the three chunks, each counted once
    assert [o.completed for o in outcomes] == [
        call == completing_call for call in range(len(order))
    ]
    finished_at = T0 + timedelta(seconds=completing_call + 1)
    expected = fan_out_summary(version, duration_ms=(completing_call + 1) * 1000.0)
    job = stored_job(store)
    assert normalized(outcomes[completing_call].job) == normalized(job)
    assert (job.status, job.task_id, utc(job.finished_at)) == ("succeeded", "task-1", finished_at)
    assert (job.n_records, job.n_anomalies, job.cache_hits) == (30, 6, 3)
    assert job.threshold == version.threshold
    assert job.duration_ms == pytest.approx(expected.duration_ms)
    assert job.summary == expected.to_dict()
    assert anomaly_indices(store, "job-1") == [1, 4, 11, 14, 21, 24]


@pytest.mark.usefixtures("chunk_writes")
def test_a_chunk_after_completion_writes_nothing(store: Store) -> None:
    # Given a fanned-out job whose two chunks completed it
    version = fan_out(store, chunks_total=2)
    for index in (0, 1):
        store.complete_chunk("job-1", chunk(version.id, index), version=version, top_k=4, now=T0)
    before = normalized(stored_job(store))

    # When a chunk with another anomaly arrives late
    late = store.complete_chunk(
        "job-1", chunk(version.id, 0, extra=[7]), version=version, top_k=4, now=T0
    )

    # Then it neither counts nor writes
    assert (late.completed, late.job.status) == (False, "succeeded")
    assert normalized(stored_job(store)) == before
    assert anomaly_indices(store, "job-1") == [1, 4, 11, 14]


@pytest.mark.usefixtures("chunk_writes")
def test_a_chunk_of_a_failed_job_writes_nothing(store: Store) -> None:
    # Given a fanned-out job with one chunk done, then failed by another chunk's bad data
    version = fan_out(store, chunks_total=3)
    store.complete_chunk("job-1", chunk(version.id, 0), version=version, top_k=4, now=T0)
    store.fail_job("job-1", error="chunk 1: bad value", error_type="InvalidRecords", now=T0)

    # When the remaining chunks arrive
    late = [
        store.complete_chunk("job-1", chunk(version.id, i), version=version, top_k=4, now=T0)
        for i in (2, 1)
    ]

    # Then none counts or completes, the job stays failed, and it has no anomalies
    assert [(o.completed, o.job.status) for o in late] == [(False, "failed")] * 2
    job = stored_job(store)
    assert (job.status, job.error, job.task_id) == ("failed", "chunk 1: bad value", "task-1")
    assert anomaly_indices(store, "job-1") == []


@pytest.mark.usefixtures("chunk_writes")
def test_concurrent_chunks_complete_the_job_exactly_once(store: Store) -> None:
    # Given a job fanned out in eight chunks, each delivered to two workers at once
    n = 8
    version = fan_out(store, chunks_total=n)
    outcomes: list[ChunkOutcome] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2 * n, timeout=30)

    def deliver(worker: int) -> None:
        try:
            barrier.wait()
            done = store.complete_chunk(
                "job-1", chunk(version.id, worker % n), version=version, top_k=3, now=T0
            )
            outcomes.append(done)
        except BaseException as exc:
            errors.append(exc)

    run_in_threads(deliver, 2 * n)

    # Then every chunk counted once and exactly one delivery completed the job, with the
    # totals of all eight chunks
    assert errors == []
    assert (len(outcomes), sum(o.completed for o in outcomes)) == (2 * n, 1)
    job = stored_job(store)
    assert (job.status, job.n_records, job.n_anomalies) == ("succeeded", 10 * n, 2 * n)
    assert job.cache_hits == sum(range(n))
    assert job.summary is not None
    assert [t["record_index"] for t in job.summary["top_anomalies"]] == [74, 71, 64]
    assert len(store.list_anomalies(job_id="job-1", limit=1000)) == 2 * n


@pytest.mark.usefixtures("chunk_writes")
def test_a_chunk_writes_only_the_anomalies_not_stored_yet(store: Store) -> None:
    # Given a fanned-out job one of whose chunk's anomalies is somehow stored already
    version = fan_out(store, chunks_total=2)
    store.add_anomalies(batch(version.id, [4]))

    # When the chunk completes
    done = store.complete_chunk("job-1", chunk(version.id, 0), version=version, top_k=4, now=T0)

    # Then it counts, and the record is stored once beside the chunk's other anomaly
    assert (done.completed, done.job.status) == (False, "running")
    assert anomaly_indices(store, "job-1") == [1, 4]


@pytest.mark.usefixtures("chunk_writes")
def test_a_chunk_stores_its_anomalies_explanations(store: Store) -> None:
    # Given a chunk whose anomalies are explained (the second one not)
    version = fan_out(store, chunks_total=1)
    explained = {
        "method": "isolation_bits",
        "exact": True,
        "top": [{"feature": "b", "contribution": 0.5}],
    }
    given = chunk(version.id, 0)
    given = dataclasses.replace(
        given, anomalies=dataclasses.replace(given.anomalies, explanation=[explained, None])
    )

    # When it completes the job
    done = store.complete_chunk("job-1", given, version=version, top_k=4, now=T0)

    # Then each anomaly reads back with its explanation
    assert done.completed
    stored = sorted(store.list_anomalies(job_id="job-1"), key=lambda a: a.record_index)
    assert [a.explanation for a in stored] == [explained, None]


# -- bulk writes ------------------------------------------------------------------------
LARGE = 50_000


def test_a_large_batch_round_trips_exactly(store: Store) -> None:
    # Given fifty thousand anomalies with awkward values
    version = store.register_model(draft(), now=T0)
    given = large_batch(version.id, job_id="job-1")

    # When they are written twice
    first, second = store.add_anomalies(given), store.add_anomalies(given)

    # Then all are new the first time, none the second, and every value reads back as given
    assert (first, second) == (LARGE, 0)
    assert stored_rows(store, "job-1") == expected_rows(given)


def test_a_large_settled_job_round_trips_exactly(store: Store) -> None:
    # Given a small job and one with fifty thousand anomalies, scored together
    version = store.register_model(draft(), now=T0)
    given = large_batch(version.id, job_id="job-big")
    summary = dataclasses.replace(job_summary("job-big"), n_anomalies=LARGE)
    results = [
        job_result(version.id, "job-small", [3]),
        JobResult(summary=summary, model_id=version.id, anomalies=given),
    ]

    # When they are settled in one call, and then again
    assert store.settle_jobs(results, [], now=T0) == {}
    assert set(store.settle_jobs(results, [], now=T0)) == {"job-small", "job-big"}

    # Then every anomaly reads back exactly once, as given
    assert stored_rows(store, "job-big") == expected_rows(given)
    assert anomaly_indices(store, "job-small") == [3]
    assert stored_job(store, "job-big").n_anomalies == LARGE


def large_batch(model_id: int, *, job_id: str) -> AnomalyBatch:
    """Anomalies with sparse 64-bit indices, full-precision floats, extreme and subnormal
    scores, microsecond timestamps and non-ASCII or missing record ids."""
    rng = np.random.default_rng(7)
    indices = rng.choice(2**40, size=LARGE, replace=False).astype(np.int64)
    score = rng.normal(scale=1e3, size=LARGE)
    score[:4] = [5e-324, -1e300, 1e300, -0.0]
    severity = rng.random(LARGE)
    severity[:2] = [0.0, 1.0]
    return AnomalyBatch(
        job_id=job_id,
        model_id=model_id,
        record_index=indices,
        score=score,
        severity=severity,
        timestamp=[T0 + timedelta(microseconds=7_919 * i) for i in range(LARGE)],
        record_id=[None if i % 3 == 0 else f"rec-{i}-é€" for i in range(LARGE)],
        explanation=[explanation(i) if i % 5 else None for i in range(LARGE)],
    )


def explanation(i: int) -> dict[str, Any]:
    top = [
        {"feature": f"col-{i % 7}-é", "contribution": i / 3},
        {"feature": 2, "contribution": -0.5},
    ]
    return {"method": "mahalanobis", "exact": True, "top": top}


Row = tuple[int, int, str | None, datetime | None, float, float, str, Any]


def expected_rows(given: AnomalyBatch) -> dict[int, Row]:
    return {
        int(i): (given.model_id, int(i), rid, utc(ts), float(s), float(v), "active", why)
        for i, rid, ts, s, v, why in zip(
            given.record_index.tolist(),
            given.record_id,
            given.timestamp,
            given.score.tolist(),
            given.severity.tolist(),
            given.explanation or [None] * len(given),
            strict=True,
        )
    }


def stored_rows(store: Store, job_id: str) -> dict[int, Row]:
    stored = store.list_anomalies(job_id=job_id, limit=2 * LARGE)
    rows = {
        a.record_index: (
            a.model_id,
            a.record_index,
            a.record_id,
            utc(a.timestamp),
            a.score,
            a.severity,
            a.status,
            a.explanation,
        )
        for a in stored
    }
    assert len(rows) == len(stored), "a (job_id, record_index) pair is stored twice"
    assert all(np.isfinite([a.score for a in stored])), "a score came back non-finite"
    return rows


def anomaly_indices(store: Store, job_id: str) -> list[int]:
    return sorted(a.record_index for a in store.list_anomalies(job_id=job_id, limit=10_000))


def job_result(
    model_id: int, job_id: str, indices: list[int], *, n_records: int = 100
) -> JobResult:
    summary = dataclasses.replace(
        job_summary(job_id), n_records=n_records, n_anomalies=len(indices)
    )
    return JobResult(
        summary=summary,
        model_id=model_id,
        anomalies=batch(model_id, indices, job_id=job_id),
        dataset_name="ds",
    )


def failure(job_id: str, error: str = "bad input") -> JobFailure:
    return JobFailure(job_id=job_id, model="m", error=error, error_type="invalid_records")


CHUNK_ROWS = 10


def fan_out(store: Store, *, chunks_total: int) -> ModelVersion:
    """Register model "m", claim job-1 at T0 and fan it out in ``chunks_total`` chunks."""
    version = store.register_model(draft(), now=T0)
    store.claim_job("job-1", model="m", now=T0)
    store.start_fan_out(
        "job-1",
        task_id="task-1",
        chunks_total=chunks_total,
        model_id=version.id,
        dataset_name="ds",
    )
    return version


def chunk(model_id: int, index: int, *, extra: tuple[int, ...] | list[int] = ()) -> ChunkResult:
    """Chunk ``index`` of job-1: ten records, anomalies at its 2nd and 5th rows (plus
    ``extra`` rows), scores rising with the record index, ``index`` cache hits."""
    rows = [index * CHUNK_ROWS + r for r in (1, 4, *extra)]
    anomalies = batch(model_id, rows)
    top = [
        TopAnomaly(record_index=i, record_id=rid, score=s, severity=v)
        for i, rid, s, v in zip(
            rows,
            anomalies.record_id,
            anomalies.score.tolist(),
            anomalies.severity.tolist(),
            strict=True,
        )
    ]
    return ChunkResult(
        chunk_index=index,
        tally=ChunkTally(
            n_records=CHUNK_ROWS,
            n_anomalies=len(rows),
            cache_hits=index,
            top=sorted(top, key=lambda t: -t.score),
        ),
        anomalies=anomalies,
    )


def fan_out_summary(version: ModelVersion, *, duration_ms: float) -> JobSummary:
    """The summary of job-1 after chunks 0, 1 and 2 of :func:`chunk`, top 4."""
    top = [
        TopAnomaly(record_index=i, record_id=f"r{i}" if i % 2 == 0 else None, score=s, severity=v)
        for i in (24, 21, 14, 11)
        for v in [0.6 + i / 1000]
        for s in [1.0 + v]
    ]
    return JobSummary(
        job_id="job-1",
        model="m",
        model_version=1,
        n_records=30,
        n_anomalies=6,
        threshold=version.threshold,
        cache_hits=3,
        duration_ms=duration_ms,
        top_anomalies=top,
    )


# -- datasets ---------------------------------------------------------------------------
def test_register_dataset_round_trips(store: Store) -> None:
    stored = store.register_dataset(dataset(), now=T0)

    assert normalized(stored) == dataclasses.replace(dataset(), created_at=T0)
    assert normalized(store.get_dataset("ds")) == normalized(stored)


def test_registering_a_name_again_replaces_it(store: Store) -> None:
    # Given a registered dataset
    store.register_dataset(dataset(n_rows=10), now=T0)

    # When the name is registered again with new contents
    later = T0 + timedelta(days=1)
    replaced = store.register_dataset(dataset(n_rows=99), now=later)

    # Then there is one dataset of that name, holding the new contents
    assert (replaced.n_rows, utc(replaced.created_at)) == (99, later)
    assert [(d.name, d.n_rows) for d in store.list_datasets()] == [("ds", 99)]


def test_list_datasets_newest_first(store: Store) -> None:
    for i, name in enumerate(["old", "mid", "new"]):
        store.register_dataset(dataset(name), now=T0 + timedelta(hours=i))

    assert [d.name for d in store.list_datasets()] == ["new", "mid", "old"]


def test_unknown_dataset_says_how_to_register(store: Store) -> None:
    with pytest.raises(UnknownDataset, match="no dataset named 'ghost'; register it"):
        store.get_dataset("ghost")
