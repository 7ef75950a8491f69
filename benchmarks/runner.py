"""One benchmark run: every measurement in order, on the same machine, in one process.

Each section is measured independently; a section that fails records its error and the
run goes on, so one broken path does not hide the others' figures.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from celery import Celery

from benchmarks import (
    broker_fsync,
    bulk,
    bulk_s3,
    cache,
    evaluate,
    incidents,
    inference,
    job_log,
    many_models,
    mixed,
    models,
    naive_runner,
    small_jobs,
    suppression,
)
from benchmarks.config import IFOREST_MODEL, LOF_MODEL, RESULTS, Endpoints, Sizes
from benchmarks.inputs import (
    Inputs,
    ManyModelsInputs,
    MixedInputs,
    prepare_inputs,
    prepare_many_models_inputs,
    prepare_mixed_inputs,
)
from benchmarks.jobs import publisher, result_client
from benchmarks.meta import describe_run, load_average
from benchmarks.progress import say
from benchmarks.stack import Stack, open_stack, running_worker
from benchmarks.stats import rate, ratio
from benchmarks.targets import check_targets

ALGORITHMS = {IFOREST_MODEL: "iforest", LOF_MODEL: "lof"}
BULK_REPEATS = 2
"""Further (bulk job, limit) pairs after the first, for the best-of ratio."""
TRAINING_KEYS = (
    "model_version",
    "algorithm",
    "onnx",
    "parity_max_error",
    "n_training_rows",
    "threshold",
    "train_s",
)


@dataclass(slots=True)
class Run:
    """The results as they accumulate, and the errors of sections that failed."""

    sizes: Sizes
    results: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Time a section; record its error instead of aborting the run."""
        say(f"{name} ...")
        started = time.perf_counter()
        try:
            yield
        except Exception as exc:
            self.errors[name] = f"{type(exc).__name__}: {exc}"[:2000]
            say(f"{name} FAILED: {self.errors[name]}\n{traceback.format_exc()}")
        else:
            say(f"{name} done in {time.perf_counter() - started:.1f}s")


def run_benchmarks(
    sizes: Sizes, endpoints: Endpoints, *, only: str | None = None
) -> dict[str, Any]:
    """Every measurement (or only the section ``only``); the JSON-ready result."""
    run = Run(sizes)
    load_at_start = load_average()
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    with run.section("data"):
        needs_inputs = (None, "job_log", "incidents", "suppression")
        inputs = prepare_inputs(sizes) if only in needs_inputs else None
        mixed_inputs = prepare_mixed_inputs(sizes) if only in (None, "mixed") else None
        many_inputs = prepare_many_models_inputs(sizes) if only in (None, "many_models") else None
    if "data" not in run.errors:
        folder = RESULTS / "runs" / started_at.strftime("%Y%m%dT%H%M%SZ")
        with open_stack(endpoints, sizes, folder=folder) as stack:
            say(f"schema {stack.schema}; logs in {folder / 'logs'}")
            run.results["settings"] = worker_settings(stack)
            if inputs is not None and only is None:
                run_on_stack(run, stack, inputs)
            if inputs is not None and only == "job_log":
                with run.section("job_log"):
                    run.results["job_log"] = job_log.run_job_log(stack, inputs)
            if inputs is not None and only == "suppression":
                with run.section("suppression"):
                    run.results["suppression"] = suppression.run_suppression(stack, inputs)
            if inputs is not None and only in (None, "incidents"):
                with run.section("incidents"):
                    run.results["incidents"] = incidents.run_incidents(stack, inputs)
            if only in (None, "evaluate"):
                with run.section("evaluate"):
                    run.results["evaluate"] = evaluate.run_evaluate(stack)
            run_own_worker_sections(run, stack, mixed_inputs, many_inputs)
        if only in (None, "broker_fsync"):
            with run.section("broker_fsync"):
                messages = 1000 if sizes.quick else 3000
                run.results["broker_fsync"] = broker_fsync.run_broker_fsync(
                    messages=messages, rounds=2 if sizes.quick else 3
                )
    meta = describe_run(
        sizes,
        started_at=started_at,
        seconds=time.perf_counter() - started,
        load_at_start=load_at_start,
    )
    return assemble(run, meta=meta)


