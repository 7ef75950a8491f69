"""One-record jobs beside large ``source`` jobs, on one worker started with the default
pool size, each figure beside the same work alone in the same run.

- ``small_latency_ms``: one-record ``pynomaly.detect`` jobs at a paced rate, the first
  a second after the bulk jobs were sent; from just before ``send_task`` to the task
  result's ``date_done`` (when the caller's ``AsyncResult.get()`` can return), as
  ``small_jobs.result_latency_ms``. ``small_alone_latency_ms``: the same traffic alone.
- ``bulk_slowdown``: the bulk jobs' wall time (first send -> last ``finished_at``) with
  that traffic over their wall time alone.
- ``late_small_bulk_ratio``: a small ``source`` job sent a second after a much larger
  one started, send -> its ``finished_at``, over the same job alone.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from celery import Celery

from benchmarks import cache, models
from benchmarks.config import MIXED_MODEL, MixedSizes
from benchmarks.inputs import MixedInputs
from benchmarks.jobs import (
    Sent,
    finished_count,
    publisher,
    purge_queues,
    result_client,
    send_detection,
)
from benchmarks.progress import say
from benchmarks.small_jobs import (
    detect_sender,
    detection_outcome,
    result_latency,
    send_paced,
    settle,
)
from benchmarks.stack import Stack, running_worker
from benchmarks.stats import ratio

TRAINING_KEYS = ("model_version", "algorithm", "n_training_rows", "threshold", "train_s")


def run_mixed(stack: Stack, inputs: MixedInputs) -> dict[str, Any]:
    """Start the section's worker, train its 8-feature model, measure every phase."""
    with (
        running_worker(stack, cache=True, name="worker-mixed") as worker,
        publisher(stack.settings) as app,
    ):
        model = prepare_model(stack, app, inputs)
        pool = pool_size(app, pid=worker.process.pid)
        phases = measure(stack, app, inputs)
    return summarize(phases, sizes=stack.sizes.mixed, model=model, pool=pool)


def prepare_model(stack: Stack, app: Celery, inputs: MixedInputs) -> dict[str, Any]:
    """Train through ``pynomaly.train``; then one-record jobs and ``source`` jobs (one of
    them fanned out) before anything is timed, so every process has loaded the model
    and read a file."""
    with result_client(stack.settings) as client:
        summary = models.train(
            client, algorithms={MIXED_MODEL: "iforest"}, source=inputs.training_csv
        )[MIXED_MODEL]
    warm = models.warm_up(stack, app, models=[MIXED_MODEL], records=inputs.warmup, tag="mixed")
    cache.warm_sources(stack, app, model=MIXED_MODEL, source=inputs.late_small_csv)
    cache.warm_sources(stack, app, model=MIXED_MODEL, source=inputs.warm_csv, jobs=1)
    return {
        **{key: summary.get(key) for key in TRAINING_KEYS},
        "warmup_jobs_finished": f"{warm}/{len(inputs.warmup)}",
    }


def pool_size(app: Celery, *, pid: int) -> int | None:
    """The worker's pool processes, as it reports them (``inspect stats``)."""
    replies = app.control.inspect(timeout=2.0).stats() or {}
    for stats in replies.values():
        if stats.get("pid") == pid or len(replies) == 1:
            return int(stats["pool"]["max-concurrency"])
    return None


def measure(stack: Stack, app: Celery, inputs: MixedInputs) -> dict[str, Any]:
    """Each phase alone first, then the same work together."""
    sizes = stack.sizes.mixed
    phases: dict[str, Any] = {
        "small_alone": small_results(stack, app, send_small(app, inputs.small_alone, sizes)),
        "bulk_alone": bulk_outcome(stack, app, fresh_bulk(stack, app, inputs.bulk_csvs)),
    }
    bulk = fresh_bulk(stack, app, inputs.bulk_csvs)
    pause_until(bulk[0].sent_at + sizes.small_delay_s)
    small = send_small(app, inputs.small_mixed, sizes)
    phases["small_mixed"] = small_results(stack, app, small)
    phases["bulk_mixed"] = bulk_outcome(stack, app, bulk)
    phases["late_alone"] = bulk_outcome(stack, app, fresh_bulk(stack, app, [inputs.late_small_csv]))
    phases.update(late_small(stack, app, inputs))
    return phases


def late_small(stack: Stack, app: Celery, inputs: MixedInputs) -> dict[str, Any]:
    """The small ``source`` job sent ``late_delay_s`` after the large one started."""
    big = fresh_bulk(stack, app, [inputs.late_big_csv])
    started = wait_started(stack, big[0].job_id, timeout=stack.sizes.mixed.wait_s)
    pause_until((started or time.time()) + stack.sizes.mixed.late_delay_s)
    small = send_bulk(app, [inputs.late_small_csv])
    late = bulk_outcome(stack, app, small)
    after = None if started is None else round(small[0].sent_at - started, 3)
    return {
        "late_mixed": {**late, "sent_after_big_started_s": after},
        "late_big": bulk_outcome(stack, app, big),
    }


