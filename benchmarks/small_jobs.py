"""Many one-record jobs: latency at an offered rate, and sustained throughput, each set
beside Celery's own no-op task (``pynomaly.health.ping``) measured the same way.

Detection latency is ``detection_jobs.finished_at`` minus the wall-clock time just
before ``send_task`` (the anomalies are committed before the job is marked finished);
``result_latency_ms`` is the task result's ``date_done`` minus the same: the moment a
caller's ``AsyncResult.get()`` can return, as for the no-op. The throughput figures are
given both ways too (``jobs_per_s`` to the job rows, ``result_jobs_per_s`` to the last
stored result).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import redis
from celery import Celery

from benchmarks.config import IFOREST_MODEL, RESULTS_DB
from benchmarks.jobs import (
    Sent,
    finished_count,
    finished_jobs,
    purge_queues,
    send_detection,
    wait_prefix,
)
from benchmarks.progress import say
from benchmarks.stack import Stack
from benchmarks.stats import percentiles, rate, ratio
from pynomaly_workers.client import detection_kwargs
from pynomaly_workers.contract import DETECTION_QUEUE, FAILED, PING_TASK, SUCCEEDED
from pynomaly_workers.services.context import DriftObserver
from pynomaly_workers.services.detection.batch import detect_batch
from pynomaly_workers.services.detection.outcomes import DetectMessage
from pynomaly_workers.services.drift import DriftProfiler

Sender = Callable[[int], Sent]
RESULT_PREFIX = "celery-task-meta-"
_KEYS_PER_CALL = 500


@dataclass(frozen=True, slots=True)
class SmallJobRows:
    """Distinct records for the paced run and the burst, so no job hits the prediction
    cache with a row an earlier job scored."""

    latency: Sequence[list[float]]
    burst: Sequence[list[float]]


@dataclass(frozen=True, slots=True)
class Outcome:
    """When each published task finished (wall clock, seconds), which failed, and when
    the waiting stopped (tasks still running then are censored at that time)."""

    done_at: dict[str, float]
    failed: set[str]
    checked_at: float


def send_paced(send: Sender, *, count: int, per_second: float) -> list[Sent]:
    """Publish ``count`` tasks at a steady offered rate (catching up if behind)."""
    sent = []
    start = time.perf_counter()
    for i in range(count):
        delay = start + i / per_second - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent.append(send(i))
    return sent


def send_burst(send: Sender, *, count: int) -> list[Sent]:
    """Publish ``count`` tasks as fast as the publisher can."""
    return [send(i) for i in range(count)]


def detect_sender(
    app: Celery,
    *,
    prefix: str,
    records: Sequence[list[float]],
    model: str | Callable[[int], str] = IFOREST_MODEL,
) -> Sender:
    """One-record ``pynomaly.detect`` jobs, each with its own job id, to ``model`` (or
    to the model ``model(i)`` names for the ``i``-th job)."""

    def send(i: int) -> Sent:
        record = records[i % len(records)]
        name = model(i) if callable(model) else model
        return send_detection(app, job_id=f"{prefix}{i:06d}", model=name, records=[record])

    return send


def ping_sender(app: Celery) -> Sender:
    """Celery's no-op: the health canary, which only returns a small dict."""

    def send(_: int) -> Sent:
        sent_at = time.time()
        result = app.send_task(PING_TASK, args=[sent_at], queue=DETECTION_QUEUE)
        return Sent(job_id=str(result.id), task_id=str(result.id), sent_at=sent_at)

    return send


def detection_outcome(stack: Stack, prefix: str, sent: Sequence[Sent], timeout: float) -> Outcome:
    """Wait for the jobs, then read their finish times from ``detection_jobs``."""
    wait_prefix(stack.engine, prefix, expected=len(sent), timeout=timeout)
    rows = finished_jobs(stack.engine, prefix)
    done = {
        job_id: row.finished_at.timestamp()
        for job_id, row in rows.items()
        if row.status == SUCCEEDED and row.finished_at is not None
    }
    failed = {job_id for job_id, row in rows.items() if row.status == FAILED}
    return Outcome(done_at=done, failed=failed, checked_at=time.time())


