"""Scoring shared by every detection path: cache-aware scores, and a chunk's anomalies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import numpy as np

from pynomaly_workers.domain.explain import explanations
from pynomaly_workers.domain.jobs import ChunkTally, top_anomalies
from pynomaly_workers.domain.models import ModelVersion
from pynomaly_workers.domain.ports import AnomalyBatch, ChunkResult, LoadedModel, SourceChunk
from pynomaly_workers.domain.records import Matrix
from pynomaly_workers.domain.scoring import Scores, anomaly_mask, severity
from pynomaly_workers.domain.suppression import SuppressionRule, matching_rules, model_features
from pynomaly_workers.services.context import Adapters


def score_rows(
    adapters: Adapters, loaded: LoadedModel, matrix: Matrix, *, observe: bool = True
) -> tuple[Scores, np.ndarray[Any, np.dtype[np.bool_]]]:
    """Scores for the rows and which came from the prediction cache; the rows are also
    counted for drift monitoring, unless ``observe`` is false (a labelled evaluation
    set is not the traffic the model serves).

    The cache is skipped for a model whose scoring costs less per row than
    ``cache_min_row_cost_us`` (a cache round trip would cost more than it saves).
    """
    version = loaded.version
    adapters.telemetry.model_used(name=version.name, contamination=version.stats.contamination)
    scores, hits = _scores(adapters, loaded, matrix)
    if adapters.drift is not None and observe:
        adapters.drift.observe(version, matrix, scores, now=adapters.clock.now())
    return scores, hits


def _scores(
    adapters: Adapters, loaded: LoadedModel, matrix: Matrix
) -> tuple[Scores, np.ndarray[Any, np.dtype[np.bool_]]]:
    cache = adapters.cache
    cost = loaded.row_cost_us()
    worthwhile = cost is None or cost >= adapters.settings.cache_min_row_cost_us
    if cache is None or not worthwhile:
        return _infer(adapters, loaded, matrix), np.zeros(len(matrix), bool)
    key = loaded.version.content_hash
    scores = cache.get_many(key, matrix)
    hits = ~np.isnan(scores)
    missing = np.flatnonzero(~hits)
    adapters.telemetry.cache_lookup(hits=int(hits.sum()), misses=int(missing.size))
    if missing.size:
        fresh = _infer(adapters, loaded, matrix[missing])
        scores[missing] = fresh
        cache.set_many(key, matrix[missing], fresh)
    return scores, hits


def _infer(adapters: Adapters, loaded: LoadedModel, matrix: Matrix) -> Scores:
    """The scorer's scores for ``matrix``, timed by backend."""
    scorer = loaded.scorer_for(len(matrix))
    started = adapters.clock.monotonic()
    scores = scorer.score(matrix)
    adapters.telemetry.inference(
        backend=scorer.backend, seconds=adapters.clock.monotonic() - started
    )
    return scores


@dataclass(frozen=True, slots=True)
class Explaining:
    """How to explain a chunk's anomalies: the loaded model, and how many features."""

    model: LoadedModel
    top_features: int

    @classmethod
    def of(cls, adapters: Adapters, model: LoadedModel) -> Explaining:
        return cls(model, adapters.settings.explain_top_features)


def explain_anomalies(
    explaining: Explaining | None, chunk: SourceChunk, mask: np.ndarray[Any, np.dtype[np.bool_]]
) -> dict[int, dict[str, Any]]:
    """The explanation of each flagged row of the chunk, by row; only flagged rows are
    explained, so a chunk's cost grows with its anomalies, not its size."""
    rows = np.flatnonzero(mask)
    if explaining is None or explaining.top_features == 0 or rows.size == 0:
        return {}
    attribution = explaining.model.explain(chunk.matrix[rows])
    if attribution is None:
        return {}
    found = explanations(attribution, feature_names=chunk.features, top_k=explaining.top_features)
    return dict(zip(rows.tolist(), found, strict=True))


