"""Incidents reach a real Alertmanager: fired with their labels, grouped by model and
entity, re-sent without duplicates, moved to a new severity band, and resolved; the
store picks the right incidents on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from pynomaly_workers.adapters.alertmanager import AlertmanagerClient
from pynomaly_workers.adapters.stores.sql import SqlStore
from pynomaly_workers.adapters.stores.tables import IncidentRow
from pynomaly_workers.bootstrap import bootstrap
from pynomaly_workers.domain.alerting import AlertmanagerRejected, AlertmanagerUnavailable
from pynomaly_workers.metrics import get_metrics
from pynomaly_workers.services.alerting import sync_alerts
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.settings import Settings
from tests.alertmanager import (
    T0,
    Alertmanager,
    add_incident,
    add_model,
    free_port,
    running_alertmanager,
    wait_until,
)
from tests.factories import engine_of

pytestmark = pytest.mark.integration

RESEND = 60.0


def incident(engine: Engine, incident_id: int) -> IncidentRow:
    with Session(engine) as session:
        return session.get_one(IncidentRow, incident_id)


def change(engine: Engine, incident_id: int, **values: Any) -> None:
    with engine.begin() as conn:
        conn.execute(update(IncidentRow).where(IncidentRow.id == incident_id).values(**values))


def resolve(engine: Engine, incident_id: int, *, at: datetime) -> None:
    change(engine, incident_id, status="resolved", resolved_at=at, updated_at=at)


# -- fixtures ----------------------------------------------------------------------------
@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Alertmanager]:
    with running_alertmanager(tmp_path / "alertmanager") as manager:
        yield manager


@pytest.fixture
def am_adapters(
    clean_pg: str, make_settings: Callable[..., Settings], alertmanager: Alertmanager
) -> Iterator[Adapters]:
    """Adapters on PostgreSQL posting to the test's Alertmanager."""
    built = bootstrap(
        make_settings(
            database_url=clean_pg,
            alertmanager_url=alertmanager.url,
            alertmanager_resend_seconds=RESEND,
        )
    )
    yield built
    built.close()


def now() -> datetime:
    # Alertmanager compares endsAt with its own clock: the tests post at the real time.
    return datetime.now(UTC)


def firing(manager: Alertmanager) -> list[dict[str, Any]]:
    return [a for a in manager.alerts() if a["status"]["state"] == "active"]


def notified(manager: Alertmanager, status: str) -> list[dict[str, Any]]:
    return [n for n in manager.receiver.received() if n["status"] == status]


def posts(outcome: str) -> float:
    value = get_metrics().alertmanager_posts.labels(outcome=outcome)._value.get()
    return float(value)


# -- against a real Alertmanager ---------------------------------------------------------
def test_an_open_incident_fires_with_its_labels_and_the_receiver_is_told(
    am_adapters: Adapters, alertmanager: Alertmanager
) -> None:
    # Given an open critical incident of sensors@3 on pump-7
    engine = engine_of(am_adapters)
    incident_id = add_incident(engine, add_model(engine), severity=0.97)
    sent_before = posts("sent")

    # When the sync runs
    result = sync_alerts(am_adapters, now=now())

    # Then Alertmanager holds one alert with the incident's labels
    assert (result.posted, result.ended, result.posts, result.error) == (1, 0, 1, None)
    (alert,) = firing(alertmanager)
    assert alert["labels"] == {
        "alertname": "PynomalyIncident",
        "model": "sensors",
        "model_version": "3",
        "entity": "pump-7",
        "severity": "critical",
        "incident_id": str(incident_id),
    }
    assert "12 anomalies" in alert["annotations"]["description"]
    assert "temp (2.5)" in alert["annotations"]["description"]
    assert alert["annotations"]["status"] == "open"
    # and the receiver is told it fires
    (note,) = wait_until(lambda: notified(alertmanager, "firing"), what="a firing notification")
    assert note["groupLabels"] == {
        "alertname": "PynomalyIncident",
        "model": "sensors",
        "entity": "pump-7",
    }
    assert [a["labels"]["incident_id"] for a in note["alerts"]] == [str(incident_id)]
    # and the incident records what was posted
    row = incident(engine, incident_id)
    assert row.alert_sent_at is not None
    assert row.alert_severity == "critical"
    assert row.alert_ended_at is None
    assert posts("sent") == sent_before + 1


