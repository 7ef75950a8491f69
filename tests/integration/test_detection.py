"""Detection through the service layer on SQLite and PostgreSQL (and the Redis cache)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from pynomaly_workers.bootstrap import bootstrap
from pynomaly_workers.domain.errors import (
    InvalidInput,
    InvalidMessage,
    InvalidRecords,
    PayloadTooLarge,
    UnknownModel,
)
from pynomaly_workers.domain.models import ModelRef
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.services.detection import JobAlreadyFailed, in_process, run_detection
from pynomaly_workers.services.detection.scoring import score_rows
from pynomaly_workers.settings import Settings
from tests.factories import reference_scorer, rows_with_outliers, train, write_csv

pytestmark = pytest.mark.integration
CONTRACT_KEYS = {
    "job_id",
    "status",
    "model",
    "model_version",
    "n_records",
    "n_anomalies",
    "threshold",
    "cache_hits",
    "duration_ms",
    "top_anomalies",
}


def detect(adapters: Adapters, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("job_id", "job-1")
    kwargs.setdefault("model", "m")
    return run_detection(adapters, kwargs, default_job_id="fallback").to_dict()


def stored(adapters: Adapters, job_id: str = "job-1") -> list[int]:
    return sorted(
        a.record_index for a in adapters.store.list_anomalies(job_id=job_id, limit=100_000)
    )


def test_detect_returns_the_contract_summary_and_persists_anomalies(adapters: Adapters) -> None:
    # Given a trained model and records with three far outliers
    version = train(adapters)
    rows = rows_with_outliers()

    # When the job runs
    summary = detect(adapters, records=rows, record_ids=[f"id-{i}" for i in range(len(rows))])

    # Then the summary follows the contract and the anomalies are stored
    assert set(summary) == CONTRACT_KEYS
    assert summary["status"] == "succeeded"
    assert (summary["model"], summary["model_version"]) == ("m", version.version)
    assert summary["n_records"] == 200
    assert {3, 50, 120} <= {a["record_index"] for a in summary["top_anomalies"]}
    assert summary["top_anomalies"][0]["record_id"].startswith("id-")
    assert len(stored(adapters)) == summary["n_anomalies"]
    job = adapters.store.get_job("job-1")
    assert job is not None
    assert job.status == "succeeded"
    assert job.summary == summary
    severities = [a.severity for a in adapters.store.list_anomalies(job_id="job-1")]
    assert all(0.5 < s <= 1.0 for s in severities)


def test_running_the_same_job_twice_writes_once(adapters: Adapters) -> None:
    train(adapters)
    first = detect(adapters, records=rows_with_outliers())
    second = detect(adapters, records=rows_with_outliers())

    assert second == first
    assert len(stored(adapters)) == first["n_anomalies"]
    assert len(adapters.store.list_jobs()) == 1


class Crash(BaseException):
    """The worker process dying mid-job: nothing in the service may catch it."""


def stored_scores(adapters: Adapters, job_id: str) -> list[tuple[int, float, float]]:
    found = adapters.store.list_anomalies(job_id=job_id, limit=100_000)
    return sorted((a.record_index, a.score, a.severity) for a in found)


@pytest.fixture
def chunked(store_url: str, make_settings: Callable[..., Settings]) -> Iterator[Adapters]:
    """Adapters that score an inline job 50 records a chunk, committing each chunk's
    anomalies as they go (the in-process path of a large payload)."""
    built = bootstrap(make_settings(database_url=store_url, chunk_rows=50))
    yield built
    built.close()


def test_a_redelivered_running_job_finishes_with_one_set_of_anomalies(
    chunked: Adapters, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a job scored 50 records a chunk, each chunk's anomalies committed as it goes,
    # and what a fault-free run of it stores (outliers 3, 50, 120: chunks 0, 1 and 2)
    adapters = chunked
    train(adapters)
    rows = rows_with_outliers()
    reference = detect(adapters, job_id="reference", records=rows)
    expected = stored_scores(adapters, "reference")
    first_chunk = [a for a in expected if a[0] < 50]
    assert 0 < len(first_chunk) < len(expected)

    # ... whose first attempt dies scoring its second chunk, after writing the first's
    scored = 0

    def dies_on_the_second_chunk(*args: Any, **kwargs: Any) -> Any:
        nonlocal scored
        scored += 1
        if scored == 2:
            raise Crash
        return score_rows(*args, **kwargs)

    monkeypatch.setattr(in_process, "score_rows", dies_on_the_second_chunk)
    with pytest.raises(Crash):
        detect(adapters, records=rows)
    monkeypatch.undo()
    job = adapters.store.get_job("job-1")
    assert job is not None
    assert (job.status, job.attempts) == ("running", 1)
    assert stored_scores(adapters, "job-1") == first_chunk  # part of its anomalies

    # When it is delivered again
    summary = detect(adapters, records=rows)

    # Then it succeeds on its second attempt with exactly the fault-free run's anomalies,
    # scores and severities, and counts each once
    job = adapters.store.get_job("job-1")
    assert job is not None
    assert (job.status, job.attempts) == ("succeeded", 2)
    again = stored_scores(adapters, "job-1")
    assert [a[0] for a in again] == [e[0] for e in expected]
    assert [a[1:] for a in again] == [pytest.approx(e[1:]) for e in expected]
    assert summary["n_anomalies"] == job.n_anomalies == reference["n_anomalies"] == len(expected)


def test_chunked_scoring_writes_exactly_the_anomalies_of_unchunked(
    store_url: str, make_settings: Callable[..., Settings]
) -> None:
    whole = bootstrap(make_settings(database_url=store_url))
    chunked = dataclasses.replace(
        whole, settings=make_settings(database_url=store_url, chunk_rows=7)
    )
    train(whole)
    rows = rows_with_outliers(n=500, outliers=(0, 6, 7, 250, 499))

    a = detect(whole, job_id="whole", records=rows)
    b = detect(chunked, job_id="chunked", records=rows)

    # Small chunks may score on ONNX (float32), large ones on scikit-learn (float64):
    # the same rows are flagged and the scores agree within the version's tolerance.
    assert stored(whole, "whole") == stored(whole, "chunked")
    assert a["n_anomalies"] == b["n_anomalies"]
    tolerance = whole.store.get_model(ModelRef("m")).parity_tolerance or 0.0
    for x, y in zip(a["top_anomalies"], b["top_anomalies"], strict=True):
        assert x["record_index"] == y["record_index"]
        assert x["score"] == pytest.approx(y["score"], abs=tolerance)
    whole.close()


def test_source_and_dataset_jobs_carry_ids_and_timestamps(
    adapters: Adapters, tmp_path: Path
) -> None:
    train(adapters)
    path = write_csv(tmp_path / "in.csv", rows_with_outliers(), ids=True)

    summary = detect(adapters, source=f"file://{path}")

    top = summary["top_anomalies"][0]
    assert top["record_id"] == f"r{top['record_index']}"
    anomaly = adapters.store.list_anomalies(job_id="job-1", limit=1)[0]
    assert anomaly.timestamp.year == 2026
    inline = detect(adapters, job_id="job-2", records=rows_with_outliers())
    assert stored(adapters, "job-1") == stored(adapters, "job-2")
    assert inline["n_anomalies"] == summary["n_anomalies"]


BAD_INPUTS = [
    ({"model": "nope"}, UnknownModel, "no model named 'nope'"),
    ({"model": "m@9"}, UnknownModel, "has no version 9"),
    ({"records": [[1.0, 2.0]]}, InvalidRecords, "2 features but model m@1 expects 4"),
    ({"records": [[1.0, float("nan"), 1.0, 1.0]]}, InvalidRecords, "non-finite"),
    ({"records": []}, InvalidInput, "records"),
    ({"records": [[1.0, "x", 1.0, 1.0]]}, InvalidRecords, "non-numeric value 'x'"),
    ({"records": [[1.0] * 4] * 11}, PayloadTooLarge, "exceed the limit of 10"),
    ({"records": [[1.0] * 4], "extra": 1}, InvalidMessage, "unknown argument"),
    ({"records": [[1.0] * 4], "dataset": "d", "source": "/x"}, InvalidMessage, "exactly one"),
    ({"source": "/nonexistent.csv"}, InvalidInput, "outside the allowed folders"),
    ({"source": "/etc/../etc/passwd.csv"}, InvalidInput, "outside the allowed folders"),
    ({"dataset": "nope"}, InvalidInput, "no dataset named"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_INPUTS)
def test_bad_input_fails_the_job_with_a_message(
    store_url: str,
    make_settings: Callable[..., Settings],
    kwargs: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    adapters = bootstrap(make_settings(database_url=store_url, max_records_per_job=10))
    train(adapters)
    message_kwargs = {"records": [[1.0] * 4], **kwargs}
    if ("dataset" in kwargs or "source" in kwargs) and "records" not in kwargs:
        message_kwargs.pop("records")

    with pytest.raises(error, match=message) as raised:
        detect(adapters, **message_kwargs)

    job = adapters.store.get_job("job-1")
    assert job is not None
    assert job.status == "failed"
    assert job.error == str(raised.value)
    assert job.error_type == raised.value.code  # type: ignore[attr-defined]
    assert stored(adapters) == []
    with pytest.raises(JobAlreadyFailed, match="already failed"):
        detect(adapters, **message_kwargs)
    adapters.close()


def test_cache_serves_repeated_rows_and_never_another_version(
    clean_pg: str, redis_url: str, make_settings: Callable[..., Settings]
) -> None:
    # cache_min_row_cost_us=0: use the cache even for this fast model
    adapters = bootstrap(
        make_settings(database_url=clean_pg, cache_url=redis_url, cache_min_row_cost_us=0)
    )
    train(adapters)
    rows = rows_with_outliers()

    cold = detect(adapters, job_id="cold", records=rows)
    warm = detect(adapters, job_id="warm", records=rows)
    train(adapters, params={"n_estimators": 20})  # version 2 becomes active
    fresh = detect(adapters, job_id="fresh", records=rows)

    assert cold["cache_hits"] == 0
    assert warm["cache_hits"] == len(rows)
    assert warm["top_anomalies"] == cold["top_anomalies"]
    assert fresh["model_version"] == 2
    assert fresh["cache_hits"] == 0
    assert fresh["threshold"] != cold["threshold"]
    adapters.close()


def test_cached_scores_equal_computed_scores(
    clean_pg: str, redis_url: str, make_settings: Callable[..., Settings]
) -> None:
    adapters = bootstrap(make_settings(database_url=clean_pg, cache_url=redis_url))
    version = train(adapters)
    assert adapters.cache is not None
    rows = np.asarray(rows_with_outliers())
    computed = reference_scorer(adapters, version).score(rows)
    adapters.cache.set_many(version.content_hash, rows, computed)

    assert np.array_equal(adapters.cache.get_many(version.content_hash, rows), computed)
    assert np.isnan(adapters.cache.get_many("other-hash", rows)).all()
    adapters.close()


def test_the_cache_is_bypassed_for_a_model_cheaper_than_a_round_trip(
    clean_pg: str, redis_url: str, make_settings: Callable[..., Settings]
) -> None:
    # Given a fast model and a threshold no real model beats
    adapters = bootstrap(
        make_settings(database_url=clean_pg, cache_url=redis_url, cache_min_row_cost_us=1e9)
    )
    train(adapters)
    rows = rows_with_outliers()

    # When the same rows are scored twice
    detect(adapters, job_id="a", records=rows)
    again = detect(adapters, job_id="b", records=rows)

    # Then nothing was cached or served from the cache
    assert again["cache_hits"] == 0
    assert adapters.cache is not None
    assert adapters.cache.client.dbsize() == 0  # type: ignore[attr-defined]
    adapters.close()


def test_a_fanned_out_source_writes_exactly_the_anomalies_of_one_piece(
    store_url: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    # Given a 2,500-row source, scored whole and in chunks of 300 rows
    whole = bootstrap(make_settings(database_url=store_url))
    chunked = dataclasses.replace(
        whole, settings=make_settings(database_url=store_url, chunk_rows=300)
    )
    train(whole)
    rows = rows_with_outliers(n=2500, outliers=(0, 299, 300, 1234, 2499), seed=9)
    path = str(write_csv(tmp_path / "s.csv", rows, ids=True))

    # When both run (the chunked one through pynomaly.detect.chunk's service)
    a = detect(whole, job_id="whole", source=path)
    b = detect(chunked, job_id="chunked", source=path)

    # Then the same rows are anomalies with the same scores, and the summaries agree
    def rows_of(job_id: str) -> list[tuple[int, str | None, float]]:
        found = whole.store.list_anomalies(job_id=job_id, limit=100_000)
        return sorted((x.record_index, x.record_id, round(x.score, 9)) for x in found)

    assert rows_of("whole") == rows_of("chunked")
    assert {k: v for k, v in a.items() if k not in ("job_id", "duration_ms")} == {
        k: v for k, v in b.items() if k not in ("job_id", "duration_ms")
    }
    job = whole.store.get_job("chunked")
    assert job is not None
    assert job.attempts == 1
    whole.close()


def test_a_source_fans_out_in_chunks_whose_matrix_fits_the_byte_budget(
    store_url: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    # Given a 4-feature model and workers whose chunk matrix may hold 8,192 bytes (256 rows),
    # while CHUNK_ROWS alone would read the 1,000-row source whole
    settings = make_settings(database_url=store_url, chunk_rows=100_000, chunk_max_mb=0.008192)
    adapters = bootstrap(settings)
    train(adapters)
    path = str(write_csv(tmp_path / "s.csv", rows_with_outliers(n=1000, seed=3), ids=True))

    # When the source is scored
    summary = detect(adapters, job_id="budget", source=path)

    # Then it ran as ceil(1000 / 256) = 4 chunks, every row scored once
    assert summary["n_records"] == 1000
    with adapters.store.engine.connect() as conn:  # type: ignore[attr-defined]
        sizes = conn.execute(
            text("SELECT n_records FROM detection_chunks WHERE job_id = 'budget'")
        ).scalars()
        assert sorted(sizes) == [232, 256, 256, 256]
    adapters.close()


def test_each_anomaly_carries_its_explanation(adapters: Adapters, tmp_path: Path) -> None:
    # Given a model, and rows whose outliers deviate in feature 2 only
    train(adapters, algorithm="elliptic")
    rows = rows_with_outliers(n=300, outliers=())
    for index in (10, 150, 290):
        rows[index][2] = 9.0
    path = str(write_csv(tmp_path / "named.csv", rows))

    # When they are scored inline and from a CSV with named columns
    inline = detect(adapters, job_id="inline", records=rows)
    named = detect(adapters, job_id="named", source=path)

    # Then every stored anomaly names feature 2 first (by index inline, by column name
    # from the file), and the summary's top anomalies carry the same explanation
    for job_id, feature in (("inline", 2), ("named", "f2")):
        found = {a.record_index: a for a in adapters.store.list_anomalies(job_id=job_id)}
        assert {10, 150, 290} <= set(found)
        for index in (10, 150, 290):
            explanation = found[index].explanation
            assert explanation is not None
            assert (explanation["method"], explanation["exact"]) == ("mahalanobis", True)
            assert explanation["top"][0]["feature"] == feature
            assert len(explanation["top"]) == 4  # all four features (default top 5)
    for summary in (inline, named):
        tops = {t["record_index"]: t for t in summary["top_anomalies"]}
        stored = {
            a.record_index: a.explanation
            for a in adapters.store.list_anomalies(job_id=summary["job_id"])
        }
        assert all(tops[i]["explanation"] == stored[i] for i in tops)


def test_explanations_can_be_turned_off(
    store_url: str, make_settings: Callable[..., Settings]
) -> None:
    adapters = bootstrap(make_settings(database_url=store_url, explain_top_features=0))
    train(adapters)

    summary = detect(adapters, records=rows_with_outliers())

    assert all("explanation" not in t for t in summary["top_anomalies"])
    assert all(a.explanation is None for a in adapters.store.list_anomalies(job_id="job-1"))
    adapters.close()


@pytest.mark.parametrize("algorithm", ["hbos", "ecod"])
def test_hbos_and_ecod_detect_and_explain_exactly(adapters: Adapters, algorithm: str) -> None:
    # Given a model of the algorithm, and rows with the usual outliers
    version = train(adapters, algorithm=algorithm)

    # When they are scored
    summary = detect(adapters, records=rows_with_outliers())

    # Then the outliers are found, each explained by terms that add up to its score
    found = {a.record_index: a for a in adapters.store.list_anomalies(job_id="job-1")}
    assert {3, 50, 120} <= set(found)
    for index in (3, 50, 120):
        explanation = found[index].explanation
        assert explanation is not None
        assert (explanation["method"], explanation["exact"]) == ("feature_scores", True)
        total = sum(item["contribution"] for item in explanation["top"])
        assert total == pytest.approx(found[index].score, rel=1e-9)
    assert summary["model_version"] == version.version
