"""A pool process forked while another thread writes a metric must not inherit
prometheus-client's multiprocess lock held (it would hang on its first metric write)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

FORKS = """
import json, os, sys, threading, time
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
from pynomaly_workers import observability
from pynomaly_workers.metrics import get_metrics
guarded = sys.argv[2] == "guarded"
gauge = get_metrics().queue_length
if guarded:
    observability._guard_forks()
stop = threading.Event()
def write():  # as the queue sampler does, as fast as it can
    while not stop.is_set():
        if guarded:
            with observability._FORK_GUARD:
                gauge.labels(queue="detection").set(1)
        else:
            gauge.labels(queue="detection").set(1)
threading.Thread(target=write, daemon=True).start()
hung = 0
for i in range(200):
    pid = os.fork()
    if pid == 0:  # a pool process: its first metric write must return
        get_metrics().records.labels(model=f"m{i}").inc()
        os._exit(0)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.002)
    else:
        hung += 1
        os.kill(pid, 9)
        os.waitpid(pid, 0)
stop.set()
print(json.dumps({"hung": hung}))
"""


def forks_that_hung(tmp_path: Path, mode: str) -> int:
    folder = tmp_path / mode
    folder.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", FORKS, str(folder), mode],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return int(json.loads(done.stdout.strip().splitlines()[-1])["hung"])


def test_no_fork_inherits_the_metrics_lock_held(tmp_path: Path) -> None:
    assert forks_that_hung(tmp_path, "guarded") == 0
