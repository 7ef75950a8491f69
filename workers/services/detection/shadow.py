"""Shadow scoring: a sample of the records sent to ``NAME@champion`` is also scored by
``NAME@challenger`` (when that alias exists). The challenger's flags are kept apart
(``shadow_anomalies``) with per-chunk comparisons, shown by
``pynomaly-workers models compare NAME``; the job's result is the champion's alone.
``PYNOMALY_SHADOW_FRACTION`` (0 = off) sets the share; the sample is fixed per job, so a
redelivered job shadows the same records and writes them once."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from pynomaly_workers.domain.errors import InvalidInput
from pynomaly_workers.domain.models import ModelRef, ModelVersion
from pynomaly_workers.domain.ports import SourceChunk
from pynomaly_workers.domain.scoring import Scores, anomaly_mask, severity
from pynomaly_workers.domain.shadow import ShadowTally, shadow_sample
from pynomaly_workers.services.context import Adapters

log = logging.getLogger(__name__)
CHAMPION, CHALLENGER = "champion", "challenger"


def challenger_for(adapters: Adapters, ref: ModelRef) -> ModelVersion | None:
    """The version to shadow ``ref`` with: its challenger, if ``ref`` names a champion,
    shadowing is on and the challenger alias exists (and differs)."""
    if adapters.settings.shadow_fraction <= 0 or ref.alias != CHAMPION:
        return None
    try:
        challenger = adapters.models.resolve(ModelRef(ref.name, alias=CHALLENGER))
    except InvalidInput:
        return None  # no challenger to shadow with
    return challenger


def shadow_chunk(
    adapters: Adapters,
    *,
    job_id: str,
    chunk_index: int,
    chunk: SourceChunk,
    champion: ModelVersion,
    champion_scores: Scores,
    challenger: ModelVersion,
) -> None:
    """Score the sampled rows of a chunk with the challenger and record the comparison.
    Best effort: a failing challenger must not fail the champion's job."""
    rows = shadow_sample(
        job_id, chunk.offset, len(chunk.matrix), fraction=adapters.settings.shadow_fraction
    )
    if rows.size == 0 or challenger.n_features != champion.n_features:
        return
    try:
        loaded = adapters.models.load(challenger)
        scores = loaded.scorer_for(int(rows.size)).score(chunk.matrix[rows])
    except InvalidInput as exc:
        log.warning("shadow scoring of job %s by %s skipped: %s", job_id, challenger.label, exc)
        return
    tally, flagged = compare(
        champion, champion_scores[rows], challenger, scores, positions=rows + chunk.offset
    )
    adapters.store.add_shadow(
        job_id,
        chunk_index,
        champion_id=champion.id,
        challenger_id=challenger.id,
        tally=tally,
        flagged=flagged,
        now=adapters.clock.now(),
    )


def compare(
    champion: ModelVersion,
    champion_scores: Scores,
    challenger: ModelVersion,
    challenger_scores: Scores,
    *,
    positions: np.ndarray[Any, np.dtype[np.int64]],
) -> tuple[ShadowTally, list[tuple[int, float, float]]]:
    """The tally of the two models on the same records, and the challenger's flagged
    records as (record index, score, severity)."""
    flags_a = anomaly_mask(champion_scores, threshold=champion.threshold)
    flags_b = anomaly_mask(challenger_scores, threshold=challenger.threshold)
    tally = ShadowTally.of(
        champion_scores, challenger_scores, champion_flags=flags_a, challenger_flags=flags_b
    )
    severities = severity(challenger_scores, challenger.stats)
    flagged = [
        (int(positions[i]), float(challenger_scores[i]), float(severities[i]))
        for i in np.flatnonzero(flags_b).tolist()
    ]
    return tally, flagged
