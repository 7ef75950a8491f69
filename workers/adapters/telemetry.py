"""Telemetry reported to Prometheus (``pynomaly_workers.metrics``)."""

from __future__ import annotations

from pynomaly_workers.metrics import get_metrics, model_label


class PrometheusTelemetry:
    """Inference time by backend and prediction-cache lookups, as Prometheus metrics."""

    def inference(self, *, backend: str, seconds: float) -> None:
        get_metrics().inference_seconds.labels(backend=backend).observe(seconds)

    def cache_lookup(self, *, hits: int, misses: int) -> None:
        metrics = get_metrics()
        metrics.cache_hits.inc(hits)
        metrics.cache_misses.inc(misses)

    def model_used(self, *, name: str, contamination: float) -> None:
        get_metrics().model_contamination.labels(model=model_label(name)).set(contamination)