def send_small(app: Celery, records: Sequence[list[float]], sizes: MixedSizes) -> list[Sent]:
    """The paced one-record traffic, a fresh job-id prefix per run."""
    prefix = f"mix-small-{uuid.uuid4().hex[:6]}-"
    sender = detect_sender(app, prefix=prefix, records=records, model=MIXED_MODEL)
    count = int(sizes.small_rate * sizes.small_seconds)
    return send_paced(sender, count=count, per_second=sizes.small_rate)


def fresh_bulk(stack: Stack, app: Celery, sources: Sequence[Path]) -> list[Sent]:
    """:func:`send_bulk` with the prediction cache emptied first: no phase is served
    scores an earlier one stored."""
    cache.flush_cache(stack)
    return send_bulk(app, sources)


def send_bulk(app: Celery, sources: Sequence[Path]) -> list[Sent]:
    """One ``source`` job per file, sent together under one job-id prefix."""
    prefix = f"mix-src-{uuid.uuid4().hex[:6]}-"
    return [
        send_detection(app, job_id=f"{prefix}{i}", model=MIXED_MODEL, source=str(source))
        for i, source in enumerate(sources)
    ]


def small_results(stack: Stack, app: Celery, sent: Sequence[Sent]) -> dict[str, Any]:
    """Latency to each task's stored result, waiting at most the section's ``wait_s``."""
    return result_latency(stack, app, sent, wait_s=stack.sizes.mixed.wait_s, label="mixed")


def bulk_outcome(stack: Stack, app: Celery, sent: Sequence[Sent]) -> dict[str, Any]:
    """Wait for the ``source`` jobs; their wall time from the first send to the last
    finish (None unless every one succeeded) and each job's own."""
    prefix, wait_s = sent[0].job_id.rsplit("-", 1)[0] + "-", stack.sizes.mixed.wait_s
    done = detection_outcome(stack, prefix, sent, wait_s).done_at
    if len(done) < len(sent):
        drain(app, f"{len(sent) - len(done)} of {len(sent)} source jobs unfinished")
        settle(lambda: finished_count(stack.engine, prefix), timeout=wait_s)
    first = min(s.sent_at for s in sent)
    return {
        "jobs": len(sent),
        "completed": len(done),
        "wall_s": round(max(done.values()) - first, 3) if len(done) == len(sent) else None,
        "job_s": [round(done[s.job_id] - s.sent_at, 3) if s.job_id in done else None for s in sent],
    }


def wait_started(stack: Stack, job_id: str, *, timeout: float) -> float | None:
    """When the job's record says it started (wall clock), or None if not in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = stack.adapters.store.get_job(job_id)
        if job is not None and job.started_at is not None:
            return job.started_at.timestamp()
        time.sleep(0.01)
    return None


def pause_until(moment: float) -> None:
    """Sleep until the wall-clock ``moment`` (at once if it has passed)."""
    time.sleep(max(0.0, moment - time.time()))


def drain(app: Celery, why: str) -> None:
    """Purge what is still queued, so leftovers do not load the next phase."""
    say(f"mixed: {why}; purged {purge_queues(app)} queued messages")


def summarize(
    phases: dict[str, Any], *, sizes: MixedSizes, model: dict[str, Any], pool: int | None
) -> dict[str, Any]:
    """The JSON section: the three figures, how many jobs finished, the phases."""
    small, small_alone = phases["small_mixed"], phases["small_alone"]
    done = jobs_done(phases)
    return {
        "small_latency_ms": small["latency_ms"],
        "small_alone_latency_ms": small_alone["latency_ms"],
        "bulk_slowdown": ratio(phases["bulk_mixed"]["wall_s"], phases["bulk_alone"]["wall_s"]),
        "late_small_bulk_ratio": ratio(
            phases["late_mixed"]["wall_s"], phases["late_alone"]["wall_s"]
        ),
        "jobs_done": {name: f"{count}/{total}" for name, (count, total) in done.items()},
        "all_done": all(count == total for count, total in done.values()),
        "sizes": asdict(sizes),
        "worker_pool_size": pool,
        "model": model,
        "phases": phases,
    }


def jobs_done(phases: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Per phase: jobs finished (small: a stored successful result; source: succeeded)
    and jobs sent."""
    done = {
        name: (phases[name]["latency_completed"], phases[name]["latency_jobs"])
        for name in ("small_mixed", "small_alone")
    }
    for name in ("bulk_mixed", "bulk_alone", "late_mixed", "late_alone", "late_big"):
        done[name] = (phases[name]["completed"], phases[name]["jobs"])
    return done
