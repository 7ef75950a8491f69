"""The prediction cache: a slow model's repeated job cold and warm, and what the cache
costs a model that is cheaper to score than to look up."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from celery import Celery

from benchmarks.config import CACHE_DB
from benchmarks.jobs import send_detection, wait_job, wait_prefix
from benchmarks.stack import Stack
from benchmarks.stats import median, ratio
from pynomaly_workers.client import detection_kwargs
from pynomaly_workers.contract import SUCCEEDED
from pynomaly_workers.services.detection import run_detection


@dataclass(frozen=True, slots=True)
class Timed:
    """One job's time in the worker (``duration_ms``) and end to end (send -> finished)."""

    worker_s: float
    end_to_end_s: float
    cache_hits: int
    records: int


def flush_cache(stack: Stack) -> None:
    """Forget every cached score."""
    with stack.redis(CACHE_DB) as client:
        client.flushdb()


def timed_job(stack: Stack, app: Celery, *, model: str, source: Path, tag: str) -> Timed:
    """Run one ``source`` job and return its timings."""
    job_id = f"{tag}-{uuid.uuid4().hex[:8]}"
    sent = send_detection(app, job_id=job_id, model=model, source=str(source))
    job = wait_job(stack.adapters, job_id, timeout=stack.sizes.patience(60.0))
    if job.status != SUCCEEDED or job.finished_at is None or job.duration_ms is None:
        raise RuntimeError(f"job {job_id} {job.status}: {job.error}")
    return Timed(
        worker_s=job.duration_ms / 1000,
        end_to_end_s=job.finished_at.timestamp() - sent.sent_at,
        cache_hits=job.cache_hits or 0,
        records=job.n_records or 0,
    )


def cold_and_warm(stack: Stack, app: Celery, *, model: str, source: Path) -> dict[str, Any]:
    """The same file twice under new job ids: first with an empty cache, then warm."""
    flush_cache(stack)
    cold = timed_job(stack, app, model=model, source=source, tag="cold")
    warm = timed_job(stack, app, model=model, source=source, tag="warm")
    return {
        "model": model,
        "rows": cold.records,
        "cold_s": round(cold.worker_s, 3),
        "warm_s": round(warm.worker_s, 3),
        "speedup": ratio(cold.worker_s, warm.worker_s, digits=2),
        "cold_end_to_end_s": round(cold.end_to_end_s, 3),
        "warm_end_to_end_s": round(warm.end_to_end_s, 3),
        "speedup_end_to_end": ratio(cold.end_to_end_s, warm.end_to_end_s, digits=2),
        "warm_cache_hits": warm.cache_hits,
    }


def warm_sources(stack: Stack, app: Celery, *, model: str, source: Path, jobs: int = 4) -> int:
    """Untimed ``source`` jobs sent together, so each worker process has read a file
    before (the first read in a process pays for importing pyarrow); returns how many
    finished."""
    prefix = f"warmsrc-{uuid.uuid4().hex[:6]}-"
    for i in range(jobs):
        send_detection(app, job_id=f"{prefix}{i}", model=model, source=str(source))
    return wait_prefix(stack.engine, prefix, expected=jobs, timeout=stack.sizes.wait_s)


def repeated(
    stack: Stack, app: Celery, *, model: str, source: Path, runs: int, flush: bool
) -> list[float]:
    """Worker seconds of ``runs`` jobs on the same file; ``flush`` empties the cache
    before each, so every run misses (the common case: new data)."""
    timings = []
    for i in range(runs):
        if flush:
            flush_cache(stack)
        timings.append(timed_job(stack, app, model=model, source=source, tag=f"ovh{i}").worker_s)
    return timings


def fast_model_cost(stack: Stack, *, model: str, source: Path, repeats: int = 5) -> dict[str, Any]:
    """What the cache costs a fast model, measured in one process: the same ``source``
    job run through the workers' own detection service (read, score, persist) with the
    cache adapter (flushed before each run: every row a miss; then not flushed) and
    without one, alternated ``repeats`` times after one untimed round, best of each.
    The two workers of the end-to-end figure differ in more than the cache, and run
    minutes apart."""
    adapters = stack.adapters
    if adapters.cache is None:
        return {"error": "the suite's adapters have no prediction cache"}
    without = replace(adapters, cache=None)
    run = uuid.uuid4().hex[:6]

    def once(chosen: Any, tag: str) -> float:
        job_id = f"fast-{run}-{tag}"
        kwargs = detection_kwargs(model=model, source=str(source), job_id=job_id)
        started = time.perf_counter()
        run_detection(chosen, kwargs, default_job_id=job_id)
        return time.perf_counter() - started

    best = {"miss": float("inf"), "hit": float("inf"), "off": float("inf")}
    for attempt in range(-1, repeats):  # round -1: untimed, each variant's first use
        times = {"off": once(without, f"off{attempt}")}
        flush_cache(stack)
        times["miss"] = once(adapters, f"miss{attempt}")
        times["hit"] = once(adapters, f"hit{attempt}")
        if attempt >= 0:
            best = {key: min(best[key], times[key]) for key in best}
    return {
        "miss_s": round(best["miss"], 4),
        "hit_s": round(best["hit"], 4),
        "off_s": round(best["off"], 4),
        "overhead": ratio(best["miss"] - best["off"], best["off"]),
        "overhead_warm": ratio(best["hit"] - best["off"], best["off"]),
        "repeats": repeats,
    }


def overhead(on_cold: list[float], on_warm: list[float], off: list[float]) -> dict[str, Any]:
    """``t_on / t_off - 1`` on medians: with every row a miss, and with every row a hit."""
    t_off = median(off)
    return {
        "fast_model_overhead": ratio(median(on_cold) - t_off, t_off),
        "fast_model_overhead_warm": ratio(median(on_warm) - t_off, t_off),
        "fast_model_runs_s": {
            "cache_on_miss": [round(t, 4) for t in on_cold],
            "cache_on_hit": [round(t, 4) for t in on_warm],
            "cache_off": [round(t, 4) for t in off],
        },
    }
