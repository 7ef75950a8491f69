"""Suppression end to end: a rule added with the CLI reaches a real worker within the
rule TTL; the anomalies it matches are stored and marked, open no incident and reach no
webhook, while another entity's do; once the rule expired, the same entity's anomalies
are neither suppressed nor kept from incidents."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pynomaly_workers.demo import WorkerProcess, wait_for
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.services.notifications import add_subscription
from tests.e2e.test_cli import cli, cli_json
from tests.factories import rows_with_outliers, train
from tests.webhooks import Received, WebhookReceiver

pytestmark = pytest.mark.e2e
MODEL = "sup"
TTL_SECONDS = 1.0
RULE_SECONDS = 20
REFUSALS = [
    (("--model", MODEL, "--until", "2020-01-01T00:00:00Z"), "is not in the future"),
    (("--model", "nope", "--until", "2h"), "no model named 'nope'; known models include: "),
    (
        ("--model", MODEL, "--until", "2h", "--feature", "temp", "--between", "1", "2"),
        "its features are: 0, 1, 2, 3",
    ),
    (
        ("--model", MODEL, "--until", "2h", "--feature", "0", "--between", "2", "1"),
        "LO is above HI",
    ),
]


@pytest.fixture(scope="module")
def e2e_env(e2e_env: dict[str, str]) -> dict[str, str]:
    """The shared worker settings, with the rule TTL this test relies on."""
    return {**e2e_env, "PYNOMALY_SUPPRESSION_TTL_SECONDS": str(TTL_SECONDS)}


@pytest.fixture
def receiver(e2e_adapters: Adapters) -> Iterator[WebhookReceiver]:
    """A signature-checking receiver answering 200, subscribed to model ``sup``."""
    with WebhookReceiver("whsec_" + "B" * 32) as server:
        _, secret = add_subscription(e2e_adapters, name="sup-hook", url=server.url, model=MODEL)
        server.secret = str(secret)
        yield server
    e2e_adapters.store.remove_subscription("sup-hook")  # type: ignore[attr-defined]


def opened_for(requests: list[Received]) -> list[str]:
    """The entities of the incidents the receiver was told opened."""
    return sorted(
        r.payload["data"]["incident"]["entity"]
        for r in requests
        if r.accepted and r.payload["type"] == "com.pynomaly.incident.opened"
    )


def detect(
    env: dict[str, str], tmp_path: Path, job_id: str, *, entity: str, start: datetime
) -> Any:
    """A job of ``entity`` with three outliers, through the CLI, waited for."""
    rows = rows_with_outliers(outliers=(3, 50, 120))
    stamps = [(start + timedelta(seconds=i)).isoformat() for i in range(len(rows))]
    path = tmp_path / f"{job_id}.json"
    path.write_text(
        json.dumps({"records": rows, "timestamps": stamps, "entities": [entity] * len(rows)})
    )
    return cli_json(
        env, "detect", "--model", MODEL, "--records-file", str(path), "--job-id", job_id, "--wait"
    )


def suppressed_metric(port: str) -> float:
    """pynomaly_anomalies_suppressed_total of the model, from the worker's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "pynomaly_anomalies_suppressed_total"
        and sample.labels.get("model") == MODEL
    )


def incidents_of(env: dict[str, str]) -> list[Any]:
    return list(cli_json(env, "incidents", "--model", MODEL))


