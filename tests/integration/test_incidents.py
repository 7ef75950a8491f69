"""Incidents through the service layer on SQLite and PostgreSQL: jobs that found
anomalies are folded once into incidents per model version and entity; triage keeps
its history."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from pynomaly_workers.adapters.stores.tables import AnomalyRow, IncidentInboxRow
from pynomaly_workers.domain.errors import InvalidInput
from pynomaly_workers.services import incidents
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.services.detection import run_detection
from tests.factories import engine_of, rows_with_outliers, train

pytestmark = pytest.mark.integration
T0 = datetime(2026, 12, 1, 8, tzinfo=UTC)


def detect(adapters: Adapters, job_id: str, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("model", "m")
    return run_detection(adapters, {"job_id": job_id, **kwargs}, default_job_id=job_id).to_dict()


def outlier_job(
    adapters: Adapters,
    job_id: str,
    *,
    entity: str,
    start: datetime,
    outliers: tuple[int, ...] = (3, 50, 120),
) -> dict[str, Any]:
    rows = rows_with_outliers(outliers=outliers)
    stamps = [(start + timedelta(seconds=i)).isoformat() for i in range(len(rows))]
    return detect(adapters, job_id, records=rows, timestamps=stamps, entities=[entity] * len(rows))


def inbox(adapters: Adapters) -> int:
    with engine_of(adapters).connect() as conn:
        return int(conn.execute(select(func.count()).select_from(IncidentInboxRow)).scalar_one())


def test_anomalies_fold_into_one_incident_per_entity_once(adapters: Adapters) -> None:
    # Given a model, and two jobs of entity a (an hour apart) and one of entity b
    train(adapters)
    first = outlier_job(adapters, "a-1", entity="a", start=T0)
    outlier_job(adapters, "a-2", entity="a", start=T0 + timedelta(minutes=40))
    outlier_job(adapters, "b-1", entity="b", start=T0)
    assert inbox(adapters) == 3

    # When incident upkeep runs
    report = incidents.fold_pending(adapters)

    # Then a has one incident holding both jobs' anomalies, b its own; the inbox is empty
    assert (report.jobs, report.opened) == (3, 2)
    assert inbox(adapters) == 0
    listed = {i.entity: i for i in adapters.store.list_incidents()}
    assert set(listed) == {"a", "b"}
    assert listed["a"].anomaly_count == 2 * first["n_anomalies"]
    assert listed["b"].anomaly_count == first["n_anomalies"]
    assert listed["a"].status == "open"
    assert listed["a"].first_ts == T0 + timedelta(seconds=3)
    with engine_of(adapters).connect() as conn:
        stored = conn.execute(
            select(func.max(AnomalyRow.severity)).where(AnomalyRow.entity == "a")
        ).scalar_one()
    assert listed["a"].max_severity == pytest.approx(stored)

    # And running the same jobs again, or folding again, changes nothing
    outlier_job(adapters, "a-1", entity="a", start=T0)
    assert inbox(adapters) == 0
    again = incidents.fold_pending(adapters)
    assert (again.jobs, again.opened, again.grown) == (0, 0, 0)
    assert adapters.store.get_incident(listed["a"].id).incident.anomaly_count == (
        listed["a"].anomaly_count
    )


def test_anomalies_further_apart_than_the_gap_open_a_second_incident(adapters: Adapters) -> None:
    train(adapters)
    outlier_job(adapters, "j-1", entity="a", start=T0)
    outlier_job(adapters, "j-2", entity="a", start=T0 + timedelta(hours=3))
    incidents.fold_pending(adapters)
    assert len(adapters.store.list_incidents()) == 2


def test_a_job_without_entities_has_incidents_of_the_model_version(adapters: Adapters) -> None:
    train(adapters)
    detect(adapters, "plain", records=rows_with_outliers())
    incidents.fold_pending(adapters)
    (incident,) = adapters.store.list_incidents()
    assert incident.entity is None
    assert incident.model_name == "m"
    detail = adapters.store.get_incident(incident.id)
    assert len(detail.top_anomalies) == incident.anomaly_count
    assert [e.kind for e in detail.events] == ["opened"]


def test_a_source_names_its_entity_column(adapters: Adapters, tmp_path: Path) -> None:
    # Given a CSV whose 'device' column names each record's entity
    train(adapters)
    rows = rows_with_outliers(outliers=(3, 120))
    path = tmp_path / "readings.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["device", "timestamp", "f0", "f1", "f2", "f3"])
        for i, row in enumerate(rows):
            stamp = (T0 + timedelta(seconds=i)).isoformat()
            writer.writerow(["north" if i < 100 else "south", stamp, *row])
    # When it is scored with entity_field
    summary = detect(adapters, "file", source=str(path), entity_field="device")
    incidents.fold_pending(adapters)
    # Then the anomalies carry their entity, and each entity has its incident
    assert summary["n_anomalies"] >= 2
    assert {i.entity for i in adapters.store.list_incidents()} == {"north", "south"}


def test_a_missing_entity_column_is_a_clear_error(adapters: Adapters, tmp_path: Path) -> None:
    train(adapters)
    path = tmp_path / "x.csv"
    path.write_text("f0,f1,f2,f3\n1,2,3,4\n")
    with pytest.raises(InvalidInput, match=r"no column 'device' \(entity_field\)"):
        detect(adapters, "bad", source=str(path), entity_field="device")
    job = adapters.store.get_job("bad")
    assert job is not None
    assert job.status == "failed"
    assert "its columns are f0, f1, f2, f3" in (job.error or "")


def test_idle_incidents_resolve_themselves(adapters: Adapters) -> None:
    train(adapters)
    outlier_job(adapters, "j", entity="a", start=T0)
    incidents.fold_pending(adapters)
    # Nothing is idle yet
    assert incidents.resolve_idle(adapters).resolved == 0
    # Later than the resolve-after setting (an hour by default)
    later = adapters.store.resolve_idle(
        idle=timedelta(hours=1), now=datetime.now(UTC) + timedelta(hours=2)
    )
    assert later.resolved == 1
    (incident,) = adapters.store.list_incidents()
    assert incident.status == "resolved"
    assert incident.resolved_by == "pynomaly"
    assert [e.kind for e in adapters.store.get_incident(incident.id).events] == [
        "opened",
        "resolved",
    ]


def test_triage_keeps_who_when_and_why(adapters: Adapters) -> None:
    # Given an open incident
    train(adapters)
    summary = outlier_job(adapters, "j", entity="a", start=T0)
    incidents.fold_pending(adapters)
    (incident,) = adapters.store.list_incidents(status="open")

    # When someone acknowledges it, labels it, relabels one anomaly and resolves it
    acked = incidents.acknowledge(adapters, incident.id, by="ana", comment="looking")
    assert (acked.status, acked.acknowledged_by) == ("acknowledged", "ana")
    with pytest.raises(InvalidInput, match="only an open incident"):
        incidents.acknowledge(adapters, incident.id, by="bo", comment=None)
    labelled = incidents.label_incident(
        adapters, incident.id, label="expected", by="ana", comment="maintenance window"
    )
    assert labelled == summary["n_anomalies"]
    detail = adapters.store.get_incident(incident.id)
    one = detail.top_anomalies[0]
    assert one.id is not None
    incidents.label_anomaly(adapters, one.id, label="anomaly", by="bo", comment="no, real")
    resolved, _ = incidents.resolve(adapters, incident.id, by="bo", comment="fixed the pump")
    with pytest.raises(InvalidInput, match="resolved already"):
        incidents.resolve(adapters, incident.id, by="bo", comment=None)

    # Then the history has every step, and the newest label of each anomaly counts
    detail = adapters.store.get_incident(incident.id)
    assert resolved.status == "resolved"
    assert [(e.kind, e.actor) for e in detail.events] == [
        ("opened", "pynomaly"),
        ("acknowledged", "ana"),
        ("labelled", "ana"),
        ("resolved", "bo"),
    ]
    assert detail.events[-1].comment == "fixed the pump"
    assert detail.labels == {"expected": labelled - 1, "anomaly": 1}
    history = adapters.store.anomaly_labels(one.id)
    assert [(h.label, h.actor) for h in history] == [("anomaly", "bo"), ("expected", "ana")]


def test_unknown_ids_say_where_to_look(adapters: Adapters) -> None:
    with pytest.raises(InvalidInput, match="pynomaly-workers incidents"):
        incidents.acknowledge(adapters, 999, by="x", comment=None)
    with pytest.raises(InvalidInput, match="no anomaly 999"):
        incidents.label_anomaly(adapters, 999, label="anomaly", by="x", comment=None)
