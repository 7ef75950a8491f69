"""Incident notifications: who is told what, the CloudEvent they get, and what an answer means.

Pure. A notification is one incident event (opened, escalated, resolved) for one
subscription; its body is a CloudEvents 1.0 structured-mode JSON document, serialised
once (:func:`serialise`) and sent byte-identical on every attempt under the same
``webhook-id``. The store applies what is decided here; the webhook adapter signs and
sends.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol, get_args
from urllib.parse import urlsplit

from pynomaly_workers.domain.errors import InvalidInput
from pynomaly_workers.domain.incidents import crossed, severity_band

NotificationEvent = Literal["opened", "escalated", "resolved"]
EVENTS: Final[tuple[NotificationEvent, ...]] = ("opened", "escalated", "resolved")
IncidentChange = Literal["opened", "grew", "resolved"]
"""What incident upkeep reports: an incident opened, grew (its maximum may have risen),
or resolved."""

EVENT_TYPE_PREFIX: Final = "com.pynomaly.incident."
TEST_EVENT_TYPE: Final = "com.pynomaly.test"
SOURCE: Final = "urn:pynomaly-workers"
CONTENT_TYPE: Final = "application/cloudevents+json"
TOP_ANOMALIES: Final = 5
"""Anomalies carried by a notification: the incident's most severe."""

# A notification's status (the table's check constraint spells the same four).
PENDING: Final = "pending"
DELIVERED: Final = "delivered"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"
NOTIFICATION_STATUSES: Final = (PENDING, DELIVERED, FAILED, CANCELLED)

Outcome = Literal["delivered", "retried", "failed", "disabled"]
OUTCOMES: Final[tuple[Outcome, ...]] = get_args(Outcome)
"""What became of one attempt (the ``outcome`` label of pynomaly_notifications_total)."""

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - the prefix, not a secret
SECRET_BYTES: Final = 32
"""Random bytes in a generated secret (Standard Webhooks: 24 to 64)."""
_SECRET_MIN, _SECRET_MAX = 24, 64
_RETRY_STATUSES: Final = frozenset({408, 429})
_MAX_DOUBLINGS = 62


class SubscriptionError(InvalidInput):
    """A subscription cannot be added, found or changed as asked; the message says why."""

    code = "invalid_subscription"


@dataclass(frozen=True, slots=True)
class Subscription:
    """Where notifications go. ``model`` None: every model."""

    id: int
    name: str
    url: str
    model: str | None
    min_severity: float
    enabled: bool
    secret: str = field(repr=False)
    created_at: datetime | None = None
    disabled_reason: str | None = None
    disabled_at: datetime | None = None

    def matches(self, model_name: str) -> bool:
        return self.enabled and self.model in (None, model_name)

    def public(self) -> dict[str, Any]:
        """Everything but the secret (what ``subscriptions list`` shows)."""
        return {
            "id": self.id,
            "name": self.name,
            "url": self.url,
            "model": self.model,
            "min_severity": self.min_severity,
            "enabled": self.enabled,
            "created_at": self.created_at,
            "disabled_reason": self.disabled_reason,
            "disabled_at": self.disabled_at,
        }


@dataclass(frozen=True, slots=True)
class IncidentFacts:
    """What a notification says about an incident."""

    id: int
    model_name: str
    model_version: int
    entity: str | None
    status: str
    first_ts: datetime
    last_ts: datetime
    anomaly_count: int
    max_severity: float
    feature_weights: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AnomalyFacts:
    """What a notification says about one of the incident's anomalies."""

    id: int
    job_id: str
    record_index: int
    record_id: str | None
    timestamp: datetime
    score: float
    severity: float
    explanation: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """A notification as ``deliveries`` lists it."""

    id: int
    webhook_id: str
    subscription: str
    incident_id: int
    event: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class Claim:
    """A notification taken for one attempt: what to send, where, and the attempt's
    number (counted when taken, so a worker that dies mid-POST still spends one)."""

    notification_id: int
    webhook_id: str
    event: str
    body: str
    attempt: int
    subscription_id: int
    url: str
    secret: str = field(repr=False)


def event_type(event: str) -> str:
    """The CloudEvent ``type`` of an incident event (``com.pynomaly.incident.opened``)."""
    return f"{EVENT_TYPE_PREFIX}{event}"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _top_features(weights: Mapping[str, float], k: int = 5) -> list[dict[str, Any]]:
    ranked = sorted(weights.items(), key=lambda item: (-float(item[1]), item[0]))[:k]
    return [{"feature": name, "weight": float(value)} for name, value in ranked]


