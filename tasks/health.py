"""``pynomaly.health.ping``: the canary whose round trip proves a worker consumes."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from celery import Celery

from pynomaly_workers.contract import PING_TASK
from pynomaly_workers.settings import Settings


def register(app: Celery, settings: Settings) -> None:
    """Define the canary task on ``app``."""
    del settings  # the canary needs none

    @app.task(name=PING_TASK)
    def ping(sent_at: float | None = None) -> dict[str, Any]:
        """Answer with who ran the canary and when."""
        return {
            "pong": True,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "sent_at": sent_at,
            "answered_at": time.time(),
        }
