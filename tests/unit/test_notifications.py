"""The pure core of incident notifications: who is told what, the CloudEvent body, the
retry delay, what an HTTP answer means, secrets; and the signature headers."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks.webhooks import Webhook

from pynomaly_workers.adapters.webhooks import signed_headers
from pynomaly_workers.celery_app import create_app
from pynomaly_workers.contract import (
    DELIVER_TASK,
    NOTIFICATIONS_QUEUE,
    SWEEP_NOTIFICATIONS_TASK,
    queue_of,
)
from pynomaly_workers.domain.notifications import (
    CANCELLED,
    DELIVERED,
    FAILED,
    PENDING,
    AnomalyFacts,
    IncidentFacts,
    PostResult,
    Subscription,
    SubscriptionError,
    check_secret,
    check_url,
    decide,
    incident_event,
    new_secret,
    recipients,
    retry_delay,
    serialise,
)
from pynomaly_workers.schedules import beat_schedule
from pynomaly_workers.services.notifications import DELIVERY_BATCH, dispatch
from pynomaly_workers.settings import Settings

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SECRET = new_secret(bytes(range(32)))


def sub(
    id_: int, *, model: str | None = None, min_severity: float = 0.0, enabled: bool = True
) -> Subscription:
    return Subscription(
        id=id_,
        name=f"s{id_}",
        url="http://example.test/hook",
        model=model,
        min_severity=min_severity,
        enabled=enabled,
        secret=SECRET,
    )


# -- retry delay -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "cap"), [(1, 5.0), (2, 10.0), (3, 20.0), (8, 640.0), (9, 1000.0), (60, 1000.0)]
)
def test_the_delay_is_full_jitter_below_a_doubling_cap(attempt: int, cap: float) -> None:
    rng = random.Random(attempt)
    delays = [retry_delay(attempt, base=5.0, maximum=1000.0, draw=rng.random) for _ in range(2000)]
    assert all(0.0 <= d <= cap for d in delays)
    assert max(delays) > 0.9 * cap
    assert min(delays) < 0.1 * cap
    assert retry_delay(attempt, base=5.0, maximum=1000.0, draw=lambda: 0.0) == 0.0
    assert retry_delay(attempt, base=5.0, maximum=1000.0, draw=lambda: 0.5) == cap / 2


# -- what an answer means --------------------------------------------------------------


def outcome(
    status: int | None, *, attempt: int = 1, error: str | None = None
) -> tuple[str, str, float | None]:
    decision = decide(
        PostResult(status, error, 0.01),
        attempt=attempt,
        max_attempts=3,
        base=1.0,
        maximum=60.0,
        draw=lambda: 0.5,
    )
    return decision.outcome, decision.status, decision.retry_in


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_delivered(status: int) -> None:
    assert outcome(status) == ("delivered", DELIVERED, None)


def test_410_disables_the_subscription() -> None:
    assert outcome(410) == ("disabled", CANCELLED, None)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429, None])
def test_server_errors_throttling_and_network_errors_retry(status: int | None) -> None:
    assert outcome(status, attempt=1, error="timeout") == ("retried", PENDING, 0.5)
    assert outcome(status, attempt=2, error="timeout") == ("retried", PENDING, 1.0)


@pytest.mark.parametrize("status", [500, 429, None])
def test_the_last_attempt_fails_instead_of_retrying(status: int | None) -> None:
    decision = decide(
        PostResult(status, "boom" if status is None else None, 0.1),
        attempt=3,
        max_attempts=3,
        base=1.0,
        maximum=60.0,
        draw=lambda: 0.5,
    )
    assert (decision.outcome, decision.status, decision.retry_in) == ("failed", FAILED, None)
    assert decision.error is not None
    assert "gave up after 3 attempts" in decision.error


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409, 413, 422, 301, 302, 307])
def test_other_4xx_and_redirects_fail_without_retry_and_say_why(status: int) -> None:
    decision = decide(
        PostResult(status, None, 0.1, location="https://elsewhere.test/"),
        attempt=1,
        max_attempts=3,
        base=1.0,
        maximum=60.0,
        draw=lambda: 0.5,
    )
    assert (decision.outcome, decision.status, decision.retry_in) == ("failed", FAILED, None)
    assert decision.error is not None
    assert f"HTTP {status}" in decision.error
    reason = "redirect to https://elsewhere.test/ not followed" if status < 400 else "not retried"
    assert reason in decision.error


# -- who is told what ------------------------------------------------------------------


def told(kind: str, subs: list[Subscription], **kwargs: object) -> list[tuple[int, str]]:
    args: dict[str, object] = {
        "model_name": "m",
        "before_max": None,
        "after_max": 0.9,
        "notified": {},
        **kwargs,
    }
    return [(s.id, event) for s, event in recipients(kind, subs, **args)]  # type: ignore[arg-type]


def test_an_opened_incident_tells_matching_enabled_subscriptions_above_their_minimum() -> None:
    subs = [
        sub(1),
        sub(2, model="m"),
        sub(3, model="other"),
        sub(4, min_severity=0.95),
        sub(5, enabled=False),
        sub(6, min_severity=0.9),
    ]
    assert told("opened", subs, after_max=0.9) == [(1, "opened"), (2, "opened"), (6, "opened")]


def test_growth_tells_those_whose_minimum_it_crossed_and_not_those_told_of_the_opening() -> None:
    subs = [sub(1, min_severity=0.5), sub(2, min_severity=0.8), sub(3, min_severity=0.95)]
    subs += [sub(4, min_severity=0.8, model="other"), sub(5, min_severity=0.8)]
    notified = {1: {"opened"}, 5: {"opened"}}

    found = told("grew", subs, before_max=0.6, after_max=0.9, notified=notified)

    assert found == [(2, "escalated")]
    # a rise that crosses nothing new tells nobody
    assert told("grew", subs, before_max=0.85, after_max=0.9, notified=notified) == []


def test_resolution_tells_the_enabled_subscriptions_told_it_opened_or_escalated() -> None:
    subs = [sub(1), sub(2), sub(3), sub(4, enabled=False)]
    notified = {1: {"opened"}, 2: {"escalated"}, 4: {"opened"}}
    assert told("resolved", subs, notified=notified) == [(1, "resolved"), (2, "resolved")]


# -- the body --------------------------------------------------------------------------


INCIDENT = IncidentFacts(
    id=7,
    model_name="m",
    model_version=2,
    entity="pump-3",
    status="open",
    first_ts=T0,
    last_ts=T0 + timedelta(minutes=5),
    anomaly_count=9,
    max_severity=0.97,
    feature_weights={"temp": 1.5, "rpm": 3.0, "load": 0.1},
)


def anomalies(n: int) -> list[AnomalyFacts]:
    return [
        AnomalyFacts(
            id=100 + i,
            job_id="j1",
            record_index=i,
            record_id=f"r{i}",
            timestamp=T0 + timedelta(seconds=i),
            score=0.1 * i,
            severity=round(0.5 + 0.05 * (i % 10), 2),
            explanation={"top": [{"feature": "rpm", "contribution": 0.4}]},
        )
        for i in range(n)
    ]


def test_the_body_is_a_cloudevent_with_the_incident_and_its_top_anomalies() -> None:
    event = incident_event(
        webhook_id="msg_1", event="opened", incident=INCIDENT, anomalies=anomalies(9), time=T0
    )
    assert {k: v for k, v in event.items() if k != "data"} == {
        "specversion": "1.0",
        "id": "msg_1",
        "source": "urn:pynomaly-workers",
        "type": "com.pynomaly.incident.opened",
        "subject": "incidents/7",
        "time": "2026-12-01T12:00:00Z",
        "datacontenttype": "application/json",
    }
    incident = event["data"]["incident"]
    assert incident["severity_band"] == "critical"
    assert incident["entity"] == "pump-3"
    assert incident["model_version"] == 2
    assert [f["feature"] for f in incident["top_features"]] == ["rpm", "temp", "load"]
    top = event["data"]["top_anomalies"]
    assert [a["severity"] for a in top] == [0.9, 0.85, 0.8, 0.75, 0.7]
    assert top[0]["explanation"] == {"top": [{"feature": "rpm", "contribution": 0.4}]}


def test_the_same_event_serialises_to_the_same_bytes_whatever_the_input_order() -> None:
    rows = anomalies(9)
    one = incident_event(
        webhook_id="w", event="resolved", incident=INCIDENT, anomalies=rows, time=T0
    )
    two = incident_event(
        webhook_id="w", event="resolved", incident=INCIDENT, anomalies=rows[::-1], time=T0
    )
    assert serialise(one) == serialise(two)
    assert json.loads(serialise(one)) == one
    assert " " not in serialise(one)


def test_a_non_finite_number_is_refused_rather_than_sent_as_invalid_json() -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        serialise({"x": float("nan")})


# -- secrets, URLs, signatures ---------------------------------------------------------


def test_a_generated_secret_follows_standard_webhooks() -> None:
    secret = new_secret(bytes(24))
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 24
    assert check_secret(secret) == secret


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        ("abc", "does not start with 'whsec_'"),
        ("whsec_***", "not valid base64"),
        ("whsec_" + base64.b64encode(bytes(8)).decode(), "holds 8 bytes"),
    ],
)
def test_a_bad_secret_is_refused_with_advice(secret: str, why: str) -> None:
    with pytest.raises(SubscriptionError, match=why) as caught:
        check_secret(secret)
    assert "leave --secret out to have one generated" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "why"),
    [("ftp://host/x", "scheme 'ftp'"), ("host/x", "scheme 'none'"), ("http:///x", "names no host")],
)
def test_a_bad_url_is_refused_with_advice(url: str, why: str) -> None:
    with pytest.raises(SubscriptionError, match=why):
        check_url(url)


def test_the_signature_headers_verify_with_the_reference_library() -> None:
    now = datetime.now(UTC)
    body = serialise({"a": 1})
    headers = signed_headers(secret=SECRET, webhook_id="msg_x", body=body, timestamp=now)

    assert Webhook(SECRET).verify(body, headers) == {"a": 1}
    assert headers["webhook-signature"].startswith("v1,")
    assert headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert headers["content-type"] == "application/cloudevents+json"
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(SECRET).verify(body.replace("1", "2"), headers)


# -- wiring: the tasks exist on the app, beat sweeps every minute ---------------------


def test_the_app_defines_the_notification_tasks_on_the_notifications_queue(
    make_settings: Callable[..., Settings],
) -> None:
    app = create_app(make_settings())
    try:
        assert {DELIVER_TASK, SWEEP_NOTIFICATIONS_TASK} <= set(app.tasks)
        assert queue_of(DELIVER_TASK) == queue_of(SWEEP_NOTIFICATIONS_TASK) == NOTIFICATIONS_QUEUE
        assert app.tasks[DELIVER_TASK].acks_late
    finally:
        app.close()


def test_beat_sweeps_lost_notifications_every_minute(
    make_settings: Callable[..., Settings],
) -> None:
    entry = beat_schedule(make_settings())["sweep-notifications"]
    assert entry["task"] == SWEEP_NOTIFICATIONS_TASK
    assert entry["schedule"] == 60.0
    assert entry["options"]["queue"] == NOTIFICATIONS_QUEUE
    assert 0 < entry["options"]["expires"] < entry["schedule"]


def test_dispatch_publishes_batches_and_leaves_the_rest_to_the_sweep_if_the_broker_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent: list[tuple[list[int], float]] = []

    def send(notification_ids: Sequence[int], countdown: float) -> None:
        if 3 in notification_ids:
            raise ConnectionError("broker down")
        sent.append((list(notification_ids), countdown))

    assert dispatch(send, [1, 2]) == 2
    assert dispatch(send, [4, 3, 5]) == 0
    many = list(range(10, 10 + DELIVERY_BATCH + 5))
    assert dispatch(send, many) == len(many)
    assert sent == [
        ([1, 2], 0.0),
        (many[:DELIVERY_BATCH], 0.0),
        (many[DELIVERY_BATCH:], 0.0),
    ]
    assert "could not publish the delivery of 3 notifications (broker down)" in caplog.text
