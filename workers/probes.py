"""Kubernetes-style probes for a worker.

- liveness (``health --liveness``): local and cheap. The worker's main process writes a
  heartbeat file; a timer inside the consumer's event loop records each loop tick. Alive
  = the file is fresh (the process runs) and, while consuming, the loop ticked recently
  (it is not stuck). While the broker is down the consumer is reconnecting, not stuck:
  liveness passes, so an outage never restarts workers.
- readiness (``health --readiness``): the broker answers, the database answers, and its
  schema is at the migrations' head.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from pynomaly_workers.settings import Settings


def heartbeat_path(settings: Settings) -> Path:
    """Where the worker of this ``PYNOMALY_HOME`` writes its heartbeat."""
    return (settings.home / "probes" / "worker-heartbeat.json").resolve()


class Heartbeat:
    """Writes ``{pid, written_at, loop_at, consuming}`` every ``interval`` seconds from a
    thread; :meth:`tick` is called from the event loop."""

    def __init__(self, path: Path, *, interval: float) -> None:
        self.path = path
        self.interval = interval
        self.loop_at = time.time()
        self.is_consuming = False
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> None:
        """The event loop turned."""
        self.loop_at = time.time()

    def consuming(self, value: bool) -> None:
        """The consumer started (True) or stopped, e.g. to reconnect (False)."""
        self.is_consuming = value
        self.loop_at = time.time()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
            self._thread.start()
        self.write()

    def write(self) -> None:
        """Replace the heartbeat file atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "pid": os.getpid(),
            "written_at": time.time(),
            "loop_at": self.loop_at,
            "consuming": self.is_consuming,
        }
        staging = self.path.with_suffix(f".{os.getpid()}.tmp")
        staging.write_text(json.dumps(state))
        os.replace(staging, self.path)

    def close(self) -> None:
        """Stop writing and remove the file: a stopped worker is not alive."""
        self._stopped.set()
        self.path.unlink(missing_ok=True)

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            self.write()


def check_liveness(settings: Settings, *, now: float | None = None) -> dict[str, Any]:
    """``{"ok": bool, "detail": str}`` from the heartbeat file alone (no network)."""
    now = time.time() if now is None else now
    limit = settings.liveness_max_age_seconds
    path = heartbeat_path(settings)
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"ok": False, "detail": f"no worker heartbeat at {path}; is the worker running?"}
    written_age = now - float(state["written_at"])
    loop_age = now - float(state["loop_at"])
    if written_age > limit:
        return {"ok": False, "detail": f"heartbeat is {written_age:.0f}s old (limit {limit}s)"}
    if state["consuming"] and loop_age > limit:
        return {"ok": False, "detail": f"the consumer loop is stuck ({loop_age:.0f}s)"}
    doing = "consuming" if state["consuming"] else "reconnecting to the broker"
    return {"ok": True, "detail": f"worker pid {state['pid']} {doing}"}


def check_readiness(settings: Settings, *, timeout: float = 5.0) -> dict[str, Any]:
    """Broker, database and schema checks, each ``{"ok", "detail"}``, plus ``ok``."""
    checks = {
        "broker": _timed(lambda: _ping_broker(settings, timeout=timeout)),
        "database": _timed(lambda: _ping_database(settings)),
        "migrations": _timed(lambda: _schema_at_head(settings)),
    }
    return {"ok": all(c["ok"] for c in checks.values()), "checks": checks}


def _timed(check: Any) -> dict[str, Any]:
    from pynomaly_workers.domain.summaries import mask_secrets

    started = time.perf_counter()
    try:
        note = check()
    except Exception as exc:
        return {"ok": False, "detail": mask_secrets(f"{type(exc).__name__}: {exc}")[:300]}
    elapsed = (time.perf_counter() - started) * 1000
    return {"ok": True, "detail": f"{note} ({elapsed:.0f} ms)" if note else f"{elapsed:.0f} ms"}


def _ping_broker(settings: Settings, *, timeout: float) -> str:
    from kombu import Connection

    from pynomaly_workers.celery_config import broker_options, tls_options, transport_name

    with Connection(
        settings.broker_url,
        transport=transport_name(settings.broker_url),
        transport_options=broker_options(settings),
        ssl=tls_options(settings.broker_url) or False,  # verify the certificate as workers do
        connect_timeout=timeout,
    ) as connection:
        connection.ensure_connection(max_retries=1, timeout=round(timeout))
        return "answered"


def _ping_database(settings: Settings) -> str:
    from pynomaly_workers.bootstrap import get_adapters

    del settings
    get_adapters().database.ping()
    return "answered"


def _schema_at_head(settings: Settings) -> str:
    from pynomaly_workers.migrate import current_revision, head_revision

    url = settings.resolved_database_url
    current, head = current_revision(url), head_revision()
    if current != head:
        raise RuntimeError(
            f"schema is at {current or 'nothing'}, the code needs {head}: "
            "run 'pynomaly-workers migrate'"
        )
    return f"at {head}"
