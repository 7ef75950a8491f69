"""Telemetry reported to Prometheus (``pynomaly_workers.metrics``)."""

from __future__ import annotations

from pynomaly_workers.domain.thresholds import AlertPrecision
from pynomaly_workers.metrics import ALERT_FLAGS, OTHER_MODEL, get_metrics, model_label


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

    def alert_precision(self, precision: AlertPrecision) -> None:
        """Both ``flags`` series of the version: labelled counts always, the share only
        where something is labelled (a share of nothing is not 0)."""
        label = model_label(precision.model)
        if label == OTHER_MODEL:  # versions of many names would overwrite one series
            return
        metrics, version = get_metrics(), str(precision.version)
        stored, shadow = ALERT_FLAGS
        for flags, labelled, share in (
            (stored, precision.labelled, precision.precision),
            (shadow, precision.shadow_labelled, precision.shadow_precision),
        ):
            metrics.alert_labelled.labels(model=label, version=version, flags=flags).set(labelled)
            if share is not None:
                metrics.alert_precision.labels(model=label, version=version, flags=flags).set(share)