def ping_outcome(stack: Stack, sent: Sequence[Sent], timeout: float) -> Outcome:
    """Wait for the tasks' results (by task id), then read their ``date_done``."""
    keys = [f"{RESULT_PREFIX}{s.task_id}" for s in sent]
    with stack.redis(RESULTS_DB) as client:
        deadline = time.monotonic() + timeout
        while _existing(client, keys) < len(keys) and time.monotonic() < deadline:
            time.sleep(0.05)
        metas = _metas(client, keys)
    done = {tid: _date_done(meta) for tid, meta in metas.items() if meta.get("status") == "SUCCESS"}
    failed = {tid for tid, meta in metas.items() if meta.get("status") == "FAILURE"}
    return Outcome(done_at=done, failed=failed, checked_at=time.time())


def ping_results(stack: Stack, sent: Sequence[Sent]) -> int:
    """How many of the canaries have a stored result."""
    with stack.redis(RESULTS_DB) as client:
        return _existing(client, [f"{RESULT_PREFIX}{s.task_id}" for s in sent])


def _existing(client: redis.Redis, keys: Sequence[str]) -> int:
    chunks = [keys[i : i + _KEYS_PER_CALL] for i in range(0, len(keys), _KEYS_PER_CALL)]
    return sum(int(client.exists(*chunk)) for chunk in chunks)