def chunk_result(
    job_id: str,
    version: ModelVersion,
    *,
    chunk: SourceChunk,
    scores: Scores,
    hits: int,
    top_k: int,
    now: datetime,
    chunk_index: int = 0,
    explaining: Explaining | None = None,
    rules: Sequence[SuppressionRule] = (),
) -> ChunkResult:
    """Threshold, severity, explanations, top anomalies and the anomaly rows of one
    scored chunk; each anomaly a live rule of ``rules`` matches at ``now`` is marked
    with it."""
    mask = anomaly_mask(scores, threshold=version.threshold)
    severities = severity(scores, version.stats)
    explained = explain_anomalies(explaining, chunk, mask)
    marks = suppression_marks(rules, version=version, chunk=chunk, mask=mask, now=now)
    top = top_anomalies(
        scores,
        severities,
        mask,
        k=top_k,
        offset=chunk.offset,
        record_ids=chunk.record_ids,
        explanations=explained,
        suppressed=marks,
    )
    batch = anomaly_batch(
        job_id, version.id, chunk, scores=scores, severities=severities, mask=mask, now=now
    )
    rows = np.flatnonzero(mask).tolist()
    if explained:
        batch = replace(batch, explanation=[explained.get(i) for i in rows])
    if marks:
        batch = replace(batch, suppressed_by=[marks.get(i) for i in rows])
    return ChunkResult(
        chunk_index=chunk_index,
        tally=ChunkTally(
            n_records=len(chunk.matrix),
            n_anomalies=int(mask.sum()),
            cache_hits=hits,
            top=top,
            n_suppressed=len(marks),
        ),
        anomalies=batch,
    )


def suppression_marks(
    rules: Sequence[SuppressionRule],
    *,
    version: ModelVersion,
    chunk: SourceChunk,
    mask: np.ndarray[Any, np.dtype[np.bool_]],
    now: datetime,
) -> dict[int, int]:
    """The rule id of each suppressed anomaly of the chunk, by row (empty when no rule
    is live or none matches: the usual cases, no rule or no anomaly, cost one check)."""
    if not rules or not mask.any():
        return {}
    rows = np.flatnonzero(mask)
    entities = chunk.entities
    found = matching_rules(
        rules,
        model_name=version.name,
        at=now,
        rows=chunk.matrix[rows],
        entities=[entities[i] for i in rows.tolist()] if entities is not None else None,
        features=model_features(
            version.profile.names if version.profile is not None else None, version.n_features
        ),
    )
    if found is None:
        return {}
    return {row: rule for row, rule in zip(rows.tolist(), found, strict=True) if rule is not None}


def live_rules(adapters: Adapters, version: ModelVersion) -> Sequence[SuppressionRule]:
    """The suppression rules of the version's model as this process last read them."""
    suppressions = adapters.suppressions
    if suppressions is None:
        return ()
    return suppressions.rules_of(version.name, now=adapters.clock.now())


def anomaly_batch(
    job_id: str,
    model_id: int,
    chunk: SourceChunk,
    *,
    scores: Scores,
    severities: Scores,
    mask: np.ndarray[Any, np.dtype[np.bool_]],
    now: datetime,
) -> AnomalyBatch:
    """The rows of a chunk above threshold, in columnar form."""
    rows = np.flatnonzero(mask)
    positions = rows.tolist()
    ids = chunk.record_ids
    times = chunk.timestamps
    entities = chunk.entities
    return AnomalyBatch(
        job_id=job_id,
        model_id=model_id,
        record_index=(rows + chunk.offset).astype(np.int64),
        score=scores[rows],
        severity=severities[rows],
        timestamp=[times[i] for i in positions] if times is not None else [now] * len(rows),
        record_id=[ids[i] for i in positions] if ids is not None else [None] * len(rows),
        entity=[entities[i] for i in positions] if entities is not None else None,
    )