def incident_data(incident: IncidentFacts, anomalies: Sequence[AnomalyFacts]) -> dict[str, Any]:
    """The ``data`` of an incident CloudEvent: the incident and its top anomalies."""
    return {
        "incident": {
            "id": incident.id,
            "model": incident.model_name,
            "model_version": incident.model_version,
            "entity": incident.entity,
            "status": incident.status,
            "first_ts": _iso(incident.first_ts),
            "last_ts": _iso(incident.last_ts),
            "anomaly_count": incident.anomaly_count,
            "max_severity": incident.max_severity,
            "severity_band": severity_band(incident.max_severity),
            "top_features": _top_features(incident.feature_weights),
        },
        "top_anomalies": [
            {
                "id": a.id,
                "job_id": a.job_id,
                "record_index": a.record_index,
                "record_id": a.record_id,
                "timestamp": _iso(a.timestamp),
                "score": a.score,
                "severity": a.severity,
                "explanation": dict(a.explanation) if a.explanation is not None else None,
            }
            for a in top_anomalies(anomalies)
        ],
    }


def top_anomalies(anomalies: Sequence[AnomalyFacts], k: int = TOP_ANOMALIES) -> list[AnomalyFacts]:
    """The ``k`` most severe, ties broken by time then id (so a body is reproducible)."""
    return sorted(anomalies, key=lambda a: (-a.severity, a.timestamp, a.id))[:k]


def cloud_event(
    *, webhook_id: str, type_: str, subject: str, data: Mapping[str, Any], time: datetime
) -> dict[str, Any]:
    """A CloudEvents 1.0 structured-mode event; its ``id`` is the ``webhook-id``."""
    return {
        "specversion": "1.0",
        "id": webhook_id,
        "source": SOURCE,
        "type": type_,
        "subject": subject,
        "time": _iso(time),
        "datacontenttype": "application/json",
        "data": dict(data),
    }


def incident_event(
    *,
    webhook_id: str,
    event: NotificationEvent,
    incident: IncidentFacts,
    anomalies: Sequence[AnomalyFacts],
    time: datetime,
) -> dict[str, Any]:
    """The CloudEvent of one incident event."""
    return cloud_event(
        webhook_id=webhook_id,
        type_=event_type(event),
        subject=f"incidents/{incident.id}",
        data=incident_data(incident, anomalies),
        time=time,
    )


def ping_event(*, webhook_id: str, subscription: str, time: datetime) -> dict[str, Any]:
    """The CloudEvent ``subscriptions test`` sends."""
    return cloud_event(
        webhook_id=webhook_id,
        type_=TEST_EVENT_TYPE,
        subject=f"subscriptions/{subscription}",
        data={"message": "a test notification from pynomaly-workers"},
        time=time,
    )


def serialise(event: Mapping[str, Any]) -> str:
    """The bytes that are signed and sent: keys sorted, no spaces, ASCII only, no NaN.
    The same event always gives the same text."""
    return json.dumps(event, sort_keys=True, separators=(",", ":"), allow_nan=False)


# -- who is told what ----------------------------------------------------------------


def recipients(
    kind: IncidentChange,
    subscriptions: Sequence[Subscription],
    *,
    model_name: str,
    before_max: float | None,
    after_max: float,
    notified: Mapping[int, Collection[str]],
) -> list[tuple[Subscription, NotificationEvent]]:
    """Which subscriptions get which event when an incident changed.

    ``notified``: per subscription id, the events it already has a notification of for
    this incident. Opened: every enabled subscription of the model whose minimum the
    maximum severity reaches. Grew: those whose minimum the rise crossed and that were
    not told of the opening (``escalated``). Resolved: the enabled ones told it opened or
    escalated.
    """
    if kind == "resolved":
        return [
            (s, "resolved")
            for s in subscriptions
            if s.enabled and {"opened", "escalated"} & set(notified.get(s.id, ()))
        ]
    matching = [s for s in subscriptions if s.matches(model_name)]
    if kind == "opened":
        return [(s, "opened") for s in matching if s.min_severity <= after_max]
    return [
        (s, "escalated")
        for s in matching
        if crossed(before_max, after_max, s.min_severity)
        and "opened" not in set(notified.get(s.id, ()))
    ]


# -- retries and answers -------------------------------------------------------------