def test_incidents_are_grouped_by_model_and_entity(
    am_adapters: Adapters, alertmanager: Alertmanager
) -> None:
    # Given two incidents of sensors on pump-7, one on pump-8, and one of another model
    engine = engine_of(am_adapters)
    sensors, pumps = add_model(engine), add_model(engine, name="pumps", version=1)
    first = add_incident(engine, sensors, entity="pump-7", opened_at=T0)
    second = add_incident(engine, sensors, entity="pump-7", opened_at=T0 + timedelta(hours=3))
    other = add_incident(engine, sensors, entity="pump-8", severity=0.6)
    no_entity = add_incident(engine, pumps, entity=None, severity=0.85)

    # When the sync runs
    assert sync_alerts(am_adapters, now=now()).posted == 4

    # Then Alertmanager shows one group per model and entity
    def groups() -> dict[tuple[str, str | None], set[str]]:
        return {
            (g["labels"]["model"], g["labels"].get("entity")): {
                a["labels"]["incident_id"] for a in g["alerts"]
            }
            for g in alertmanager.groups()
        }

    assert groups() == {
        ("sensors", "pump-7"): {str(first), str(second)},
        ("sensors", "pump-8"): {str(other)},
        ("pumps", None): {str(no_entity)},
    }

    # and the receiver is told of each group, the last word on each holding all its
    # alerts (a group whose first alert was flushed before its second one arrived, on a
    # slow machine, is notified again a group interval later with both)
    def latest_per_group() -> list[dict[str, Any]]:
        latest = {n["groupKey"]: n for n in notified(alertmanager, "firing")}
        return list(latest.values())

    notes = wait_until(
        lambda: (
            sorted(len(n["alerts"]) for n in latest_per_group()) == [1, 1, 2] and latest_per_group()
        ),
        what="a firing notification of each group with all its alerts",
    )
    assert sorted(len(n["alerts"]) for n in notes) == [1, 1, 2]
    severities = {a["labels"]["severity"] for n in notes for a in n["alerts"]}
    assert severities == {"critical", "medium", "high"}


def test_resolving_the_incident_resolves_the_alert(
    am_adapters: Adapters, alertmanager: Alertmanager
) -> None:
    # Given an incident whose alert fires
    engine = engine_of(am_adapters)
    incident_id = add_incident(engine, add_model(engine))
    sync_alerts(am_adapters, now=now())
    wait_until(lambda: notified(alertmanager, "firing"), what="a firing notification")

    # When it is resolved and the sync runs
    resolved_at = now()
    resolve(engine, incident_id, at=resolved_at)
    result = sync_alerts(am_adapters, now=now())

    # Then the alert ends: Alertmanager no longer shows it and the receiver is told
    assert (result.posted, result.ended) == (0, 1)
    assert firing(alertmanager) == []
    (note,) = wait_until(lambda: notified(alertmanager, "resolved"), what="a resolved note")
    (alert,) = note["alerts"]
    assert alert["status"] == "resolved"
    assert alert["labels"]["incident_id"] == str(incident_id)
    assert datetime.fromisoformat(alert["endsAt"]) == resolved_at.replace(
        microsecond=resolved_at.microsecond // 1000 * 1000
    )
    # and the end is recorded, so the next sync posts nothing
    assert incident(engine, incident_id).alert_ended_at is not None
    assert sync_alerts(am_adapters, now=now()).posts == 0


