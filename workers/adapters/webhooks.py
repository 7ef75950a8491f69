"""Signed webhook POSTs: Standard Webhooks signatures (``standardwebhooks``) over httpx.

Each request carries ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature``
(``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``) and a CloudEvents structured-mode
body. Redirects are not followed (a receiver that moved says so with its new URL in the
error); nothing is retried here: the caller decides from the :class:`PostResult`.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime
from math import floor

import httpx
from standardwebhooks.webhooks import Webhook

from pynomaly_workers.domain.notifications import CONTENT_TYPE, PostResult

USER_AGENT = "pynomaly-workers-webhooks/1"
_MAX_ERROR = 500


def signed_headers(
    *, secret: str, webhook_id: str, body: str, timestamp: datetime
) -> dict[str, str]:
    """The Standard Webhooks headers of one request (``timestamp`` in whole seconds)."""
    moment = datetime.fromtimestamp(floor(timestamp.timestamp()), tz=UTC)
    signature = Webhook(secret).sign(msg_id=webhook_id, timestamp=moment, data=body)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(floor(moment.timestamp())),
        "webhook-signature": signature,
        "content-type": CONTENT_TYPE,
        "user-agent": USER_AGENT,
    }


class HttpWebhookSender:
    """:class:`~pynomaly_workers.domain.notifications.WebhookSender` over httpx,
    ``timeout`` seconds for each phase (connect, write, read).

    One client per process, made on first use and kept: its connections are reused
    (keep-alive) and its TLS context is built once; building one costs ~60 ms of CPU,
    which a client per request paid on every POST. Made again in a forked child (the
    parent's sockets are not the child's to use). Safe to call from several threads."""

    def __init__(self, *, timeout: float) -> None:
        self.timeout = timeout
        self._client: httpx.Client | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def _http(self) -> httpx.Client:
        pid = os.getpid()
        client = self._client
        if client is not None and self._pid == pid:
            return client
        with self._lock:
            if self._client is None or self._pid != pid:
                self._client = httpx.Client(
                    timeout=self.timeout,
                    follow_redirects=False,
                    limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
                )
                self._pid = pid
            return self._client

    def post(
        self, url: str, *, secret: str, webhook_id: str, body: str, timestamp: datetime
    ) -> PostResult:
        headers = signed_headers(
            secret=secret, webhook_id=webhook_id, body=body, timestamp=timestamp
        )
        started = time.perf_counter()
        try:
            response = self._http().post(url, content=body.encode("utf-8"), headers=headers)
        except httpx.TimeoutException as exc:
            return PostResult(None, _error("timeout", exc), time.perf_counter() - started)
        except httpx.HTTPError as exc:
            return PostResult(None, _error("network error", exc), time.perf_counter() - started)
        return PostResult(
            response.status_code,
            None,
            time.perf_counter() - started,
            location=response.headers.get("location"),
        )

    def close(self) -> None:
        """Close this process's client (the next POST makes a new one)."""
        with self._lock:
            if self._client is not None and self._pid == os.getpid():
                self._client.close()
            self._client = None


def _error(kind: str, exc: BaseException) -> str:
    detail = str(exc) or type(exc).__name__
    return f"{kind}: {detail}"[:_MAX_ERROR]
