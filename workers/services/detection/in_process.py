"""Jobs scored chunk by chunk in the worker that received them: large inline payloads and
sources that fit in one chunk."""

from __future__ import annotations

from pynomaly_workers.domain.jobs import ChunkTally, DetectionRequest, JobSummary, summarize
from pynomaly_workers.domain.models import ModelVersion
from pynomaly_workers.domain.records import check_width
from pynomaly_workers.services.context import Adapters
from pynomaly_workers.services.detection.scoring import (
    Explaining,
    chunk_result,
    live_rules,
    score_rows,
)
from pynomaly_workers.services.detection.shadow import challenger_for, shadow_chunk
from pynomaly_workers.services.inputs import chunk_rows_for, input_label, iter_chunks


def run_in_process(
    adapters: Adapters, request: DetectionRequest, version: ModelVersion
) -> JobSummary:
    """Score a claimed job here, writing each chunk's anomalies as it goes, and complete
    it. Memory stays bounded by the chunk (see :func:`chunk_rows_for`)."""
    started = adapters.clock.monotonic()
    loaded = adapters.models.load(version)
    top_k = adapters.settings.top_anomalies
    now = adapters.clock.now()
    tallies: list[ChunkTally] = []
    challenger = challenger_for(adapters, request.model)
    rules = live_rules(adapters, version)
    for index, chunk in enumerate(
        iter_chunks(
            request.input,
            datasets=adapters.store,
            sources=adapters.sources,
            chunk_rows=chunk_rows_for(adapters.settings, n_features=version.n_features),
        )
    ):
        check_width(chunk.matrix, n_features=version.n_features, model=version.label)
        scores, hits = score_rows(adapters, loaded, chunk.matrix)
        result = chunk_result(
            request.job_id,
            version,
            chunk=chunk,
            scores=scores,
            hits=int(hits.sum()),
            top_k=top_k,
            now=now,
            explaining=Explaining.of(adapters, loaded),
            rules=rules,
        )
        adapters.store.add_anomalies(result.anomalies)
        tallies.append(result.tally)
        if challenger is not None:
            shadow_chunk(
                adapters,
                job_id=request.job_id,
                chunk_index=index,
                chunk=chunk,
                champion=version,
                champion_scores=scores,
                challenger=challenger,
            )
    duration_ms = (adapters.clock.monotonic() - started) * 1000.0
    summary = summarize(request.job_id, version, tallies, top_k=top_k, duration_ms=duration_ms)
    adapters.store.complete_job(
        summary,
        model_id=version.id,
        now=adapters.clock.now(),
        extra={"dataset_name": input_label(request.input)},
    )
    return summary