def test_resending_while_open_keeps_one_alert_and_one_notification(
    am_adapters: Adapters, alertmanager: Alertmanager
) -> None:
    # Given an open incident posted once
    engine = engine_of(am_adapters)
    incident_id = add_incident(engine, add_model(engine))
    start = now()
    sync_alerts(am_adapters, now=start)
    (first,) = firing(alertmanager)
    wait_until(lambda: notified(alertmanager, "firing"), what="a firing notification")

    # When it is acknowledged, and the sync runs again within the interval, then after it
    change(engine, incident_id, status="acknowledged", updated_at=start)
    assert sync_alerts(am_adapters, now=start + timedelta(seconds=1)).posted == 0
    assert sync_alerts(am_adapters, now=start + timedelta(seconds=RESEND)).posted == 1

    # Then Alertmanager still holds one alert (it keeps firing, acknowledged), ending later
    (again,) = firing(alertmanager)
    assert again["fingerprint"] == first["fingerprint"]
    assert again["startsAt"] == first["startsAt"]
    assert again["endsAt"] > first["endsAt"]
    assert again["annotations"]["status"] == "acknowledged"
    # and, its group unchanged, the receiver is not told again (three group intervals)
    time.sleep(3)
    assert len(alertmanager.receiver.received()) == 1


def test_an_escalated_incident_moves_to_its_new_band(
    am_adapters: Adapters, alertmanager: Alertmanager
) -> None:
    # Given an incident posted as high
    engine = engine_of(am_adapters)
    incident_id = add_incident(engine, add_model(engine), severity=0.85)
    sync_alerts(am_adapters, now=now())
    assert [a["labels"]["severity"] for a in firing(alertmanager)] == ["high"]

    # When it escalates (incident upkeep raised its maximum) and the sync runs
    change(engine, incident_id, max_severity=0.99, updated_at=now())
    assert sync_alerts(am_adapters, now=now()).posted == 1

    # Then only the critical alert fires; the high one was ended, not left to time out
    assert [a["labels"]["severity"] for a in firing(alertmanager)] == ["critical"]
    assert incident(engine, incident_id).alert_severity == "critical"

    # and once resolved, the critical alert ends too
    resolve(engine, incident_id, at=now())
    assert sync_alerts(am_adapters, now=now()).ended == 1
    assert firing(alertmanager) == []


# -- without Alertmanager ----------------------------------------------------------------
def test_alertmanager_down_leaves_the_incidents_for_the_next_run(
    clean_pg: str, make_settings: Callable[..., Settings]
) -> None:
    # Given Alertmanager's address, where nothing listens
    adapters = bootstrap(
        make_settings(database_url=clean_pg, alertmanager_url=f"http://127.0.0.1:{free_port()}")
    )
    engine = engine_of(adapters)
    incident_id = add_incident(engine, add_model(engine))
    unavailable = posts("unavailable")
    try:
        # When the sync runs
        started = time.monotonic()
        result = sync_alerts(adapters, now=now())
        elapsed = time.monotonic() - started

        # Then it says why, returns at once, and the incident is still due
        assert result.posts == 0
        assert result.error is not None
        assert "did not answer" in result.error
        assert elapsed < 5
        assert incident(engine, incident_id).alert_sent_at is None
        assert posts("unavailable") == unavailable + 1
    finally:
        adapters.close()


def test_without_an_alertmanager_url_nothing_is_posted(
    clean_pg: str, make_settings: Callable[..., Settings]
) -> None:
    adapters = bootstrap(make_settings(database_url=clean_pg))
    try:
        engine = engine_of(adapters)
        incident_id = add_incident(engine, add_model(engine))
        result = sync_alerts(adapters, now=now())
        assert result.skipped is not None
        assert result.posts == 0
        assert incident(engine, incident_id).alert_sent_at is None
    finally:
        adapters.close()