def retry_delay(attempt: int, *, base: float, maximum: float, draw: Callable[[], float]) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1 for the first): full
    jitter, uniform in ``[0, min(maximum, base * 2 ** (attempt - 1))]``. ``draw`` gives a
    number uniform in ``[0, 1)`` (``random.random``; tests pass their own)."""
    doublings = min(max(attempt - 1, 0), _MAX_DOUBLINGS)
    cap = min(maximum, base * 2.0**doublings)
    return cap * draw()


@dataclass(frozen=True, slots=True)
class PostResult:
    """What one HTTP POST came to: a status code, or an error (network, timeout)."""

    status_code: int | None
    error: str | None
    duration_s: float
    location: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after an attempt: the notification's new status, the metric outcome,
    the error to record, and the delay before the next attempt (retries only)."""

    outcome: Outcome
    status: str
    error: str | None
    retry_in: float | None = None


def describe(result: PostResult) -> str:
    """An attempt's result in words."""
    if result.status_code is None:
        return result.error or "no answer"
    return f"HTTP {result.status_code}"


def retryable(result: PostResult) -> bool:
    """Network errors, timeouts, 5xx, 408 and 429 may pass: try again later."""
    code = result.status_code
    return code is None or code >= 500 or code in _RETRY_STATUSES


def decide(
    result: PostResult,
    *,
    attempt: int,
    max_attempts: int,
    base: float,
    maximum: float,
    draw: Callable[[], float],
) -> Decision:
    """The outcome of attempt number ``attempt`` given its result."""
    code = result.status_code
    if code is not None and 200 <= code < 300:
        return Decision("delivered", DELIVERED, None)
    if code == 410:
        return Decision(
            "disabled",
            CANCELLED,
            "HTTP 410 Gone: the receiver asked to stop; subscription disabled",
        )
    if retryable(result):
        if attempt >= max_attempts:
            return Decision(
                "failed",
                FAILED,
                f"{describe(result)}; gave up after {attempt} attempts "
                "(PYNOMALY_WEBHOOK_MAX_ATTEMPTS); 'deliveries replay ID' sends it again",
            )
        delay = retry_delay(attempt, base=base, maximum=maximum, draw=draw)
        return Decision("retried", PENDING, describe(result), retry_in=delay)
    if code is not None and 300 <= code < 400:
        where = f" to {result.location}" if result.location else ""
        return Decision(
            "failed",
            FAILED,
            f"HTTP {code}: redirect{where} not followed; point the subscription at the final URL",
        )
    return Decision(
        "failed",
        FAILED,
        f"HTTP {code}: the receiver refused the notification (a 4xx other than 408, 410 "
        "or 429 is not retried); fix the receiver, then 'deliveries replay ID'",
    )


class WebhookSender(Protocol):
    """Signs a body with a subscription's secret and POSTs it (the webhook adapter)."""

    def post(
        self, url: str, *, secret: str, webhook_id: str, body: str, timestamp: datetime
    ) -> PostResult:
        """Send one signed request; never raises for an HTTP or network failure."""


# -- subscriptions ---------------------------------------------------------------------


def new_secret(raw: bytes) -> str:
    """A Standard Webhooks secret (``whsec_`` + base64) from random bytes."""
    if not _SECRET_MIN <= len(raw) <= _SECRET_MAX:
        raise ValueError(f"a secret takes {_SECRET_MIN} to {_SECRET_MAX} random bytes")
    return SECRET_PREFIX + base64.b64encode(raw).decode("ascii")


def check_secret(secret: str) -> str:
    """``secret`` if it is ``whsec_`` + the base64 of 24 to 64 bytes, else raise."""
    advice = (
        f"a secret is 'whsec_' followed by the base64 of {_SECRET_MIN} to {_SECRET_MAX} "
        "random bytes; leave --secret out to have one generated"
    )
    if not secret.startswith(SECRET_PREFIX):
        raise SubscriptionError(f"the secret does not start with 'whsec_': {advice}")
    try:
        raw = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise SubscriptionError(f"the secret is not valid base64: {advice}") from None
    if not _SECRET_MIN <= len(raw) <= _SECRET_MAX:
        raise SubscriptionError(f"the secret holds {len(raw)} bytes: {advice}")
    return secret


def check_url(url: str) -> str:
    """``url`` if it is an absolute http(s) URL with a host, else raise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise SubscriptionError(
            f"URL {url!r} has scheme {parts.scheme or 'none'!r}: webhooks are POSTed over "
            "http:// or https:// (use https:// outside a trusted network)"
        )
    if not parts.hostname:
        raise SubscriptionError(f"URL {url!r} names no host: give e.g. https://host/path")
    return url


def check_min_severity(value: float) -> float:
    """``value`` if it is a severity in [0, 1], else raise."""
    if not 0.0 <= value <= 1.0:
        raise SubscriptionError(f"--min-severity {value} is outside [0, 1]")
    return value
