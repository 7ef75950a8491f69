"""Health: the database answers, and a canary task round-trips through each queue."""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from pynomaly_workers.contract import PING_TASK
from pynomaly_workers.services.context import Adapters


def check_health(adapters: Adapters, *, queues: Sequence[str], timeout: float) -> dict[str, Any]:
    """A report with one check per dependency and per queue; ``ok`` if all passed."""
    from pynomaly_workers.client import client_app, close_app

    checks = {"database": _check_database(adapters)}
    app = client_app(adapters.settings)
    try:
        pending = _send_canaries(app, queues)
        for queue in list(pending):
            checks[f"queue:{queue}"] = _await_canary(pending.pop(queue), timeout=timeout)
    finally:
        gc.collect()  # AsyncResults unsubscribe when collected: do it before closing
        close_app(app)
    return {"ok": all(c["ok"] for c in checks.values()), "checks": checks}


def _check_database(adapters: Adapters) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        adapters.database.ping()
    except Exception as exc:
        return {"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:300]}
    return {"ok": True, "detail": f"answered in {(time.perf_counter() - started) * 1000:.1f} ms"}


def _send_canaries(app: Celery, queues: Sequence[str]) -> dict[str, AsyncResult[Any]]:
    return {
        queue: app.send_task(PING_TASK, args=[time.time()], queue=queue, expires=300)
        for queue in queues
    }


def _await_canary(result: AsyncResult[Any], *, timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        answer = result.get(timeout=timeout)
    except Exception as exc:
        return {
            "ok": False,
            "detail": f"no worker answered within {timeout:.0f}s ({type(exc).__name__})",
        }
    elapsed = (time.perf_counter() - started) * 1000
    return {
        "ok": True,
        "detail": f"round trip {elapsed:.0f} ms via {answer['host']} pid {answer['pid']}",
    }
