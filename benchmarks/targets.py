"""The issue's targets for this 2-core machine, checked against a run's figures.

The targets are the issue's (they are goals, not measurements); every value compared
with them comes from the same run.
"""

from __future__ import annotations

from typing import Any

# (name, path into the result, comparison, target)
TARGETS: tuple[tuple[str, tuple[str, ...], str, float], ...] = (
    ("bulk_records_per_s", ("bulk", "records_per_s"), ">=", 300_000),
    ("bulk_ratio_to_limit", ("bulk", "ratio_to_limit"), ">=", 1.6),
    ("bulk_speedup_vs_naive", ("bulk", "speedup_vs_naive"), ">=", 500),
    ("bulk_explain_overhead", ("bulk", "explain_overhead"), "<=", 0.10),
    ("small_jobs_profiling_overhead", ("small_jobs", "profiling_overhead"), "<=", 0.05),
    ("small_jobs_p50_ms", ("small_jobs", "latency_ms", "p50"), "<=", 5),
    ("small_jobs_p99_ms", ("small_jobs", "latency_ms", "p99"), "<=", 25),
    ("small_jobs_ratio_to_noop", ("small_jobs", "ratio_to_noop"), ">=", 1.5),
    ("small_jobs_result_jobs_per_s", ("small_jobs", "result_jobs_per_s"), ">=", 1_000),
    ("small_jobs_result_p50_ms", ("small_jobs", "result_latency_ms", "p50"), "<=", 5),
    ("small_jobs_result_p99_ms", ("small_jobs", "result_latency_ms", "p99"), "<=", 25),
    ("cache_speedup", ("cache", "speedup"), ">=", 5),
    ("cache_fast_model_overhead", ("cache", "fast_model_overhead"), "<=", 0.10),
    ("memory_worker_peak_pss_mb", ("memory", "worker_peak_pss_mb"), "<=", 500),
    ("memory_worker_idle_pss_mb", ("memory", "worker_pss_before_job_mb"), "<=", 300),
    ("mixed_small_p50_ms", ("mixed", "small_latency_ms", "p50"), "<=", 10),
    ("mixed_small_p99_ms", ("mixed", "small_latency_ms", "p99"), "<=", 100),
    ("mixed_bulk_slowdown", ("mixed", "bulk_slowdown"), "<=", 1.25),
    ("mixed_late_small_bulk_ratio", ("mixed", "late_small_bulk_ratio"), "<=", 2),
    ("many_models_train_per_min", ("many_models", "train_models_per_min"), ">=", 100),
    ("many_models_train_many_per_min", ("many_models", "train_many_models_per_min"), ">=", 100),
    ("many_models_p50_ms", ("many_models", "latency_ms", "p50"), "<=", 10),
    ("many_models_p99_ms", ("many_models", "latency_ms", "p99"), "<=", 50),
    ("many_models_worker_pss_mb", ("many_models", "worker_pss_mb"), "<=", 600),
    ("many_models_cold_load_p95_ms", ("many_models", "cold_load_ms", "p95"), "<=", 50),
    # with three webhook subscriptions, incidents opening and notified while the jobs run
    ("incidents_result_jobs_per_s", ("incidents", "result_jobs_per_s"), ">=", 1_000),
    ("incidents_bulk_records_per_s", ("incidents", "bulk_records_per_s"), ">=", 300_000),
    # evaluating labelled rows, beside the bulk detection rate measured in the same section
    ("evaluate_ratio_to_detect", ("evaluate", "ratio_to_detect"), ">=", 0.5),
)
COMPLETE: dict[str, tuple[str, ...]] = {
    "mixed": ("mixed", "all_done"),
    "many_models_train_per_min": ("many_models", "all_trained"),
    "many_models_train_many_per_min": ("many_models", "all_trained_many"),
    "many_models": ("many_models", "serving_complete"),
}
"""Targets met only if every job they count finished (the flag's path), by target name,
else by section: the many_models serving targets also need every model trained."""


def lookup(result: dict[str, Any], path: tuple[str, ...]) -> float | None:
    """The number at ``path``, or None if a section is missing."""
    node: Any = result
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return float(node) if isinstance(node, int | float) else None


def check_targets(result: dict[str, Any], *, quick: bool) -> dict[str, Any]:
    """Each target with the measured value and whether it is met (None if not measured)."""
    checks: dict[str, Any] = {}
    for name, path, comparison, target in TARGETS:
        value = lookup(result, path)
        met = (
            None if value is None else (value >= target if comparison == ">=" else value <= target)
        )
        checks[name] = {"value": value, "target": f"{comparison} {target:g}", "met": met}
        flag = COMPLETE.get(name) or COMPLETE.get(path[0])
        if flag is not None:
            checks[name] |= completion(result, flag, met=met)
    if quick:
        checks["note"] = (
            "quick run: the bulk and memory targets are stated for the 1M-row job, the mixed "
            "ones for 3 x 1M-row jobs, 50 jobs/s for 8 s, and 100k rows after 3M, the "
            "many_models ones for 1,000 models and 150 jobs/s for 12 s"
        )
    return checks


def completion(
    result: dict[str, Any], flag: tuple[str, ...], *, met: bool | None
) -> dict[str, Any]:
    """``every_job_done`` from the section, and ``met`` false if a job did not finish."""
    done = lookup(result, flag)
    if done is None:
        return {"every_job_done": None}
    return {"every_job_done": bool(done), "met": met and bool(done)}
