"""The worker's metrics registry under threads: created once, whoever asks first."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# In a fresh interpreter (this test process may have created the metrics already): many
# threads ask for the metrics at the same moment, then each asks again.
_RACE = textwrap.dedent(
    """
    import sys
    import threading

    sys.setswitchinterval(1e-6)  # switch threads as often as possible: widen the race
    from pynomaly_workers.metrics import get_metrics

    barrier = threading.Barrier(8)
    errors = []

    def ask():
        barrier.wait()
        try:
            get_metrics()
            get_metrics().jobs.labels(queue="detection", outcome="succeeded").inc()
        except Exception as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(len(errors), errors[:1])
    """
)


def test_metrics_asked_for_by_many_threads_at_once_are_created_once() -> None:
    # When eight threads ask for the metrics at the same moment, in a fresh process
    done = subprocess.run(
        [sys.executable, "-c", _RACE], capture_output=True, text=True, timeout=60, check=True
    )

    # Then none of them failed (a second creation raises DuplicateTimeseries)
    assert done.stdout.strip() == "0 []", done.stdout + done.stderr
