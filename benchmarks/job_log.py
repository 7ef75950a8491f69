"""What the per-job log line (``PYNOMALY_JOB_LOG``) costs one-record jobs: the small-job
measurement (``small_jobs.run_detect_only``: latency at the offered rate, then a burst's
throughput) on a worker with the line on and on one with it off, both logging JSON
(``PYNOMALY_LOG_FORMAT=json``, where an operator follows jobs), alternated
(on, off, off, on, on, off, ...) so a slow minute on the shared machine falls on both.
Each worker is started fresh, warmed up, measured, and stopped; the lines the "on" workers
wrote are counted, so a run that logged nothing cannot pass for a cheap one. On a shared
two-core machine those runs move by more than the line costs, so the section also times
the line in one process (:func:`line_cost`)."""

from __future__ import annotations

import logging
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.config import IFOREST_MODEL
from benchmarks.inputs import Inputs
from benchmarks.jobs import publisher, result_client
from benchmarks.models import train, warm_up
from benchmarks.progress import say
from benchmarks.small_jobs import run_detect_only
from benchmarks.stack import Stack, running_worker
from benchmarks.stats import ratio
from pynomaly_workers.adapters.joblog import LoggingJobLog
from pynomaly_workers.client import detection_kwargs
from pynomaly_workers.domain.joblog import JOB_LOGGER, JobLine
from pynomaly_workers.observability import JsonFormatter, MaskSecrets
from pynomaly_workers.services.context import NullJobLog
from pynomaly_workers.services.detection import DetectMessage, detect_batch

ROUNDS = 4
JSON_LOGS = {"PYNOMALY_LOG_FORMAT": "json"}


def order(rounds: int) -> list[bool]:
    """True = line on. Each round runs both, the first one alternating."""
    runs: list[bool] = []
    for index in range(rounds):
        runs += [True, False] if index % 2 == 0 else [False, True]
    return runs


def run_job_log(stack: Stack, inputs: Inputs, *, rounds: int = ROUNDS) -> dict[str, Any]:
    """The small-job figures with the line on and off, ``rounds`` of each."""
    runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    for index, on in enumerate(order(rounds)):
        name = f"worker-joblog-{'on' if on else 'off'}-{index}"
        env = {**JSON_LOGS, "PYNOMALY_JOB_LOG": "true" if on else "false"}
        with running_worker(stack, cache=True, name=name, extra_env=env) as worker:
            if index == 0:  # the model lives in the database, for every later worker
                with result_client(stack.settings) as app:
                    train(app, algorithms={IFOREST_MODEL: "iforest"}, source=inputs.training_csv)
            with publisher(stack.settings) as app:
                warm_up(stack, app, models=[IFOREST_MODEL], records=inputs.warmup, tag=name)
                figures = run_detect_only(stack, app, inputs.small_jobs)
            log_path = worker.log_path
        figures["job_lines"] = count_job_lines(log_path)
        runs["on" if on else "off"].append(figures)
        say(
            f"{name}: {figures['result_jobs_per_s']} jobs/s to the results, p50 "
            f"{figures['result_latency_ms']['p50']} ms, {figures['job_lines']} job lines"
        )
    return {**summarize(runs), "in_process": line_cost(stack, inputs.small_jobs.burst)}


def count_job_lines(path: Path) -> int:
    """Lines of the job log (JSON, ``"event": "job_finished"``) in a worker's log."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        return sum(1 for text in handle if '"event": "job_finished"' in text)


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians per variant and the on/off ratios (the cost is 1 - throughput ratio)."""
    medians = {variant: _medians(figures) for variant, figures in runs.items()}
    on, off = medians["on"], medians["off"]
    return {
        "on": on,
        "off": off,
        "throughput_ratio_on_off": ratio(on["result_jobs_per_s"], off["result_jobs_per_s"]),
        "row_throughput_ratio_on_off": ratio(on["jobs_per_s"], off["jobs_per_s"]),
        "p50_ratio_on_off": ratio(on["result_p50_ms"], off["result_p50_ms"]),
        "p99_ratio_on_off": ratio(on["result_p99_ms"], off["result_p99_ms"]),
        "runs": runs,
    }


