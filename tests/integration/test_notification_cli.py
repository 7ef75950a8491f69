"""``subscriptions`` and ``deliveries`` as an operator runs them: the real command, on the
embedded default (SQLite and the file broker under a fresh PYNOMALY_HOME)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from pynomaly_workers.adapters.stores.engine import build_engine
from pynomaly_workers.adapters.stores.sql import SqlStore
from pynomaly_workers.adapters.stores.sql.notifications import queue_notifications
from pynomaly_workers.adapters.stores.tables import NotificationRow
from pynomaly_workers.migrate import upgrade
from tests.webhooks import T0, WebhookReceiver, register_model, seed_incident

pytestmark = pytest.mark.integration


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    url = f"sqlite:///{home / 'store.sqlite3'}"
    home.mkdir()
    upgrade(url)
    return {
        "PYNOMALY_HOME": str(home),
        "PYNOMALY_DATABASE_URL": url,
        "PYNOMALY_ENVIRONMENT": "test",
    }


@pytest.fixture
def store(env: dict[str, str]) -> Iterator[SqlStore]:
    engine = build_engine(env["PYNOMALY_DATABASE_URL"])
    yield SqlStore(engine)
    engine.dispose()


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pynomaly_workers.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def cli_json(env: dict[str, str], *args: str) -> Any:
    done = cli(env, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_add_prints_a_generated_secret_once_and_list_never_shows_it(env: dict[str, str]) -> None:
    added = cli(env, "subscriptions", "add", "ops", "--url", "https://example.test/hook")
    assert added.returncode == 0, added.stderr
    secret_lines = [line for line in added.stdout.splitlines() if line.startswith("secret: ")]
    assert len(secret_lines) == 1
    secret = secret_lines[0].removeprefix("secret: ")
    assert secret.startswith("whsec_")

    listed = cli(env, "subscriptions", "list")
    as_json = cli_json(env, "subscriptions", "list")

    assert "ops" in listed.stdout
    assert secret not in listed.stdout
    assert secret not in json.dumps(as_json)
    assert [(s["name"], s["url"], s["enabled"]) for s in as_json] == [
        ("ops", "https://example.test/hook", True)
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "x", "--url", "ftp://h/x"], "has scheme 'ftp'"),
        (["add", "x", "--url", "https://h/x", "--secret", "nope"], "leave --secret out"),
        (["add", "x", "--url", "https://h/x", "--min-severity", "2"], "outside [0, 1]"),
        (["add", "bad name", "--url", "https://h/x"], "is invalid"),
        (["remove", "ghost"], "no subscription called 'ghost'"),
        (["test", "ghost"], "'subscriptions list' shows them"),
    ],
)
def test_user_errors_say_what_was_wrong_and_what_to_do(
    env: dict[str, str], args: list[str], message: str
) -> None:
    done = cli(env, "subscriptions", *args)
    assert done.returncode == 1
    assert done.stderr.startswith("error: ")
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_duplicate_name_is_refused(env: dict[str, str]) -> None:
    assert cli(env, "subscriptions", "add", "ops", "--url", "https://h/x").returncode == 0
    done = cli(env, "subscriptions", "add", "ops", "--url", "https://h/y")
    assert done.returncode == 1
    assert "a subscription called 'ops' exists" in done.stderr


def test_test_sends_a_signed_event_and_prints_the_answer(env: dict[str, str]) -> None:
    with WebhookReceiver("whsec_" + "A" * 32) as receiver:
        added = cli_json(env, "subscriptions", "add", "ops", "--url", receiver.url)
        receiver.secret = added["secret"]

        answer = cli_json(env, "subscriptions", "test", "ops")

    assert answer["status_code"] == 200
    assert answer["ok"] is True
    [request] = receiver.requests
    assert request.verified
    assert request.webhook_id == answer["webhook_id"]


def test_deliveries_lists_the_failed_and_replay_makes_one_pending_again(
    env: dict[str, str], store: SqlStore
) -> None:
    # Given a failed notification
    cli_json(env, "subscriptions", "add", "ops", "--url", "https://example.test/hook")
    incident = seed_incident(store.engine, register_model(store), severities=[0.9])
    with store.engine.begin() as conn:
        [nid] = queue_notifications(
            conn, incident_id=incident, kind="opened", before_max=None, after_max=0.9, now=T0
        )
        conn.execute(
            update(NotificationRow)
            .where(NotificationRow.id == nid)
            .values(status="failed", attempts=3, last_error="HTTP 404: refused")
        )

    # When an operator lists the failed deliveries and replays one
    failed = cli_json(env, "deliveries", "--failed")
    replayed = cli_json(env, "deliveries", "replay", str(nid))
    again = cli(env, "deliveries", "replay", str(nid))

    # Then it is listed, pending again with its attempts and webhook id, and not twice
    assert [(d["id"], d["status"], d["subscription"]) for d in failed] == [(nid, "failed", "ops")]
    assert (replayed["status"], replayed["attempts"]) == ("pending", 3)
    assert replayed["webhook_id"] == failed[0]["webhook_id"]
    assert again.returncode == 1
    assert "is pending: only failed or cancelled ones are replayed" in again.stderr
    assert cli_json(env, "deliveries", "--failed") == []
