"""A real Alertmanager for tests: Debian's ``prometheus-alertmanager`` binary on free
loopback ports, its storage under the test's tmp_path, routing every alert to a webhook
receiver that runs in the test process and keeps what it was sent.

The route groups by ``alertname, model, entity`` with ``group_wait`` and
``group_interval`` of one second, so a notification follows a post within about a
second. Installed by ``make tools``; where the binary is absent the tests skip and say so.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from pynomaly_workers.adapters.stores.tables import IncidentRow, ModelArtifactRow, ModelRow
from pynomaly_workers.domain.scoring import fit_score_stats

BINARIES = ("prometheus-alertmanager", "alertmanager")
T0 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
START_TIMEOUT = 20.0

CONFIG = """\
global:
  resolve_timeout: 5m
route:
  receiver: test
  group_by: [alertname, model, entity]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: test
    webhook_configs:
      - url: {webhook}
        send_resolved: true
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(condition: Callable[[], Any], *, timeout: float = 15.0, what: str = "") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.1)


@dataclass
class Receiver:
    """The webhook notifications Alertmanager sent, in order of arrival."""

    notifications: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.notifications)


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with receiver.lock:
                receiver.notifications.append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            del format, args

    return Handler


@contextmanager
def webhook_receiver() -> Iterator[tuple[str, Receiver]]:
    """An HTTP server on loopback keeping every JSON body POSTed to it."""
    receiver = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(receiver))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", receiver
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Alertmanager:
    """A running Alertmanager: its base URL and the receiver its route notifies."""

    url: str
    receiver: Receiver
    log: Path

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as response:
            return json.loads(response.read())

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts it holds that have not ended (``GET /api/v2/alerts``)."""
        return list(self.get("/api/v2/alerts"))

    def groups(self) -> list[dict[str, Any]]:
        """Its alert groups (``GET /api/v2/alerts/groups``)."""
        return list(self.get("/api/v2/alerts/groups"))


def binary() -> str | None:
    for name in BINARIES:
        found = shutil.which(name)
        if found:
            return found
    return None


@contextmanager
def running_alertmanager(folder: Path) -> Iterator[Alertmanager]:
    """Start Alertmanager with the test configuration in ``folder``; stop it after."""
    executable = binary()
    if executable is None:
        pytest.skip(
            "prometheus-alertmanager is not installed: run 'make tools' "
            "(Debian package prometheus-alertmanager)"
        )
    with webhook_receiver() as (webhook, receiver):
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "alertmanager.yml"
        config.write_text(CONFIG.format(webhook=webhook))
        port = free_port()
        log = folder / "alertmanager.log"
        args = [
            executable,
            f"--config.file={config}",
            f"--storage.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # no gossip port: one instance
        ]
        with log.open("wb") as output:
            process = subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT)
        manager = Alertmanager(url=f"http://127.0.0.1:{port}", receiver=receiver, log=log)
        try:
            _wait_ready(manager, process)
            yield manager
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(manager: Alertmanager, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            pytest.fail(f"alertmanager exited ({process.returncode}):\n{manager.log.read_text()}")
        try:
            with urllib.request.urlopen(f"{manager.url}/-/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"alertmanager not ready in {START_TIMEOUT} s:\n{manager.log.read_text()}")
        time.sleep(0.05)


# -- incident rows, as incident upkeep stores them --------------------------------------
def add_model(engine: Engine, *, name: str = "sensors", version: int = 3) -> int:
    """A model version row (the incident's foreign key); its artifact is a stub."""
    sha = f"{name}-{version}".encode().hex().ljust(64, "0")[:64]
    with Session(engine) as session, session.begin():
        session.merge(
            ModelArtifactRow(
                sha256=sha,
                media_type="application/octet-stream",
                size_bytes=1,
                content=b"x",
                created_at=T0,
            )
        )
        row = ModelRow(
            name=name,
            version=version,
            algorithm="iforest",
            artifact_sha256=sha,
            n_features=4,
            contamination=0.01,
            threshold=0.5,
            # real statistics: other tests read every model of the session's database
            score_stats=fit_score_stats(np.linspace(0.0, 1.0, 101), contamination=0.01).to_dict(),
            params={},
            n_training_rows=100,
            active=False,
            created_at=T0,
        )
        session.add(row)
        session.flush()
        return row.id


def add_incident(
    engine: Engine,
    model_id: int,
    *,
    entity: str | None = "pump-7",
    severity: float = 0.97,
    status: str = "open",
    opened_at: datetime = T0,
    **columns: Any,
) -> int:
    """An incident row as incident upkeep stores it."""
    with Session(engine) as session, session.begin():
        model = session.get_one(ModelRow, model_id)
        row = IncidentRow(
            model_id=model_id,
            model_name=model.name,
            model_version=model.version,
            entity=entity,
            status=status,
            first_ts=opened_at - timedelta(minutes=30),
            last_ts=opened_at - timedelta(minutes=1),
            anomaly_count=12,
            max_severity=severity,
            feature_weights={"temp": 2.5, "vibration": 1.25},
            opened_at=opened_at,
            last_seen_at=opened_at,
            **({"updated_at": opened_at} | columns),
        )
        session.add(row)
        session.flush()
        return row.id