def run_own_worker_sections(
    run: Run,
    stack: Stack,
    mixed_inputs: MixedInputs | None,
    many_inputs: ManyModelsInputs | None,
) -> None:
    """The sections that start a worker of their own (those given inputs)."""
    if mixed_inputs is not None:
        with run.section("mixed"):
            run.results["mixed"] = mixed.run_mixed(stack, mixed_inputs)
    if many_inputs is not None:
        with run.section("many_models"):
            run.results["many_models"] = many_models.run_many_models(stack, many_inputs)


def worker_settings(stack: Stack) -> dict[str, Any]:
    """The workers' knobs for this run (service addresses and secrets left out)."""
    hidden = ("url", "backend", "auth", "home", "port")  # each worker gets a free port
    values = stack.settings.model_dump(mode="json")
    return {key: value for key, value in values.items() if not key.endswith(hidden)}


def run_on_stack(run: Run, stack: Stack, inputs: Inputs) -> None:
    """The sections that need the adapters. The baseline's worker boots beside the
    project's (it idles on its own queue until its turn), to save a start-up."""
    config = naive_runner.naive_config(stack)
    with naive_runner.naive_worker(stack, config), bulk_s3.object_store() as endpoint:
        s3_env = bulk_s3.worker_env(endpoint)
        with running_worker(stack, cache=True, name="worker-cache-on", extra_env=s3_env) as worker:
            with run.section("training"):
                run.results["training"] = train_models(stack, inputs)
            with run.section("inference"):
                run.results["inference"] = measure_inference(run, stack)
            if "training" in run.errors:
                return
            with publisher(stack.settings) as app:
                cache_on_sections(run, stack, app, inputs, worker_pid=worker.process.pid)
                with run.section("bulk_s3"):
                    run.results["bulk_s3"] = bulk_s3.run_bulk_s3(
                        stack,
                        app,
                        endpoint=endpoint,
                        model=IFOREST_MODEL,
                        source=inputs.bulk_csv,
                        rows=run.sizes.bulk_rows,
                        worker_pid=worker.process.pid,
                    )
        with run.section("naive"):
            run.results["naive"] = naive_runner.run_naive(
                stack,
                config,
                model=IFOREST_MODEL,
                records=inputs.naive,
                warmup=inputs.naive_warmup,
            )
    with run.section("cache_off"):
        run.results["cache_off_runs"] = cache_off_runs(run, stack, inputs)


def train_models(stack: Stack, inputs: Inputs) -> dict[str, Any]:
    """IsolationForest and LOF through ``pynomaly.train``, then warmed up in every process."""
    with result_client(stack.settings) as app:
        trained = models.train(app, algorithms=ALGORITHMS, source=inputs.training_csv)
    summaries = {name: {k: s.get(k) for k in TRAINING_KEYS} for name, s in trained.items()}
    with publisher(stack.settings) as app:
        done = models.warm_up(stack, app, models=list(ALGORITHMS), records=inputs.warmup, tag="on")
    return {**summaries, "warmup_jobs_finished": f"{done}/{len(ALGORITHMS) * len(inputs.warmup)}"}


def measure_inference(run: Run, stack: Stack) -> dict[str, Any]:
    """Scoring speed of the registered IsolationForest (or one fitted here if training
    through the workers failed)."""
    if "training" in run.errors:
        backends = inference.backends_in_process(run.sizes)
    else:
        backends = inference.backends_from_store(stack.adapters.store, IFOREST_MODEL)
    return inference.measure_inference(run.sizes, backends)


