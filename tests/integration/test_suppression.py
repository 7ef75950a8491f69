"""Suppression through the service layer on SQLite and PostgreSQL: anomalies a live rule
matches are stored and marked with it on every detection path, counted once per rule,
left out of the incident inbox and the fold; expired and removed rules suppress nothing;
rules are kept with who removed them."""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from pynomaly_workers.adapters.stores import bulk
from pynomaly_workers.adapters.stores.tables import AnomalyRow, IncidentInboxRow
from pynomaly_workers.adapters.suppressions import CachedSuppressions
from pynomaly_workers.bootstrap import bootstrap
from pynomaly_workers.domain.errors import InvalidInput
from pynomaly_workers.domain.ports import AnomalyBatch
from pynomaly_workers.domain.suppression import SuppressionError, SuppressionRule
from pynomaly_workers.services import incidents
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.services.detection import run_detection
from pynomaly_workers.services.suppression import add_rule, list_rules, remove_rule
from pynomaly_workers.settings import Settings
from tests.factories import engine_of, rows_with_outliers, train

pytestmark = pytest.mark.integration
T0 = datetime(2026, 12, 1, 8, tzinfo=UTC)
OUTLIERS = (3, 50, 120)


class FixedClock:
    """Wall time set by the test; monotonic time real."""

    def __init__(self, now: datetime) -> None:
        self.at = now

    def now(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        import time

        return time.perf_counter()


def detect(adapters: Adapters, job_id: str, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("model", "m")
    return run_detection(adapters, {"job_id": job_id, **kwargs}, default_job_id=job_id).to_dict()


def entity_job(adapters: Adapters, job_id: str, *, entity: str) -> dict[str, Any]:
    rows = rows_with_outliers(outliers=OUTLIERS)
    stamps = [(T0 + timedelta(seconds=i)).isoformat() for i in range(len(rows))]
    return detect(adapters, job_id, records=rows, timestamps=stamps, entities=[entity] * len(rows))


def marks(adapters: Adapters, job_id: str) -> list[int | None]:
    """suppressed_by of the job's stored anomalies, by record."""
    with engine_of(adapters).connect() as conn:
        return list(
            conn.scalars(
                select(AnomalyRow.suppressed_by)
                .where(AnomalyRow.job_id == job_id)
                .order_by(AnomalyRow.record_index)
            )
        )


def inboxed(adapters: Adapters) -> set[str]:
    with engine_of(adapters).connect() as conn:
        return set(conn.scalars(select(IncidentInboxRow.job_id)))


def rule_of(adapters: Adapters, rule_id: int) -> SuppressionRule:
    (found,) = [r for r in list_rules(adapters, ended=True) if r.id == rule_id]
    return found


def suppress(adapters: Adapters, **fields: Any) -> SuppressionRule:
    values: dict[str, Any] = {"model": "m", "until": "2h", "reason": "maintenance", "actor": "ana"}
    return add_rule(adapters, **(values | fields))


def test_an_entity_rule_marks_counts_and_keeps_anomalies_out_of_incidents(
    adapters: Adapters,
) -> None:
    # Given a model and a rule for pump a
    train(adapters)
    rule = suppress(adapters, entity="a")

    # When jobs of pump a and pump b find anomalies
    a = entity_job(adapters, "job-a", entity="a")
    b = entity_job(adapters, "job-b", entity="b")

    # Then a's are stored and marked with the rule, b's are not
    assert a["n_anomalies"] == b["n_anomalies"] >= len(OUTLIERS)
    assert a["n_suppressed"] == a["n_anomalies"]
    assert "n_suppressed" not in b
    assert marks(adapters, "job-a") == [rule.id] * a["n_anomalies"]
    assert marks(adapters, "job-b") == [None] * b["n_anomalies"]
    assert {t.get("suppressed_by") for t in a["top_anomalies"]} == {rule.id}
    # and the rule counts what it suppressed
    assert rule_of(adapters, rule.id).suppressed_count == a["n_anomalies"]
    # and only b's job waits for incidents, which open for b alone
    assert inboxed(adapters) == {"job-b"}
    report = incidents.fold_pending(adapters)
    assert (report.jobs, report.anomalies, report.opened) == (1, b["n_anomalies"], 1)
    (incident,) = adapters.store.list_incidents()
    assert incident.entity == "b"

    # And a redelivered job counts once
    again = entity_job(adapters, "job-a", entity="a")
    assert again["n_suppressed"] == a["n_anomalies"]
    assert rule_of(adapters, rule.id).suppressed_count == a["n_anomalies"]


def test_listings_mark_and_filter_suppressed_anomalies(adapters: Adapters) -> None:
    # Given one job's anomalies suppressed and another's not, the views refreshed
    train(adapters)
    rule = suppress(adapters, entity="a")
    a = entity_job(adapters, "job-a", entity="a")
    b = entity_job(adapters, "job-b", entity="b")
    adapters.maintenance.refresh_views()
    now = datetime.now(UTC)
    reads = adapters.reads

    # When the newest (the view, on PostgreSQL) and the most severe are listed
    newest = reads.recent_anomalies(now=now, limit=100)
    only = reads.recent_anomalies(now=now, limit=100, suppressed=True)
    hidden = reads.top_anomalies(limit=100, suppressed=False)
    of_model = reads.top_anomalies(model="m", limit=100, suppressed=True)

    # Then each is marked with its rule, and the filters keep the ones asked for
    marked = {x.job_id: x.suppressed_by for x in newest}
    assert marked == {"job-a": rule.id, "job-b": None}
    assert len(newest) == a["n_anomalies"] + b["n_anomalies"]
    assert {x.job_id for x in only} == {x.job_id for x in of_model} == {"job-a"}
    assert {x.job_id for x in hidden} == {"job-b"}
    assert len(hidden) == b["n_anomalies"]


def test_a_feature_range_rule_suppresses_only_values_inside_it(adapters: Adapters) -> None:
    # Given outliers whose every feature is 8.0, and a rule on feature 0 around 8
    train(adapters)
    inside = suppress(adapters, feature="0", between=(7.5, 8.5))
    suppress(adapters, feature="1", between=(100.0, 200.0))  # matches nothing

    # When a job with no entities finds them
    found = detect(adapters, "job", records=rows_with_outliers(outliers=OUTLIERS))

    # Then exactly the outliers are suppressed, by the rule whose range holds them
    stored = marks(adapters, "job")
    assert stored.count(inside.id) == len(OUTLIERS)
    assert found["n_suppressed"] == len(OUTLIERS)
    assert set(stored) <= {inside.id, None}
    assert rule_of(adapters, inside.id).suppressed_count == len(OUTLIERS)
    assert ("job" in inboxed(adapters)) == (found["n_anomalies"] > len(OUTLIERS))


def test_expired_and_removed_rules_suppress_nothing(adapters: Adapters) -> None:
    # Given two rules for every anomaly of m, one to expire in 2 h, one removed
    train(adapters)
    expiring = suppress(adapters, until="2h")
    removed = suppress(adapters, until="1d")
    taken = remove_rule(adapters, removed.id, by="bo")
    assert (taken.removed_by, taken.state(datetime.now(UTC))) == ("bo", "removed")

    # When a job runs while the first is live, and another after it expired
    live = entity_job(adapters, "during", entity="a")
    later = replace(adapters, clock=FixedClock(datetime.now(UTC) + timedelta(hours=3)))
    after = entity_job(later, "after", entity="a")

    # Then only the first job's anomalies are suppressed, by the live rule
    assert set(marks(adapters, "during")) == {expiring.id}
    assert live["n_suppressed"] == live["n_anomalies"]
    assert set(marks(adapters, "after")) == {None}
    assert "n_suppressed" not in after
    assert inboxed(adapters) == {"after"}
    # and both rules are kept, with what each suppressed, listed only with --all
    assert [r.id for r in list_rules(adapters)] == [expiring.id]
    assert [r.state(later.clock.now()) for r in list_rules(later, ended=True)] == [
        "removed",
        "expired",
    ]
    assert rule_of(adapters, removed.id).suppressed_count == 0
    assert rule_of(adapters, expiring.id).suppressed_count == live["n_anomalies"]
    with pytest.raises(SuppressionError, match="removed already, by bo"):
        remove_rule(adapters, removed.id, by="cy")
    with pytest.raises(SuppressionError, match="suppress list --all"):
        remove_rule(adapters, 999_999, by="cy")


def write_readings(path: Path, rows: list[list[float]], *, devices: bool = True) -> Path:
    """A CSV of named features, with a device column (north for the first 100 rows,
    south after) unless ``devices`` is false."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*(["device"] if devices else []), "temp", "rpm", "load", "flow"])
        for i, row in enumerate(rows):
            writer.writerow([*(["north" if i < 100 else "south"] if devices else []), *row])
    return path


@pytest.mark.parametrize("copy", [False, True], ids=["insert", "copy"])
@pytest.mark.parametrize("chunk_rows", [50, 100_000], ids=["fan-out", "in-process"])
def test_sources_are_suppressed_by_entity_and_named_feature(
    store_url: str,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    copy: bool,
    chunk_rows: int,
) -> None:
    # Given a model trained on named columns, and a rule for north's high temperatures
    if copy:
        if not store_url.startswith("postgresql"):
            pytest.skip("COPY is PostgreSQL's path; SQLite inserts")
        monkeypatch.setattr(bulk, "COPY_MIN_ROWS", 0)
    adapters = bootstrap(make_settings(database_url=store_url, chunk_rows=chunk_rows))
    try:
        rows = rows_with_outliers(n=400, outliers=())
        training = write_readings(tmp_path / "train.csv", rows, devices=False)
        train(adapters, records=None, source=str(training))
        rule = suppress(adapters, entity="north", feature="temp", between=(7.0, 9.0))
        source = write_readings(tmp_path / "now.csv", rows_with_outliers(outliers=OUTLIERS))

        # When the file is scored (fanned out in chunks, or in one process)
        found = detect(adapters, "file", source=str(source), entity_field="device")

        # Then north's two outliers (rows 3, 50) are suppressed, south's (120) is not
        with engine_of(adapters).connect() as conn:
            by_row = dict(
                conn.execute(
                    select(AnomalyRow.record_index, AnomalyRow.suppressed_by).where(
                        AnomalyRow.job_id == "file"
                    )
                ).all()
            )
        assert {i for i, r in by_row.items() if r == rule.id} == {3, 50}
        assert by_row[120] is None
        assert found["n_suppressed"] == 2
        assert rule_of(adapters, rule.id).suppressed_count == 2
        report = incidents.fold_pending(adapters)
        assert report.anomalies == found["n_anomalies"] - 2
        assert "north" not in {i.entity for i in adapters.store.list_incidents()}
    finally:
        adapters.close()


def test_a_rule_is_refused_with_what_to_do(adapters: Adapters) -> None:
    train(adapters, model="pumps")
    train(adapters, model="fans")
    with pytest.raises(SuppressionError, match=r"no model named 'pump'.*pumps"):
        suppress(adapters, model="pump")
    with pytest.raises(SuppressionError, match=r"no feature 'temp'; its features are: 0, 1, 2, 3"):
        suppress(adapters, model="pumps", feature="temp", between=(1.0, 2.0))
    with pytest.raises(SuppressionError, match="LO is above HI"):
        suppress(adapters, model="pumps", feature="1", between=(2.0, 1.0))
    with pytest.raises(SuppressionError, match="not in the future"):
        suppress(adapters, model="pumps", until="2020-01-01T00:00:00Z")
    with pytest.raises(InvalidInput, match="invalid"):
        suppress(adapters, model="no such/name")
    assert list_rules(adapters, ended=True) == []


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.at = 0.0

    def __call__(self) -> float:
        return self.at


def test_a_worker_sees_a_rule_another_process_added_within_the_ttl(
    store_url: str, make_settings: Callable[..., Settings]
) -> None:
    # Given a worker process that reads a model's rules at most every 60 s, and has read
    # (none) for its first job
    operator = bootstrap(make_settings(database_url=store_url))
    ticks = Ticks()
    wired = operator.suppressions
    assert isinstance(wired, CachedSuppressions)
    worker = replace(
        operator, suppressions=CachedSuppressions(wired.store, ttl_seconds=60, monotonic=ticks)
    )
    try:
        train(worker)
        entity_job(worker, "before", entity="a")
        reads = count_reads(worker)

        # When an operator's process adds a rule
        rule = suppress(operator, entity="a")

        # Then the worker keeps what it read for the TTL (no query per job) ...
        ticks.at = 59.0
        entity_job(worker, "cached-1", entity="a")
        entity_job(worker, "cached-2", entity="a")
        assert set(marks(worker, "cached-1")) | set(marks(worker, "cached-2")) == {None}
        assert reads() == 0
        # ... and applies the rule at its next read
        ticks.at = 61.0
        entity_job(worker, "fresh", entity="a")
        assert set(marks(worker, "fresh")) == {rule.id}
        assert reads() == 1
        assert rule_of(operator, rule.id).suppressed_count == len(marks(worker, "fresh"))
    finally:
        operator.close()


def count_reads(adapters: Adapters) -> Callable[[], int]:
    """How many times the adapters' rule cache has asked its store since now."""
    cache = adapters.suppressions
    assert isinstance(cache, CachedSuppressions)
    inner = cache.store
    calls = [0]

    class Counting:
        def __getattr__(self, name: str) -> Any:
            return getattr(inner, name)

        def live_rules(self, model_name: str | None, *, now: datetime) -> list[SuppressionRule]:
            calls[0] += 1
            return inner.live_rules(model_name, now=now)

    cache.store = Counting()
    return lambda: calls[0]


def test_a_failed_job_takes_what_it_suppressed_off_the_count(adapters: Adapters) -> None:
    # Given a running job that wrote anomalies, two of them suppressed by a rule, as an
    # in-process job writes its first chunk before a later one turns out bad
    version = train(adapters)
    rule = suppress(adapters)
    now = datetime.now(UTC)
    adapters.store.claim_job("half", model="m", now=now)
    written = adapters.store.add_anomalies(
        AnomalyBatch(
            job_id="half",
            model_id=version.id,
            record_index=np.array([0, 1, 2], dtype=np.int64),
            score=np.array([0.9, 0.8, 0.7]),
            severity=np.array([0.9, 0.8, 0.7]),
            timestamp=[now] * 3,
            record_id=[None] * 3,
            suppressed_by=[rule.id, None, rule.id],
        )
    )
    assert written == 3
    assert rule_of(adapters, rule.id).suppressed_count == 2

    # When the job fails
    adapters.store.fail_job("half", error="bad chunk", error_type="invalid_records", now=now)

    # Then its anomalies are gone, and so is what they added to the rule's count
    assert marks(adapters, "half") == []
    assert rule_of(adapters, rule.id).suppressed_count == 0
