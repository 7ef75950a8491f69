"""A client of Alertmanager's v2 API: ``POST /api/v2/alerts`` (the standard library's
HTTP client; one request a minute needs no connection pool).

Environment proxies (``HTTP_PROXY``...) are not used, as Prometheus does not use them for
Alertmanager by default: Alertmanager is a service next to the workers. Each post counts
once in ``pynomaly_alertmanager_posts_total{outcome}``: ``sent``, ``rejected`` (a 4xx
answer: our alerts are wrong, sending them again will not help) or ``unavailable``
(no answer, a timeout or a 5xx answer: the next sync tries again).
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Final

from pynomaly_workers.domain.alerting import (
    Alert,
    AlertmanagerRejected,
    AlertmanagerUnavailable,
)
from pynomaly_workers.domain.summaries import mask_secrets

ALERTS_PATH: Final = "/api/v2/alerts"
DEFAULT_TIMEOUT_SECONDS: Final = 10.0
SENT, REJECTED, UNAVAILABLE = "sent", "rejected", "unavailable"
_BODY_SHOWN = 500


def _count(outcome: str) -> None:
    from pynomaly_workers.metrics import get_metrics

    get_metrics().alertmanager_posts.labels(outcome=outcome).inc()


class AlertmanagerClient:
    """:class:`~pynomaly_workers.domain.alerting.AlertSink` on Alertmanager's HTTP API.

    ``base_url`` is Alertmanager's address with its route prefix, if any
    (``http://alertmanager:9093``, ``https://am.example/alertmanager``); a
    ``user:password@`` in it is sent as HTTP basic auth."""

    def __init__(self, base_url: str, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        # A wrong URL fails each post, never the wiring every task (detection too) uses.
        self.invalid = (
            None
            if base_url.startswith(("http://", "https://"))
            else f"PYNOMALY_ALERTMANAGER_URL must be an http:// or https:// URL, "
            f"got {mask_secrets(base_url)!r}"
        )
        parts = urllib.parse.urlsplit(base_url)
        self.headers = {"Content-Type": "application/json"}
        if parts.username is not None:
            pair = f"{urllib.parse.unquote(parts.username)}:"
            pair += urllib.parse.unquote(parts.password or "")
            self.headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
            parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
        self.url = urllib.parse.urlunsplit(parts).rstrip("/") + ALERTS_PATH
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def post(self, alerts: Sequence[Alert]) -> None:
        """Post ``alerts`` in one request (nothing to post: no request)."""
        if not alerts:
            return
        if self.invalid is not None:
            _count(REJECTED)
            raise AlertmanagerRejected(self.invalid)
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked in __init__
            self.url,
            data=json.dumps(list(alerts)).encode(),
            headers=self.headers,
            method="POST",
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            self._refused(exc)
        except (OSError, urllib.error.URLError) as exc:
            _count(UNAVAILABLE)
            raise AlertmanagerUnavailable(
                f"Alertmanager at {mask_secrets(self.url)} did not answer: {exc}"
            ) from exc
        _count(SENT)

    def _refused(self, exc: urllib.error.HTTPError) -> None:
        body = exc.read()[:_BODY_SHOWN].decode(errors="replace").strip()
        where = f"Alertmanager at {mask_secrets(self.url)} answered {exc.code}: {body}"
        if exc.code >= 500:
            _count(UNAVAILABLE)
            raise AlertmanagerUnavailable(where) from exc
        _count(REJECTED)
        raise AlertmanagerRejected(where) from exc