def cache_on_sections(
    run: Run, stack: Stack, app: Celery, inputs: Inputs, *, worker_pid: int
) -> None:
    """Everything measured on the worker started with the prediction cache on."""
    # Each process reads a file before anything is timed, as a worker in service has:
    # the first read in a process pays for pyarrow's first use.
    cache.warm_sources(stack, app, model=IFOREST_MODEL, source=inputs.cache_csv)
    with run.section("bulk"):
        run.results["bulk"] = bulk.run_bulk(
            stack,
            app,
            model=IFOREST_MODEL,
            source=inputs.bulk_csv,
            rows=run.sizes.bulk_rows,
            worker_pid=worker_pid,
        )
    with run.section("limit"):
        backend = run.results.get("inference", {}).get("best_backend", "sklearn")
        run.results["limit"] = bulk.run_limit(
            stack, model=IFOREST_MODEL, source=inputs.bulk_csv, backend=backend
        )
    with run.section("bulk_repeats"):
        run.results["bulk_repeats"] = bulk.alternate(
            stack,
            app,
            model=IFOREST_MODEL,
            source=inputs.bulk_csv,
            rows=run.sizes.bulk_rows,
            backend=backend,
            worker_pid=worker_pid,
            repeats=BULK_REPEATS,
        )
    with run.section("explain"):
        run.results["explain"] = bulk.explain_overhead(
            stack, model=IFOREST_MODEL, source=inputs.bulk_csv, backend=backend
        )
    with run.section("small_jobs"):
        run.results["small_jobs"] = small_jobs.run_small_jobs(stack, app, inputs.small_jobs)
    with run.section("profiling"):
        run.results["profiling"] = small_jobs.profiling_cost(stack, inputs.small_jobs.burst)
    with run.section("cache"):
        run.results["cache"] = cache.cold_and_warm(
            stack, app, model=LOF_MODEL, source=inputs.cache_csv
        )
    with run.section("cache_on_runs"):
        run.results["cache_on_runs"] = cache_on_runs(stack, app, inputs)
    with run.section("cache_cost"):
        run.results["cache_cost"] = cache.fast_model_cost(
            stack, model=IFOREST_MODEL, source=inputs.cache_csv
        )


def cache_on_runs(stack: Stack, app: Celery, inputs: Inputs) -> dict[str, list[float]]:
    """The fast model's job with the cache on: every row a miss, then every row a hit."""
    runs, source = stack.sizes.overhead_runs, inputs.cache_csv
    cache.warm_sources(stack, app, model=IFOREST_MODEL, source=source)
    return {
        "miss": cache.repeated(
            stack, app, model=IFOREST_MODEL, source=source, runs=runs, flush=True
        ),
        "hit": cache.repeated(
            stack, app, model=IFOREST_MODEL, source=source, runs=runs, flush=False
        ),
    }


def cache_off_runs(run: Run, stack: Stack, inputs: Inputs) -> list[float]:
    """The same job on a worker started with ``PYNOMALY_CACHE_URL`` empty. That worker
    also runs without explanations and drift profiling, for the bulk job's
    ``explain_overhead`` and the small jobs' ``profiling_overhead`` (the model of both,
    IsolationForest, skips the cache either way)."""
    with (
        running_worker(
            stack, cache=False, name="worker-cache-off", extra_env=NO_EXPLANATIONS
        ) as worker,
        publisher(stack.settings) as app,
    ):
        models.warm_up(stack, app, models=[IFOREST_MODEL], records=inputs.warmup, tag="off")
        cache.warm_sources(stack, app, model=IFOREST_MODEL, source=inputs.cache_csv)
        with run.section("bulk_explain_off"):
            run.results["bulk_explain_off"] = bulk.run_bulk(
                stack,
                app,
                model=IFOREST_MODEL,
                source=inputs.bulk_csv,
                rows=run.sizes.bulk_rows,
                worker_pid=worker.process.pid,
            )["job"]
        with run.section("small_jobs_profiling_off"):
            run.results["small_jobs_profiling_off"] = small_jobs.run_detect_only(
                stack, app, inputs.small_jobs
            )
        cache.warm_sources(stack, app, model=IFOREST_MODEL, source=inputs.cache_csv)
        return cache.repeated(
            stack,
            app,
            model=IFOREST_MODEL,
            source=inputs.cache_csv,
            runs=stack.sizes.overhead_runs,
            flush=False,
        )


def assemble(run: Run, *, meta: dict[str, Any]) -> dict[str, Any]:
    """The one JSON object: sections, ratios between them, targets, metadata."""
    results = run.results
    out: dict[str, Any] = {
        "inference": results.get("inference"),
        "bulk": bulk_section(results),
        "bulk_s3": bulk_s3_section(results),
        "naive": results.get("naive"),
        "small_jobs": small_jobs_section(results),
        "cache": cache_section(results),
        "memory": results.get("bulk", {}).get("memory"),
        "training": results.get("training"),
        "mixed": results.get("mixed"),
        "many_models": results.get("many_models"),
        "job_log": results.get("job_log"),
        "suppression": results.get("suppression"),
        "incidents": results.get("incidents"),
        "evaluate": results.get("evaluate"),
    }
    out["targets"] = check_targets(out, quick=run.sizes.quick)
    out["errors"] = run.errors
    out["meta"] = {
        **meta,
        "worker_settings": results.get("settings"),
        "worker_pool_size": (results.get("mixed") or {}).get("worker_pool_size"),
    }
    return out


