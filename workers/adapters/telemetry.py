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

    def drift_checked(self, *, name: str, drifted_features: int, drifted: bool) -> None:
        metrics, label = get_metrics(), model_label(name)
        metrics.model_drifted.labels(model=label).set(1.0 if drifted else 0.0)
        metrics.model_drifted_features.labels(model=label).set(drifted_features)

    def model_cache(self, *, hit: bool, load_seconds: float, evicted: int) -> None:
        metrics = get_metrics()
        if hit:
            metrics.model_cache_hits.inc()
            return
        metrics.model_cache_misses.inc()
        metrics.model_load_seconds.observe(load_seconds)
        if evicted:
            metrics.model_cache_evictions.inc(evicted)

    def model_cache_size(self, *, models: int, nbytes: int) -> None:
        metrics = get_metrics()
        metrics.model_cache_models.set(models)
        metrics.model_cache_bytes.set(nbytes)
