"""Incidents end to end: a real worker folds what it detected into incidents on its own
(no beat), tells a subscribed webhook (signed, retried after a 500 under the same
webhook-id), and the triage commands work on them."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pynomaly_workers.demo import WorkerProcess
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.services.notifications import add_subscription
from tests.e2e.test_cli import cli, cli_json
from tests.factories import rows_with_outliers, train
from tests.webhooks import Received, WebhookReceiver, fail_first

pytestmark = pytest.mark.e2e
T0 = datetime(2026, 12, 1, 8, tzinfo=UTC)


@pytest.fixture(scope="module")
def e2e_env(e2e_env: dict[str, str]) -> dict[str, str]:
    """The shared worker settings, with webhook retries a fraction of a second apart."""
    return {
        **e2e_env,
        "PYNOMALY_WEBHOOK_RETRY_BASE_SECONDS": "0.2",
        "PYNOMALY_WEBHOOK_RETRY_MAX_SECONDS": "1",
    }


@pytest.fixture
def receiver(e2e_adapters: Adapters) -> Iterator[WebhookReceiver]:
    """A signature-checking receiver answering 500 to each notification's first attempt,
    subscribed to model ``inc``."""
    with WebhookReceiver("whsec_" + "A" * 32, answer=fail_first(500)) as server:
        _, secret = add_subscription(e2e_adapters, name="inc-hook", url=server.url, model="inc")
        server.secret = str(secret)
        yield server
    e2e_adapters.store.remove_subscription("inc-hook")  # type: ignore[attr-defined]


def accepted(requests: list[Received], event: str) -> list[Received]:
    return [
        r for r in requests if r.accepted and r.payload["type"] == f"com.pynomaly.incident.{event}"
    ]


def wait_for_incidents(env: dict[str, str], n: int, timeout: float = 30.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = cli_json(env, "incidents", "--model", "inc")
        if len(found) >= n or time.monotonic() > deadline:
            return list(found)
        time.sleep(0.3)


def test_detected_anomalies_become_incidents_people_can_triage(
    worker: WorkerProcess,
    e2e_env: dict[str, str],
    e2e_adapters: Adapters,
    tmp_path: Path,
    receiver: WebhookReceiver,
) -> None:
    # Given a model and jobs naming two pumps as their entities
    train(e2e_adapters, model="inc")
    for pump, job in (("pump-1", "inc-1"), ("pump-2", "inc-2")):
        rows = rows_with_outliers(outliers=(3, 50))
        stamps = [(T0 + timedelta(seconds=i)).isoformat() for i in range(len(rows))]
        path = tmp_path / f"{job}.json"
        path.write_text(
            json.dumps({"records": rows, "timestamps": stamps, "entities": [pump] * len(rows)})
        )
        summary = cli_json(
            e2e_env,
            "detect",
            "--model",
            "inc",
            "--records-file",
            str(path),
            "--job-id",
            job,
            "--wait",
        )
        assert summary["n_anomalies"] >= 2

    # When the worker has folded them (it asks for its own upkeep; beat is not running)
    found = wait_for_incidents(e2e_env, 2)

    # Then each pump has an open incident
    assert sorted(i["entity"] for i in found) == ["pump-1", "pump-2"]
    assert {i["status"] for i in found} == {"open"}
    incident = next(i for i in found if i["entity"] == "pump-1")

    # And the subscriber is told of each opening once, signed, after one 500 per webhook-id
    assert receiver.wait_until(lambda rs: len(accepted(rs, "opened")) == 2, timeout=30)
    opened = accepted(receiver.requests, "opened")
    assert sorted(r.payload["data"]["incident"]["entity"] for r in opened) == ["pump-1", "pump-2"]
    assert all(r.verified for r in receiver.requests)
    attempts = Counter(r.webhook_id for r in receiver.requests)
    assert {attempts[r.webhook_id] for r in opened} == {2}  # the 500, then the 200

    # And on-call people acknowledge, label and resolve it, and its history says so
    cli(e2e_env, "incidents", "ack", str(incident["id"]), "--by", "ana", "--comment", "on it")
    labelled = cli_json(
        e2e_env, "incidents", "label", str(incident["id"]), "--as", "not_anomaly", "--by", "ana"
    )
    assert labelled["anomalies"] == incident["anomaly_count"]
    shown = cli_json(e2e_env, "incidents", "show", str(incident["id"]))
    anomaly_id = shown["top_anomalies"][0]["id"]
    relabelled = cli_json(
        e2e_env,
        "anomalies",
        "label",
        str(anomaly_id),
        "--as",
        "anomaly",
        "--by",
        "bo",
        "--history",
    )
    assert [x["label"] for x in relabelled] == ["anomaly", "not_anomaly"]
    cli(e2e_env, "incidents", "resolve", str(incident["id"]), "--by", "bo", "--comment", "ok")
    assert receiver.wait_until(lambda rs: len(accepted(rs, "resolved")) == 1, timeout=30)
    (resolved,) = accepted(receiver.requests, "resolved")
    assert resolved.payload["data"]["incident"]["id"] == incident["id"]
    assert resolved.payload["data"]["incident"]["status"] == "resolved"
    shown = cli_json(e2e_env, "incidents", "show", str(incident["id"]))
    assert shown["incident"]["status"] == "resolved"
    assert [(e["kind"], e["actor"]) for e in shown["events"]] == [
        ("opened", "pynomaly"),
        ("acknowledged", "ana"),
        ("labelled", "ana"),
        ("resolved", "bo"),
    ]
    assert shown["labels"] == {"not_anomaly": incident["anomaly_count"] - 1, "anomaly": 1}

    # And a mistake gets a message saying what to do
    again = cli(e2e_env, "incidents", "resolve", str(incident["id"]), check=False)
    assert again.returncode == 1
    assert "resolved already" in again.stderr
    missing = cli(e2e_env, "incidents", "show", "999999", check=False)
    assert "pynomaly-workers incidents" in missing.stderr
    human = cli(e2e_env, "incidents", "--status", "open", "--model", "inc").stdout
    assert "pump-2" in human
    assert "pump-1" not in human