NO_EXPLANATIONS = {"PYNOMALY_EXPLAIN_TOP_FEATURES": "0", "PYNOMALY_DRIFT_PROFILING": "false"}


def bulk_section(results: dict[str, Any]) -> dict[str, Any] | None:
    """The bulk job beside its one-process limit and the naive baseline."""
    job = results.get("bulk", {}).get("job")
    if job is None:
        return None
    limit = results.get("limit") or {}
    naive = results.get("naive") or {}
    explain_off = results.get("bulk_explain_off") or {}
    repeats = results.get("bulk_repeats") or {"job_s": [], "limit_s": []}
    jobs = [job["seconds"], *repeats["job_s"]]
    limits = [s for s in (limit.get("seconds"), *repeats["limit_s"]) if s]
    best_limit = min(limits) if limits else None
    return {
        **job,
        "limit_records_per_s": limit.get("records_per_s"),
        # The best of the alternated runs of each (see bulk.alternate); the first pair's
        # ratio beside it.
        "ratio_to_limit": ratio(best_limit, min(jobs)),
        "ratio_to_limit_first": ratio(job["records_per_s"], limit.get("records_per_s")),
        "best_records_per_s": rate(job["records"], min(jobs)),
        "best_limit_records_per_s": rate(job["records"], best_limit) if best_limit else None,
        "repeats": {"job_s": jobs, "limit_s": limits},
        "speedup_vs_naive": ratio(job["records_per_s"], naive.get("records_per_s"), digits=1),
        "explain_off_records_per_s": explain_off.get("records_per_s"),
        "explain_overhead": (results.get("explain") or {}).get("overhead"),
        "explain_overhead_end_to_end": overhead(
            job["records_per_s"], explain_off.get("records_per_s")
        ),
        "explain": results.get("explain"),
        "limit": limit or None,
    }


def small_jobs_section(results: dict[str, Any]) -> dict[str, Any] | None:
    """The small-job figures, with the same detection figures measured on a worker
    without drift profiling (and explanations) beside them."""
    section = results.get("small_jobs")
    if section is None:
        return None
    off = results.get("small_jobs_profiling_off") or {}
    return {
        **section,
        "profiling_off_jobs_per_s": off.get("jobs_per_s"),
        "profiling_off_latency_ms": off.get("latency_ms"),
        "profiling_overhead": (results.get("profiling") or {}).get("overhead"),
        "profiling_overhead_end_to_end": overhead(section.get("jobs_per_s"), off.get("jobs_per_s")),
        "profiling": results.get("profiling"),
    }


def overhead(with_it: float | None, without: float | None) -> float | None:
    """How much slower (a fraction) a rate is with a feature on than with it off."""
    if not with_it or not without:
        return None
    return round(without / with_it - 1.0, 3)


def bulk_s3_section(results: dict[str, Any]) -> dict[str, Any] | None:
    """The bulk job from object storage, beside the same job from a local file."""
    job = results.get("bulk_s3")
    local = results.get("bulk", {}).get("job") or {}
    if job is None:
        return None
    return {**job, "ratio_to_local": ratio(job["records_per_s"], local.get("records_per_s"))}


def cache_section(results: dict[str, Any]) -> dict[str, Any] | None:
    """Cold/warm on the slow model plus the fast model's overhead."""
    section = results.get("cache")
    on, off = results.get("cache_on_runs"), results.get("cache_off_runs")
    if section is None and on is None:
        return None
    end_to_end = cache.overhead(on["miss"], on["hit"], off) if on and off else {}
    cost = results.get("cache_cost") or {}
    controlled = {}
    if "overhead" in cost:
        controlled = {
            "fast_model_overhead": cost["overhead"],
            "fast_model_overhead_warm": cost["overhead_warm"],
            "fast_model_cost": cost,
        }
    renamed = {
        "fast_model_overhead_end_to_end": end_to_end.get("fast_model_overhead"),
        "fast_model_overhead_warm_end_to_end": end_to_end.get("fast_model_overhead_warm"),
        "fast_model_runs_s": end_to_end.get("fast_model_runs_s"),
    }
    return {**(section or {}), **renamed, **controlled}
