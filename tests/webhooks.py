"""A real webhook receiver for the tests: an HTTP server on 127.0.0.1 (a free port) in a
thread, that verifies every request's Standard Webhooks signature with
``standardwebhooks.Webhook(secret).verify`` and answers from a script.

    with WebhookReceiver(secret, answer=fail_first(500)) as receiver:
        ...  # POST to receiver.url
        receiver.wait_until(lambda r: r.accepted(), timeout=10)
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import numpy as np
from sqlalchemy import Engine, insert
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from pynomaly_workers.adapters.stores.tables import AnomalyRow, IncidentRow
from pynomaly_workers.domain.models import ModelVersion
from pynomaly_workers.domain.ports import ModelDraft
from pynomaly_workers.domain.scoring import fit_score_stats

Answer = Callable[[str, int], int]
"""(webhook-id, how many requests with that id came before this one) -> status code."""


def always(status: int) -> Answer:
    """Every request gets ``status``."""
    return lambda _id, _seen: status


ACCEPT_ALL: Answer = always(200)


def fail_first(status: int = 500, *, times: int = 1) -> Answer:
    """The first ``times`` requests of each webhook-id get ``status``, later ones 200."""
    return lambda _id, seen: status if seen < times else 200


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    webhook_id: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    status: int
    payload: Any

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


class WebhookReceiver:
    """The server; ``requests`` holds every request received, in order. An invalid
    signature is answered 401 (and recorded ``verified=False``). ``delay(webhook_id,
    seen)`` seconds are slept before answering (a slow receiver, for timeouts)."""

    def __init__(
        self,
        secret: str,
        *,
        answer: Answer = ACCEPT_ALL,
        delay: Callable[[str, int], float] = lambda _id, _seen: 0.0,
        path: str = "/hook",
    ) -> None:
        self.secret = secret
        self.answer = answer
        self.delay = delay
        self.requests: list[Received] = []
        self._arrivals: dict[str, int] = {}
        self._lock = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}{path}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                receiver._answer(self, body)

            def log_message(self, format: str, *args: Any) -> None:
                del format, args  # quiet

        return Handler

    def _answer(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        webhook_id = headers.get("webhook-id", "")
        try:
            payload = Webhook(self.secret).verify(body, headers)
            verified = True
        except WebhookVerificationError:
            payload, verified = None, False
        with self._lock:  # counted on arrival: a request still being answered counts
            seen = self._arrivals.get(webhook_id, 0)
            self._arrivals[webhook_id] = seen + 1
        time.sleep(self.delay(webhook_id, seen))
        status = self.answer(webhook_id, seen) if verified else 401
        with self._lock:
            self.requests.append(Received(webhook_id, headers, body, verified, status, payload))
            self._lock.notify_all()
        try:
            handler.send_response(status)
            handler.send_header("content-length", "0")
            handler.end_headers()
        except OSError:  # the sender gave up waiting (a timeout test): nobody to answer
            pass

    def wait_until(self, check: Callable[[list[Received]], bool], *, timeout: float) -> bool:
        """Wait until ``check(requests)`` holds; False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not check(self.requests):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
            return True

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# -- incidents to notify of (inserted directly: incident upkeep is not needed) ---------

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def register_model(store: Any, name: str = "m") -> ModelVersion:
    """A registered model version (no real estimator: nothing scores with it)."""
    return store.register_model(  # type: ignore[no-any-return]
        ModelDraft(
            name=name,
            algorithm="iforest",
            artifact=f"artifact-{name}".encode(),
            onnx=None,
            n_features=4,
            stats=fit_score_stats(np.linspace(0.0, 1.0, 101), contamination=0.1),
            params={},
            parity_max_error=None,
            parity_tolerance=None,
            n_training_rows=101,
        ),
        now=T0,
    )


def seed_incident(
    engine: Engine,
    version: ModelVersion,
    *,
    severities: Sequence[float],
    entity: str | None = "pump-1",
    start: datetime = T0,
    job_id: str | None = None,
    status: str = "open",
) -> int:
    """An incident over anomalies with these severities, one a second from ``start``
    (job ``job_id``, a fresh one if None), plus an anomaly of another entity in the same
    range that is not its; the incident's id."""
    job_id = job_id or f"job-{uuid.uuid4().hex[:12]}"
    rows = [
        {
            "job_id": job_id,
            "record_index": i,
            "model_id": version.id,
            "record_id": f"r{i}",
            "timestamp": start + timedelta(seconds=i),
            "score": severity,
            "severity": severity,
            "status": "active",
            "explanation": {"top": [{"feature": "f1", "contribution": severity}]},
            "entity": entity,
        }
        for i, severity in enumerate(severities)
    ]
    stranger = {**rows[0], "record_index": len(rows), "entity": "someone-else", "severity": 1.0}
    last = start + timedelta(seconds=len(severities) - 1)
    with engine.begin() as conn:
        conn.execute(insert(AnomalyRow), [*rows, stranger])
        return int(
            conn.execute(
                insert(IncidentRow)
                .values(
                    model_id=version.id,
                    model_name=version.name,
                    model_version=version.version,
                    entity=entity,
                    status=status,
                    first_ts=start,
                    last_ts=last,
                    anomaly_count=len(severities),
                    max_severity=max(severities),
                    feature_weights={"f1": sum(severities)},
                    opened_at=start,
                    last_seen_at=last,
                    updated_at=last,
                )
                .returning(IncidentRow.id)
            ).scalar_one()
        )
