"""Steady load for fault scenarios: a producer thread publishing small detection jobs at
a set rate, on its own broker connection, while the test breaks something."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from pynomaly_workers.client import client_app, close_app, submit_detection
from pynomaly_workers.settings import Settings


class PacedPublisher:
    """Publishes ``job_ids`` in order, ``rate`` per second, in a background thread.

    Pacing is by the clock (job *i* is sent at ``start + i / rate``), so a slow publish
    is caught up with rather than stretching the run; :attr:`sent` counts what went out.
    With ``keep_going`` a publish that raised (after the client's own retry policy) is
    recorded in :attr:`refused` and the next job is sent: a job is *accepted* only when
    its publish returned (:attr:`accepted`). Without it the first error stops the thread
    and :meth:`join` fails.
    """

    def __init__(self, *, job_ids: Sequence[str], rate: float, keep_going: bool = False) -> None:
        self.job_ids, self.rate, self.keep_going = list(job_ids), rate, keep_going
        self.sent = 0
        self.accepted: list[str] = []
        self.refused: list[tuple[str, str]] = []
        self.errors: list[BaseException] = []
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> PacedPublisher:
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

    def open(self) -> Any:
        """The publishing client, made in the producer's thread."""
        raise NotImplementedError

    def send(self, client: Any, job_id: str) -> None:
        """Publish one job; returns once the broker took it, raises otherwise."""
        raise NotImplementedError

    def close(self, client: Any) -> None:
        """Release the publishing client."""

    def _run(self) -> None:
        client = self.open()
        started = time.monotonic()
        try:
            for index, job_id in enumerate(self.job_ids):
                delay = started + index / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pacing the load, not waiting on a condition
                self._send_one(client, job_id)
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            self.seconds = time.monotonic() - started
            self.close(client)

    def _send_one(self, client: Any, job_id: str) -> None:
        try:
            self.send(client, job_id)
        except Exception as exc:
            if not self.keep_going:
                raise
            self.refused.append((job_id, f"{type(exc).__name__}: {exc}"))
        else:
            self.accepted.append(job_id)
        self.sent += 1


class Producer(PacedPublisher):
    """Publishes 1-or-more-record ``pynomaly.detect`` jobs of ``model`` with the client
    helper (:func:`submit_detection`), whose publish retry policy applies."""

    def __init__(
        self,
        settings: Settings,
        *,
        model: str,
        rows: Sequence[Sequence[float]],
        job_ids: Sequence[str],
        rate: float,
        keep_going: bool = False,
    ) -> None:
        super().__init__(job_ids=job_ids, rate=rate, keep_going=keep_going)
        self.settings, self.model, self.rows = settings, model, rows

    def start(self) -> Producer:
        """Start publishing; returns self."""
        super().start()
        return self

    def open(self) -> Any:
        return client_app(self.settings)

    def send(self, client: Any, job_id: str) -> None:
        submit_detection(model=self.model, records=self.rows, job_id=job_id, app=client)

    def close(self, client: Any) -> None:
        close_app(client)