def _medians(figures: list[dict[str, Any]]) -> dict[str, Any]:
    def median(values: list[float]) -> float:
        return round(statistics.median(values), 2)

    return {
        "result_jobs_per_s": median([f["result_jobs_per_s"] for f in figures]),
        "jobs_per_s": median([f["jobs_per_s"] for f in figures]),
        "result_p50_ms": median([f["result_latency_ms"]["p50"] for f in figures]),
        "result_p99_ms": median([f["result_latency_ms"]["p99"] for f in figures]),
        "p50_ms": median([f["latency_ms"]["p50"] for f in figures]),
        "p99_ms": median([f["latency_ms"]["p99"] for f in figures]),
        "job_lines": [f["job_lines"] for f in figures],
        "jobs_sent": [f["latency_jobs"] + f["jobs"] for f in figures],
    }


class TimedJobLog:
    """The real logging adapter, adding up the time spent inside it (``seconds``)."""

    enabled = True

    def __init__(self, inner: LoggingJobLog) -> None:
        self.inner = inner
        self.seconds = 0.0
        self.lines = 0

    def finished(self, line: JobLine) -> None:
        started = time.perf_counter()
        try:
            self.inner.finished(line)
        finally:
            self.seconds += time.perf_counter() - started
            self.lines += 1


def json_file_logger(path: Path) -> logging.Logger:
    """A logger writing JSON lines to ``path``, as a worker with
    ``PYNOMALY_LOG_FORMAT=json`` does (the worker's formatter and filter)."""
    logger = logging.getLogger(f"{JOB_LOGGER}.bench")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.StreamHandler(path.open("a", encoding="utf-8"))
    handler.setFormatter(JsonFormatter())
    handler.addFilter(MaskSecrets())
    logger.handlers[:] = [handler]
    return logger


def line_cost(
    stack: Stack,
    rows: Sequence[list[float]],
    *,
    batch: int = 64,
    batches: int = 40,
    repeats: int = 5,
) -> dict[str, Any]:
    """What the line adds to the small-job path, measured in one process (as
    ``small_jobs.profiling_cost`` measures drift profiling): ``batches`` micro-batches of
    ``batch`` one-record jobs through the workers' own batch service (score, settle in
    PostgreSQL), with the line written as JSON to a file and without it, alternated batch
    by batch, ``repeats`` rounds after an untimed one, best round of each. ``share`` is
    the time inside the job log over the run without it; ``difference`` = on / off - 1
    (the noise of the batch path, a few percent, is larger than the line)."""
    path = stack.folder / "logs" / "job-line-cost.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    timed = TimedJobLog(LoggingJobLog(json_file_logger(path)))
    on = replace(stack.adapters, job_log=timed)
    off = replace(stack.adapters, job_log=NullJobLog())
    run = uuid.uuid4().hex[:6]
    best = {True: float("inf"), False: float("inf")}
    inside = float("inf")

    def messages(tag: str, b: int) -> list[DetectMessage]:
        return [
            DetectMessage(
                task_id=f"{tag}-{i}",
                kwargs=detection_kwargs(
                    model=IFOREST_MODEL, records=[rows[(b * batch + i) % len(rows)]],
                    job_id=f"{tag}-{i}",
                ),
                queue_wait_s=0.001,
            )
            for i in range(batch)
        ]  # fmt: skip

    detect_batch(off, messages(f"line-{run}-warm", 0))
    for attempt in range(-1, repeats):  # round -1: untimed, both variants' first use
        spent = {True: 0.0, False: 0.0}
        timed.seconds = 0.0
        for b in range(batches):
            for logging_on in (False, True) if (attempt + b) % 2 else (True, False):
                jobs = messages(f"line-{run}-{attempt}-{logging_on:d}-{b}", b)
                started = time.perf_counter()
                detect_batch(on if logging_on else off, jobs)
                spent[logging_on] += time.perf_counter() - started
        if attempt >= 0:
            best = {key: min(best[key], spent[key]) for key in best}
            inside = min(inside, timed.seconds)
    return {
        "jobs": batch * batches,
        "off_s": round(best[False], 4),
        "on_s": round(best[True], 4),
        "inside_s": round(inside, 4),
        "us_per_line": round(inside / (batch * batches) * 1e6, 1),
        "share": round(inside / best[False], 4),
        "difference": round(best[True] / best[False] - 1.0, 3),
        "lines_written": timed.lines,
        "repeats": repeats,
    }
