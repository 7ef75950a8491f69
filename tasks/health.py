"""``pynomaly.health.ping``: the canary whose round trip proves a worker consumes."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from pynomaly_workers.celery_app import app


@app.task(name="pynomaly.health.ping")
def ping(sent_at: float | None = None) -> dict[str, Any]:
    """Answer with who ran the canary and when."""
    return {
        "pong": True,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "sent_at": sent_at,
        "answered_at": time.time(),
    }
