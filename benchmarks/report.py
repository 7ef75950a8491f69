"""The human summary (stderr) and the JSON result (stdout, last line)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from benchmarks.targets import lookup

# (label, path, unit)
ROWS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("inference sklearn", ("inference", "sklearn_rows_per_s"), "rows/s"),
    ("inference onnx", ("inference", "onnx_rows_per_s"), "rows/s"),
    ("inference forest walk", ("inference", "forest_rows_per_s"), "rows/s"),
    ("single row sklearn", ("inference", "single_row_us", "sklearn"), "us"),
    ("single row onnx", ("inference", "single_row_us", "onnx"), "us"),
    ("single row forest walk", ("inference", "single_row_us", "forest"), "us"),
    ("bulk job", ("bulk", "records_per_s"), "records/s"),
    ("bulk one-process limit", ("bulk", "limit_records_per_s"), "records/s"),
    ("bulk / limit", ("bulk", "ratio_to_limit"), "x"),
    ("bulk, explanations off", ("bulk", "explain_off_records_per_s"), "records/s"),
    ("explanation overhead", ("bulk", "explain_overhead"), "fraction"),
    ("bulk from S3 (moto)", ("bulk_s3", "records_per_s"), "records/s"),
    ("bulk S3 / local file", ("bulk_s3", "ratio_to_local"), "x"),
    ("naive per-record", ("naive", "records_per_s"), "records/s"),
    ("bulk / naive", ("bulk", "speedup_vs_naive"), "x"),
    ("small jobs p50", ("small_jobs", "latency_ms", "p50"), "ms"),
    ("small jobs p95", ("small_jobs", "latency_ms", "p95"), "ms"),
    ("small jobs p99", ("small_jobs", "latency_ms", "p99"), "ms"),
    ("small jobs result p50", ("small_jobs", "result_latency_ms", "p50"), "ms"),
    ("small jobs result p99", ("small_jobs", "result_latency_ms", "p99"), "ms"),
    ("celery no-op p50", ("small_jobs", "noop_latency_ms", "p50"), "ms"),
    ("celery no-op p99", ("small_jobs", "noop_latency_ms", "p99"), "ms"),
    ("small jobs throughput", ("small_jobs", "jobs_per_s"), "jobs/s"),
    ("small jobs to results", ("small_jobs", "result_jobs_per_s"), "jobs/s"),
    ("celery no-op throughput", ("small_jobs", "celery_noop_jobs_per_s"), "jobs/s"),
    ("small jobs / no-op", ("small_jobs", "ratio_to_noop"), "x"),
    ("small jobs, profiling off", ("small_jobs", "profiling_off_jobs_per_s"), "jobs/s"),
    ("drift profiling overhead", ("small_jobs", "profiling_overhead"), "fraction"),
    ("cache cold (slow model)", ("cache", "cold_s"), "s"),
    ("cache warm (slow model)", ("cache", "warm_s"), "s"),
    ("cache speedup", ("cache", "speedup"), "x"),
    ("cache overhead, fast model", ("cache", "fast_model_overhead"), "fraction"),
    ("worker peak RSS", ("memory", "worker_peak_rss_mb"), "MB"),
    ("mixed: small p50", ("mixed", "small_latency_ms", "p50"), "ms"),
    ("mixed: small p99", ("mixed", "small_latency_ms", "p99"), "ms"),
    ("mixed: small alone p99", ("mixed", "small_alone_latency_ms", "p99"), "ms"),
    ("mixed: bulk slowdown", ("mixed", "bulk_slowdown"), "x"),
    ("mixed: late small / alone", ("mixed", "late_small_bulk_ratio"), "x"),
    ("models: trained, one a msg", ("many_models", "train_models_per_min"), "models/min"),
    ("models: trained, batched", ("many_models", "train_many_models_per_min"), "models/min"),
    ("models: served", ("many_models", "models_served"), "models"),
    ("models: Zipf p50", ("many_models", "latency_ms", "p50"), "ms"),
    ("models: Zipf p99", ("many_models", "latency_ms", "p99"), "ms"),
    ("models: one model p99", ("many_models", "one_model_latency_ms", "p99"), "ms"),
    ("models: cold load p95", ("many_models", "cold_load_ms", "p95"), "ms"),
    ("models: worker PSS", ("many_models", "worker_pss_mb"), "MB"),
)


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def summary_table(result: dict[str, Any]) -> str:
    """A fixed-width table of the headline figures and the targets they meet or miss."""
    lines = [f"{'measurement':<28} {'value':>14}  unit"]
    lines += [
        f"{label:<28} {_number(lookup(result, path)):>14}  {unit}" for label, path, unit in ROWS
    ]
    lines.append("")
    for name, check in result.get("targets", {}).items():
        if isinstance(check, dict):
            verdict = {True: "met", False: "MISSED", None: "not measured"}[check["met"]]
            lines.append(f"target {name:<30} {check['target']:<10} {verdict}")
    for name, error in result.get("errors", {}).items():
        lines.append(f"ERROR in {name}: {error.splitlines()[0]}")
    return "\n".join(lines)


def emit(result: dict[str, Any], *, as_json: bool, output: Path | None, out: TextIO) -> None:
    """Summary to stderr; the JSON to ``output`` if given, and to stdout."""
    print(summary_table(result), file=sys.stderr, flush=True)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if as_json:
        print(json.dumps(result, separators=(",", ":"), default=str), file=out, flush=True)
    else:
        print(json.dumps(result, indent=2, default=str), file=out, flush=True)