def _metas(client: redis.Redis, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    metas: dict[str, dict[str, Any]] = {}
    for i in range(0, len(keys), _KEYS_PER_CALL):
        chunk = keys[i : i + _KEYS_PER_CALL]
        for key, value in zip(chunk, client.mget(chunk), strict=True):
            if isinstance(value, bytes):
                metas[key.removeprefix(RESULT_PREFIX)] = json.loads(value)
    return metas


def _date_done(meta: dict[str, Any]) -> float:
    moment = datetime.fromisoformat(str(meta["date_done"]))
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def result_latency(
    stack: Stack, app: Celery, sent: Sequence[Sent], *, wait_s: float, label: str
) -> dict[str, Any]:
    """Latency to each task's stored result (``date_done``); what has no result within
    ``wait_s`` is counted at the time it had waited, and the queues are purged so the
    leftovers do not load the next measurement."""
    keyed = by_task(sent)
    outcome = ping_outcome(stack, keyed, wait_s)
    if len(outcome.done_at) + len(outcome.failed) < len(keyed):
        missing = len(keyed) - len(outcome.done_at)
        say(f"{label}: {missing} jobs without a result; purged {purge_queues(app)} queued")
        settle(lambda: ping_results(stack, keyed), timeout=wait_s)
    return latency_figures(keyed, outcome)


def latency_figures(sent: Sequence[Sent], outcome: Outcome) -> dict[str, Any]:
    """Per-task latency percentiles (ms) and how the offered rate was met. A task still
    unfinished when the wait ended counts with the time it had waited by then, so with
    ``latency_censored`` > 0 the percentiles are lower bounds."""
    finished = [s for s in sent if s.job_id in outcome.done_at]
    unfinished = [
        s for s in sent if s.job_id not in outcome.done_at and s.job_id not in outcome.failed
    ]
    latencies = [(outcome.done_at[s.job_id] - s.sent_at) * 1000 for s in finished]
    censored = [(outcome.checked_at - s.sent_at) * 1000 for s in unfinished]
    span = sent[-1].sent_at - sent[0].sent_at if len(sent) > 1 else 0.0
    return {
        "latency_ms": percentiles(latencies + censored),
        "latency_jobs": len(sent),
        "latency_completed": len(finished),
        "latency_failed": len(outcome.failed),
        "latency_censored": len(unfinished),
        "achieved_offered_per_s": rate(len(sent) - 1, span),
    }


def throughput_figures(sent: Sequence[Sent], outcome: Outcome) -> dict[str, Any]:
    """Completed tasks per second from the first send to the last finish."""
    first = sent[0].sent_at
    last_done = max(outcome.done_at.values(), default=first)
    publish_span = sent[-1].sent_at - first
    return {
        "jobs": len(sent),
        "completed": len(outcome.done_at),
        "failed": len(outcome.failed),
        "seconds": round(last_done - first, 3),
        "jobs_per_s": rate(len(outcome.done_at), last_done - first),
        "publisher_send_per_s": rate(len(sent) - 1, publish_span),
    }


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind of one-task job: how to publish it and how to learn when it finished."""

    make_sender: Callable[[str, Sequence[list[float]]], Sender]
    collect: Callable[[str, Sequence[Sent], float], Outcome]
    finished: Callable[[str, Sequence[Sent]], int]
    results: Callable[[Sequence[Sent], float], Outcome] | None = None
    """When each task's result was stored, if ``collect`` measures something else."""


def by_task(sent: Sequence[Sent]) -> list[Sent]:
    """The same sends keyed by task id (results are stored under it)."""
    return [Sent(job_id=s.task_id, task_id=s.task_id, sent_at=s.sent_at) for s in sent]


def result_figures(
    kind: Kind, sent: Sequence[Sent], *, timeout: float, throughput: bool
) -> dict[str, Any]:
    """Latency or throughput to the stored results, for a kind measured elsewhere."""
    if kind.results is None:
        return {}
    keyed = by_task(sent)
    outcome = kind.results(keyed, timeout)
    if throughput:
        return {"result_jobs_per_s": throughput_figures(keyed, outcome)["jobs_per_s"]}
    return {"result_latency_ms": latency_figures(keyed, outcome)["latency_ms"]}


def timed_batch(
    app: Celery,
    kind: Kind,
    *,
    prefix: str,
    rows: Sequence[list[float]],
    send: Callable[[Sender], list[Sent]],
    timeout: float,
) -> tuple[list[Sent], Outcome]:
    """Publish, wait for the outcome; purge what is still queued if time ran out, so the
    leftovers do not load the next measurement."""
    sent = send(kind.make_sender(prefix, rows))
    outcome = kind.collect(prefix, sent, timeout)
    if len(outcome.done_at) + len(outcome.failed) < len(sent):
        purged = purge_queues(app)
        say(f"{prefix}: {len(sent) - len(outcome.done_at)} unfinished; purged {purged} queued")
        settle(lambda: kind.finished(prefix, sent), timeout=timeout)
    return sent, outcome


def settle(finished: Callable[[], int], *, timeout: float, quiet_s: float = 1.0) -> None:
    """Wait until the jobs workers had already taken before the purge are done: no more
    finish for ``quiet_s`` (or ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    last = finished()
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = finished()
        if now == last:
            return
        last = now


def measure_kind(stack: Stack, app: Celery, kind: Kind, rows: SmallJobRows) -> dict[str, Any]:
    """Latency at the offered rate, then throughput of a burst, for one kind of task."""
    sizes = stack.sizes
    run = uuid.uuid4().hex[:6]
    count = int(sizes.small_rate * sizes.small_seconds)
    sent, outcome = timed_batch(
        app,
        kind,
        prefix=f"lat-{run}-",
        rows=rows.latency,
        send=lambda sender: send_paced(sender, count=count, per_second=sizes.small_rate),
        timeout=sizes.patience(count / 25),
    )
    latency = latency_figures(sent, outcome)
    latency.update(result_figures(kind, sent, timeout=sizes.patience(5), throughput=False))
    sent, outcome = timed_batch(
        app,
        kind,
        prefix=f"tput-{run}-",
        rows=rows.burst,
        send=lambda sender: send_burst(sender, count=sizes.small_jobs),
        timeout=sizes.patience(sizes.small_jobs / 25),
    )
    results = result_figures(kind, sent, timeout=sizes.patience(5), throughput=True)
    return {**latency, **throughput_figures(sent, outcome), **results}


def detect_kind(stack: Stack, app: Celery) -> Kind:
    """One-record ``pynomaly.detect`` jobs, finished by their job rows and results."""
    return Kind(
        make_sender=lambda prefix, records: detect_sender(app, prefix=prefix, records=records),
        collect=lambda prefix, sent, timeout: detection_outcome(stack, prefix, sent, timeout),
        finished=lambda prefix, _sent: finished_count(stack.engine, prefix),
        results=lambda sent, timeout: ping_outcome(stack, sent, timeout),
    )


def run_detect_only(stack: Stack, app: Celery, rows: SmallJobRows) -> dict[str, Any]:
    """The detection figures alone (e.g. on a worker with a feature turned off)."""
    return measure_kind(stack, app, detect_kind(stack, app), rows)


def run_small_jobs(stack: Stack, app: Celery, rows: SmallJobRows) -> dict[str, Any]:
    """Both kinds, Celery's no-op first; ratios between them."""
    noop = Kind(
        make_sender=lambda _prefix, _rows: ping_sender(app),
        collect=lambda _prefix, sent, timeout: ping_outcome(stack, sent, timeout),
        finished=lambda _prefix, sent: ping_results(stack, sent),
    )
    detect = detect_kind(stack, app)
    noop_figures = measure_kind(stack, app, noop, rows)
    return summarize(
        measure_kind(stack, app, detect, rows), noop_figures, rate_offered=stack.sizes.small_rate
    )


def summarize(detect: dict[str, Any], noop: dict[str, Any], *, rate_offered: int) -> dict[str, Any]:
    """The JSON section: detection figures, the no-op's, and their ratio."""
    return {
        "rate": rate_offered,
        **detect,
        "celery_noop_jobs_per_s": noop["jobs_per_s"],
        "ratio_to_noop": ratio(detect["jobs_per_s"], noop["jobs_per_s"]),
        "noop_latency_ms": noop["latency_ms"],
        "noop": noop,
    }


def profiling_cost(
    stack: Stack,
    rows: Sequence[list[float]],
    *,
    batch: int = 64,
    batches: int = 40,
    repeats: int = 5,
) -> dict[str, Any]:
    """What drift profiling adds to a micro-batch of one-record jobs, measured in one
    process: ``batches`` batches of ``batch`` jobs run through the workers' own batch
    service (score, settle in PostgreSQL) with the drift profiler and without it,
    alternated batch by batch, ``repeats`` rounds after one untimed round (so first uses
    are not counted), best round of each; the profiler's counts are flushed to
    PostgreSQL inside the timed run. Celery's per-job costs are left out, so the share
    is larger than the caller would see: an upper bound.

    ``overhead`` is the time spent inside the profiler (counting and flushing) over the
    time of the run without it: the profiler's cost, about 1% here, is smaller than
    the run-to-run noise of the whole batch path (a few percent on this machine), so
    the difference of the two runs (``overhead_difference``) can come out either side
    of it."""
    adapters = stack.adapters
    if adapters.drift is None:
        return {"error": "the suite's adapters have drift profiling off"}
    # Its own profiler, whose period outlasts the run: the workers' one flushes on a
    # thread of its own, whose time would not be counted here; this one flushes only
    # when told, below, inside the timed run.
    profiler = DriftProfiler(
        adapters.store,
        window_seconds=adapters.settings.drift_window_seconds,
        flush_seconds=24 * 3600.0,
    )
    timed = TimedObserver(profiler)
    with_profiling = replace(adapters, drift=timed)
    without = replace(adapters, drift=None)
    run = uuid.uuid4().hex[:6]
    best = {True: float("inf"), False: float("inf")}
    inside = float("inf")
    warm = [
        DetectMessage(
            task_id=f"prof-{run}-warm",
            kwargs=detection_kwargs(
                model=IFOREST_MODEL, records=[rows[0]], job_id=f"prof-{run}-warm"
            ),
        )
    ]
    detect_batch(without, warm)  # loads the model and its scorers outside the timing
    for attempt in range(-1, repeats):  # round -1: untimed, both variants' first use
        spent = {True: 0.0, False: 0.0}
        timed.seconds = 0.0
        for b in range(batches):
            # Batch by batch, in alternating order: a slow second on the shared machine
            # falls on both variants alike.
            for profiling in (False, True) if (attempt + b) % 2 else (True, False):
                tag = f"prof-{run}-{attempt}-{profiling:d}-{b}"
                messages = [
                    DetectMessage(
                        task_id=f"{tag}-{i}",
                        kwargs=detection_kwargs(
                            model=IFOREST_MODEL,
                            records=[rows[(b * batch + i) % len(rows)]],
                            job_id=f"{tag}-{i}",
                        ),
                    )
                    for i in range(batch)
                ]
                started = time.perf_counter()
                detect_batch(with_profiling if profiling else without, messages)
                spent[profiling] += time.perf_counter() - started
        started = time.perf_counter()
        timed.flush(now=adapters.clock.now())
        spent[True] += time.perf_counter() - started
        if attempt >= 0:
            best = {key: min(best[key], spent[key]) for key in best}
            inside = min(inside, timed.seconds)
    return {
        "jobs": batch * batches,
        "off_s": round(best[False], 4),
        "on_s": round(best[True], 4),
        "profiler_s": round(inside, 4),
        "overhead": round(inside / best[False], 4),
        "overhead_difference": round(best[True] / best[False] - 1.0, 3),
        "repeats": repeats,
    }


class TimedObserver:
    """A drift observer that adds up the time spent inside it (``seconds``)."""

    def __init__(self, inner: DriftObserver) -> None:
        self.inner = inner
        self.seconds = 0.0

    def observe(self, version: Any, matrix: Any, scores: Any, *, now: datetime) -> None:
        started = time.perf_counter()
        try:
            self.inner.observe(version, matrix, scores, now=now)
        finally:
            self.seconds += time.perf_counter() - started

    def flush(self, *, now: datetime) -> None:
        started = time.perf_counter()
        try:
            self.inner.flush(now=now)
        finally:
            self.seconds += time.perf_counter() - started
