"""Signed webhook POSTs: Standard Webhooks signatures (``standardwebhooks``) over httpx.

Each request carries ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature``
(``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``) and a CloudEvents structured-mode
body. Redirects are not followed (a receiver that moved says so with its new URL in the
error); nothing is retried here: the caller decides from the :class:`PostResult`.
"""

from __future__ import annotations

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
    """:class:`~pynomaly_workers.domain.notifications.WebhookSender` over httpx: one
    request at a time, ``timeout`` seconds for each phase (connect, write, read)."""

    def __init__(self, *, timeout: float) -> None:
        self.timeout = timeout

    def post(
        self, url: str, *, secret: str, webhook_id: str, body: str, timestamp: datetime
    ) -> PostResult:
        headers = signed_headers(
            secret=secret, webhook_id=webhook_id, body=body, timestamp=timestamp
        )
        started = time.perf_counter()
        try:
            with httpx.Client(timeout=self.timeout, follow_redirects=False) as client:
                response = client.post(url, content=body.encode("utf-8"), headers=headers)
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


def _error(kind: str, exc: BaseException) -> str:
    detail = str(exc) or type(exc).__name__
    return f"{kind}: {detail}"[:_MAX_ERROR]
