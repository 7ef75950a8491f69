"""What suppression rules cost one-record jobs (issue #22: workers learn about rules from a
per-process cache, so the 1,000 small jobs/s path does not pay a query per job).

One worker, one model. One-record jobs over 50 entities, every 20th record an outlier
(so anomalies are found, matched, counted and folded as in service), measured as the
small-job section measures (latency at the offered rate, then a burst's throughput, to
the results), with 10 live rules on the model and with none, alternated (with, without,
without, with) so a slow minute of the shared machine falls on both. The rules: 5 for
entities the jobs name (a tenth of the entities: their anomalies are suppressed, counted
and kept out of incidents) and 5 on a feature range no record reaches (matched against,
never matching). Each variant reports the anomalies suppressed in it.

On a shared two-core machine runs move by more than the rules cost, so the section also
times the workers' own batch service in this process (:func:`batch_cost`): batches of
one-record jobs with the 10 rules and without, alternated, best round of each."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from celery import Celery
from sqlalchemy import func, select

from benchmarks.config import IFOREST_MODEL
from benchmarks.incidents import ENTITIES, OUTLIER_EVERY, incident_kind
from benchmarks.inputs import Inputs
from benchmarks.jobs import publisher, result_client
from benchmarks.models import train, warm_up
from benchmarks.progress import say
from benchmarks.small_jobs import measure_kind
from benchmarks.stack import Stack, running_worker
from benchmarks.stats import median_at, ratio
from pynomaly_workers.adapters.stores.tables import AnomalyRow
from pynomaly_workers.client import detection_kwargs
from pynomaly_workers.domain.models import ModelRef
from pynomaly_workers.services.detection import DetectMessage, detect_batch
from pynomaly_workers.services.suppression import add_rule, features_of, remove_rule

RULES = 10
SUPPRESSED_ENTITIES = 5
ROUNDS = (None, True, False, False, True)
"""With rules (True) or without, in this order; None: a warm-up round, not reported."""
TTL_SECONDS = 1.0


@contextmanager
def live_rules(stack: Stack, *, on: bool, round_: int) -> Iterator[list[int]]:
    """``RULES`` live rules on the model for the block (none when ``on`` is false),
    removed after it; waits out the workers' rule TTL both ways (with rules or without,
    so both variants start and end alike)."""
    adapters = stack.adapters
    feature = features_of(adapters.store.get_model(ModelRef(IFOREST_MODEL)))[0]
    ids: list[int] = []
    if on:
        for i in range(SUPPRESSED_ENTITIES):
            entity = f"round-{round_}-entity-{i}"
            ids.append(_rule(stack, entity=entity).id)
        for i in range(RULES - SUPPRESSED_ENTITIES):
            ids.append(_rule(stack, feature=feature, between=(1e6 + i, 2e6 + i)).id)
    time.sleep(TTL_SECONDS + 0.2)
    try:
        yield ids
    finally:
        for rule_id in ids:
            remove_rule(adapters, rule_id, by="bench")
        time.sleep(TTL_SECONDS + 0.2)


def _rule(stack: Stack, **match: Any) -> Any:
    return add_rule(
        stack.adapters, model=IFOREST_MODEL, until="1h", reason="bench", actor="bench", **match
    )


def suppressed_since(stack: Stack, rule_ids: Sequence[int]) -> int:
    """Anomalies the rules marked."""
    if not rule_ids:
        return 0
    with stack.engine.connect() as conn:
        query = select(func.count()).where(AnomalyRow.suppressed_by.in_(list(rule_ids)))
        return int(conn.execute(query).scalar_one())


def run_suppression(stack: Stack, inputs: Inputs) -> dict[str, Any]:
    """The small-job figures with 10 live rules and with none, and the in-process cost."""
    runs: dict[str, list[dict[str, Any]]] = {"with": [], "without": []}
    with running_worker(
        stack,
        cache=True,
        name="worker-suppression",
        extra_env={"PYNOMALY_SUPPRESSION_TTL_SECONDS": str(TTL_SECONDS)},
    ):
        with result_client(stack.settings) as app:
            train(app, algorithms={IFOREST_MODEL: "iforest"}, source=inputs.training_csv)
        with publisher(stack.settings) as app:
            warm_up(stack, app, models=[IFOREST_MODEL], records=inputs.warmup, tag="sup")
            for index, on in enumerate(ROUNDS):
                figures = one_round(stack, app, inputs, on=bool(on), round_=index)
                if on is None:
                    continue
                runs["with" if on else "without"].append(figures)
                say(
                    f"suppression round {index} ({'with' if on else 'without'} rules): "
                    f"{figures['result_jobs_per_s']} jobs/s to the results, p50 "
                    f"{figures['result_latency_ms']['p50']} ms, "
                    f"{figures['suppressed']} anomalies suppressed"
                )
    return {**summarize(runs), "in_process": batch_cost(stack, inputs.small_jobs.burst)}


def one_round(
    stack: Stack, app: Celery, inputs: Inputs, *, on: bool, round_: int
) -> dict[str, Any]:
    width = len(inputs.small_jobs.burst[0])
    kind = incident_kind(stack, app, width, round_=round_)
    with live_rules(stack, on=on, round_=round_) as ids:
        figures = measure_kind(stack, app, kind, inputs.small_jobs)
        figures["suppressed"] = suppressed_since(stack, ids)
    return figures


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def median(variant: str, *path: str) -> float:
        return median_at(runs[variant], *path)

    out: dict[str, Any] = {
        "rules": RULES,
        "entities": ENTITIES,
        "outlier_every": OUTLIER_EVERY,
        "suppressed_entities": SUPPRESSED_ENTITIES,
    }
    for variant, figures in runs.items():
        out[variant] = {
            "result_jobs_per_s": median(variant, "result_jobs_per_s"),
            "jobs_per_s": median(variant, "jobs_per_s"),
            "result_p50_ms": median(variant, "result_latency_ms", "p50"),
            "result_p99_ms": median(variant, "result_latency_ms", "p99"),
            "suppressed": [f["suppressed"] for f in figures],
        }
    with_, without = out["with"], out["without"]
    out["throughput_ratio_with_without"] = ratio(
        with_["result_jobs_per_s"], without["result_jobs_per_s"]
    )
    out["p50_ratio_with_without"] = ratio(with_["result_p50_ms"], without["result_p50_ms"])
    out["p99_ratio_with_without"] = ratio(with_["result_p99_ms"], without["result_p99_ms"])
    out["runs"] = runs
    return out


VARIANTS = ("off", "no_match", "match")
"""Suppression off; 10 live rules none of the jobs' anomalies match (their entities are
others); the same rules, the jobs of one entity in ten matched (so every batch also adds
to a rule's count in its transaction)."""


def batch_cost(
    stack: Stack,
    rows: Sequence[list[float]],
    *,
    batch: int = 64,
    batches: int = 40,
    repeats: int = 5,
) -> dict[str, Any]:
    """The workers' batch service (score, match, settle in PostgreSQL) on ``batches``
    batches of ``batch`` one-record jobs over 50 entities, every 20th an outlier, in each
    of :data:`VARIANTS`, rotated batch by batch, ``repeats`` rounds after an untimed one,
    best round of each. The rules are read through the adapters' cache, as a worker
    reads them."""
    adapters = stack.adapters
    wired = {"off": replace(adapters, suppressions=None), "no_match": adapters, "match": adapters}
    prefix = {"off": "round--1", "no_match": "elsewhere", "match": "round--1"}
    run = uuid.uuid4().hex[:6]
    outlier = [8.0] * len(rows[0])
    best = dict.fromkeys(VARIANTS, float("inf"))
    with live_rules(stack, on=True, round_=-1) as ids:
        for attempt in range(-1, repeats):
            spent = dict.fromkeys(VARIANTS, 0.0)
            for b in range(batches):
                shift = (attempt + b) % len(VARIANTS)
                for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                    tag = f"sup-{run}-{attempt}-{variant}-{b}"
                    messages = [
                        DetectMessage(
                            task_id=f"{tag}-{i}",
                            kwargs=detection_kwargs(
                                model=IFOREST_MODEL,
                                records=[
                                    outlier
                                    if i % OUTLIER_EVERY == 0
                                    else rows[(b * batch + i) % len(rows)]
                                ],
                                entities=[f"{prefix[variant]}-entity-{i % ENTITIES}"],
                                job_id=f"{tag}-{i}",
                            ),
                        )
                        for i in range(batch)
                    ]
                    started = time.perf_counter()
                    detect_batch(wired[variant], messages)
                    spent[variant] += time.perf_counter() - started
            if attempt >= 0:
                best = {key: min(best[key], spent[key]) for key in best}
        suppressed = suppressed_since(stack, ids)
    off = best["off"]
    return {
        "jobs": batch * batches,
        "rules": RULES,
        **{f"{variant}_s": round(best[variant], 4) for variant in VARIANTS},
        "no_match_overhead": round(best["no_match"] / off - 1.0, 4),
        "match_overhead": round(best["match"] / off - 1.0, 4),
        "suppressed": suppressed,
        "repeats": repeats,
    }