# -- which incidents are due, on each backend --------------------------------------------
def test_the_store_picks_the_incidents_alertmanager_must_hear_about(sql_store: SqlStore) -> None:
    # Given incidents in every state the alert columns can be in
    engine = sql_store.engine
    model = add_model(engine)
    recent, long_ago = T0 - timedelta(seconds=10), T0 - timedelta(hours=1)
    cases = {
        "never posted": add_incident(engine, model),
        "posted recently": add_incident(engine, model, alert_sent_at=recent, updated_at=recent),
        "posted long ago": add_incident(engine, model, alert_sent_at=long_ago, updated_at=long_ago),
        "changed since posted": add_incident(
            engine, model, alert_sent_at=recent, updated_at=recent + timedelta(seconds=1)
        ),
        "acknowledged, never posted": add_incident(engine, model, status="acknowledged"),
        "resolved, never posted": add_incident(engine, model, status="resolved", resolved_at=T0),
        "resolved, still firing": add_incident(
            engine,
            model,
            status="resolved",
            resolved_at=T0,
            alert_sent_at=recent,
            updated_at=T0,
        ),
        "resolved and ended": add_incident(
            engine,
            model,
            status="resolved",
            resolved_at=T0,
            alert_sent_at=recent,
            alert_ended_at=T0,
        ),
    }
    due = {
        "never posted",
        "posted long ago",
        "changed since posted",
        "acknowledged, never posted",
        "resolved, still firing",
    }

    # When the store is asked for them (resend what was posted over 30 s ago)
    found = sql_store.incidents_to_alert(resend_before=T0 - timedelta(seconds=30), limit=100)

    # Then it finds exactly those due, the resolved ones to end first
    names = {v: k for k, v in cases.items()}
    assert {names[i.id] for i in found} == due
    assert names[found[0].id] == "resolved, still firing"
    # and a limit bounds it
    assert len(sql_store.incidents_to_alert(resend_before=T0, limit=2)) == 2

    # When they are marked sent and ended, none is due any more
    sql_store.mark_alerts_sent({i.id: i.band for i in found if i.live}, at=T0)
    sql_store.mark_alerts_ended([i.id for i in found if not i.live], at=T0)
    assert sql_store.incidents_to_alert(resend_before=T0 - timedelta(seconds=30), limit=100) == []
    with Session(engine) as session:
        bands = set(
            session.scalars(
                select(IncidentRow.alert_severity).where(IncidentRow.id == cases["never posted"])
            )
        )
    assert bands == {"critical"}


# -- the client --------------------------------------------------------------------------
def test_the_client_reports_alertmanagers_refusal_with_its_reason(
    alertmanager: Alertmanager,
) -> None:
    client = AlertmanagerClient(alertmanager.url)
    rejected = posts("rejected")
    bad = {
        "labels": {"alertname": "x"},
        "startsAt": "2026-12-02T12:00:00Z",
        "endsAt": "2026-12-02T11:00:00Z",
    }
    with pytest.raises(
        AlertmanagerRejected, match=r"answered 400: .*start time must be before end time"
    ):
        client.post([bad])
    assert posts("rejected") == rejected + 1


@contextmanager
def answering(status: int) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A server answering every POST with ``status``; yields its URL and the headers seen."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(dict(self.headers))
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"busy")

        def log_message(self, format: str, *args: Any) -> None:
            del format, args

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_error_is_unavailable_and_credentials_go_as_basic_auth() -> None:
    with answering(503) as (address, seen):
        client = AlertmanagerClient(f"http://am:s3cret@{address}/prefix/")
        with pytest.raises(AlertmanagerUnavailable, match="answered 503: busy") as caught:
            client.post([{"labels": {"alertname": "x"}}])
    assert "s3cret" not in str(caught.value)
    assert client.url == f"http://{address}/prefix/api/v2/alerts"
    (headers,) = seen
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"am:s3cret").decode()


def test_a_url_that_is_not_http_fails_each_post_not_the_wiring() -> None:
    client = AlertmanagerClient("alertmanager:9093")
    with pytest.raises(AlertmanagerRejected, match="must be an http"):
        client.post([{"labels": {"alertname": "x"}}])
