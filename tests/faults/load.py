"""Steady load for fault scenarios: a producer thread publishing small detection jobs at
a set rate, on its own broker connection, while the test breaks something."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from pynomaly_workers.client import client_app, close_app, submit_detection
from pynomaly_workers.settings import Settings


class Producer:
    """Publishes ``job_ids`` in order, ``rate`` per second, in a background thread.

    Pacing is by the clock (job *i* is sent at ``start + i / rate``), so a slow publish
    is caught up with rather than stretching the run; :attr:`sent` counts what went out.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        model: str,
        rows: Sequence[Sequence[float]],
        job_ids: Sequence[str],
        rate: float,
    ) -> None:
        self.settings, self.model, self.rows = settings, model, rows
        self.job_ids, self.rate = list(job_ids), rate
        self.sent = 0
        self.errors: list[BaseException] = []
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Producer:
        """Start publishing; returns self."""
        self._thread.start()
        return self

    def join(self, timeout: float) -> None:
        """Wait until every job was sent; fail if that takes longer than ``timeout``."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(
                f"the producer sent {self.sent} of {len(self.job_ids)} jobs in {timeout} s"
            )
        if self.errors:
            raise AssertionError(f"the producer failed: {self.errors!r}")

    @property
    def achieved_rate(self) -> float:
        """Jobs per second actually published."""
        return self.sent / self.seconds if self.seconds else 0.0

    def _run(self) -> None:
        app = client_app(self.settings)
        started = time.monotonic()
        try:
            for index, job_id in enumerate(self.job_ids):
                delay = started + index / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pacing the load, not waiting on a condition
                submit_detection(model=self.model, records=self.rows, job_id=job_id, app=app)
                self.sent += 1
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            self.seconds = time.monotonic() - started
            close_app(app)