def test_a_cli_rule_silences_one_entity_until_it_expires(
    worker: WorkerProcess,
    e2e_env: dict[str, str],
    e2e_adapters: Adapters,
    tmp_path: Path,
    receiver: WebhookReceiver,
) -> None:
    # Given a model the worker has already scored with (so its processes hold the
    # model's rules, none, as last read)
    train(e2e_adapters, model=MODEL)
    t0 = datetime(2026, 12, 2, 8, tzinfo=UTC)
    warm = detect(e2e_env, tmp_path, "sup-warm", entity="pump-0", start=t0)
    assert "n_suppressed" not in warm

    # When an operator suppresses pump-1 for RULE_SECONDS, and the TTL has passed
    for args, says in REFUSALS:
        refused = cli(e2e_env, "suppress", "add", *args, "--reason", "r", check=False)
        assert (refused.returncode, says in refused.stderr) == (1, True), refused.stderr
    added = cli_json(
        e2e_env,
        "suppress",
        "add",
        "--model",
        MODEL,
        "--entity",
        "pump-1",
        "--until",
        f"{RULE_SECONDS}s",
        "--reason",
        "pump-1 maintenance",
        "--by",
        "ana",
    )
    added_at = time.monotonic()
    time.sleep(TTL_SECONDS + 0.2)
    one = detect(e2e_env, tmp_path, "sup-p1", entity="pump-1", start=t0 + timedelta(hours=1))
    two = detect(e2e_env, tmp_path, "sup-p2", entity="pump-2", start=t0 + timedelta(hours=1))
    assert time.monotonic() - added_at < RULE_SECONDS  # both ran while the rule was live

    # Then the rule, still live, lists with what it suppressed
    (rule,) = [r for r in cli_json(e2e_env, "suppress", "list") if r["id"] == added["id"]]
    assert (rule["state"], rule["suppressed_count"], rule["actor"]) == (
        "live",
        one["n_anomalies"],
        "ana",
    )

    # and pump-1's anomalies are stored and marked with the rule, pump-2's are not
    assert one["n_anomalies"] >= 3
    assert one["n_suppressed"] == one["n_anomalies"]
    assert "n_suppressed" not in two
    listed = cli_json(e2e_env, "anomalies", "--job-id", "sup-p1", "--limit", "100")
    assert {a["suppressed_by"] for a in listed} == {added["id"]}
    assert len(listed) == one["n_anomalies"]
    only = cli_json(
        e2e_env, "anomalies", "--model", MODEL, "--suppressed", "only", "--limit", "500"
    )
    assert {a["job_id"] for a in only} == {"sup-p1"}
    hidden = cli_json(
        e2e_env, "anomalies", "--model", MODEL, "--suppressed", "hide", "--limit", "500"
    )
    assert {a["job_id"] for a in hidden} == {"sup-warm", "sup-p2"}
    human = cli(e2e_env, "anomalies", "--job-id", "sup-p1").stdout
    assert f"rule {added['id']}" in human
    # and the worker's /metrics counts them apart
    port = e2e_env["PYNOMALY_METRICS_PORT"]
    assert wait_for(lambda: suppressed_metric(port) == one["n_anomalies"], timeout=10)

    # And the worker opens incidents (and tells the webhook) for pump-0 and pump-2 only
    assert wait_for(lambda: len(incidents_of(e2e_env)) >= 2, timeout=30)
    assert receiver.wait_until(lambda rs: len(opened_for(rs)) >= 2, timeout=30)
    assert sorted(i["entity"] for i in incidents_of(e2e_env)) == ["pump-0", "pump-2"]
    assert opened_for(receiver.requests) == ["pump-0", "pump-2"]
    assert all(r.verified for r in receiver.requests)

    # When the rule has expired (and the TTL passed), pump-1 finds anomalies again
    time.sleep(max(0.0, RULE_SECONDS - (time.monotonic() - added_at)) + TTL_SECONDS + 0.2)
    after = detect(
        e2e_env, tmp_path, "sup-p1-after", entity="pump-1", start=t0 + timedelta(hours=2)
    )

    # Then they are not suppressed: pump-1 gets its incident and its webhook
    assert "n_suppressed" not in after
    assert wait_for(lambda: len(incidents_of(e2e_env)) >= 3, timeout=30)
    assert receiver.wait_until(lambda rs: len(opened_for(rs)) >= 3, timeout=30)
    assert opened_for(receiver.requests) == ["pump-0", "pump-1", "pump-2"]
    # and the expired rule is kept, listed with --all only, its count unchanged
    assert added["id"] not in [r["id"] for r in cli_json(e2e_env, "suppress", "list")]
    (kept,) = [r for r in cli_json(e2e_env, "suppress", "list", "--all") if r["id"] == added["id"]]
    assert (kept["state"], kept["suppressed_count"]) == ("expired", one["n_anomalies"])
    removed = cli_json(e2e_env, "suppress", "remove", str(added["id"]), "--by", "bo")
    assert (removed["state"], removed["removed_by"]) == ("removed", "bo")
    again = cli(e2e_env, "suppress", "remove", str(added["id"]), check=False)
    assert again.returncode == 1
    assert "removed already, by bo" in again.stderr
