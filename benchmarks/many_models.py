"""Many small models on one worker (default pool size, cache on as deployed), every
figure measured where the caller sees it.

- ``train_models_per_min``: IsolationForests (default parameters) of 1,000 rows x 8
  features each [quick: 100 models], one ``pynomaly.train`` message per model (the rows
  inline), all sent at once: models registered per minute from the first send to the
  last version registered (the ``models`` table's ``created_at``), or, when the wait
  ends at ``train_cap_s`` first, to that moment with the models registered by then.
  ``train_many_models_per_min``: the same models through ``pynomaly.train_many``,
  ``batch_models`` a message, when the contract has that task.
- ``one_model_latency_ms``, then ``latency_ms``: one-record jobs at a paced rate, all to
  one model, then spread over the trained models by a Zipf law; send -> the task
  result's ``date_done`` (when ``AsyncResult.get()`` can return). Nothing warms the
  Zipf traffic up: each process's first load of a model falls inside it, as it does
  for a caller when models outnumber what a process keeps loaded.
- ``worker_pss_mb``: the worker tree's summed PSS once that traffic was served.
- ``cold_load_ms``: one-record jobs, one at a time with a pause between them, each to
  a model no job had named before (held out of the Zipf traffic); with what the
  worker's ``/metrics`` says about loading models, if it says anything.
"""

from __future__ import annotations

import math
import re
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from benchmarks import memory, models
from benchmarks.config import (
    CONTAMINATION,
    MANY_BATCHED_PREFIX,
    MANY_MODELS_PREFIX,
    ManyModelsSizes,
)
from benchmarks.inputs import ManyModelsInputs, training_rows
from benchmarks.jobs import Sent, publisher, purge_queues, send_detection
from benchmarks.mixed import pool_size
from benchmarks.progress import say
from benchmarks.small_jobs import (
    by_task,
    detect_sender,
    ping_outcome,
    result_latency,
    send_paced,
)
from benchmarks.stack import Stack, free_port, running_worker
from benchmarks.stats import percentiles
from pynomaly_workers import contract
from pynomaly_workers.client import publish, submit_training, training_kwargs

REGISTERED = text("SELECT count(*), max(created_at) FROM models WHERE name LIKE :pattern")
REGISTERED_NAMES = text("SELECT DISTINCT name FROM models WHERE name LIKE :pattern ORDER BY name")
MODEL_METRIC = re.compile(r"model.*(load|cache|evict)|load.*model")
"""Names of worker metrics about loading or keeping models (none existed when this was
written: whatever matches is reported, so a new histogram or counter shows up)."""

Send = Callable[[Sequence[str]], list[Sent]]


@dataclass(frozen=True, slots=True)
class Registered:
    """How many models of a prefix are registered, the newest registration's wall-clock
    time, and when that was read."""

    count: int
    last_at: float | None
    checked_at: float


def run_many_models(stack: Stack, inputs: ManyModelsInputs) -> dict[str, Any]:
    """Start the section's worker, train the models both ways, serve them, load cold ones."""
    port = free_port()
    env = {"PYNOMALY_METRICS_PORT": str(port)}  # known here, to read its /metrics
    with (
        running_worker(stack, cache=True, name="worker-many", extra_env=env) as worker,
        publisher(stack.settings) as app,
    ):
        pid = worker.process.pid
        training = train_both_ways(stack, app)
        phases = measure(
            stack, app, inputs, pid=pid, metrics_url=f"http://127.0.0.1:{port}/metrics"
        )
        pool = pool_size(app, pid=pid)
    return summarize({"train": training, **phases}, stack.sizes.many_models, pool=pool)


def measure(
    stack: Stack, app: Celery, inputs: ManyModelsInputs, *, pid: int, metrics_url: str
) -> dict[str, Any]:
    """Serve the trained models (the cold ones held out), then load the cold ones; the
    worker's memory after each step."""
    trained = served_models(stack)
    held = cold_count(stack.sizes.many_models, trained)
    population, cold_names = trained[: len(trained) - held], trained[len(trained) - held :]
    memory_now = {"after_training": memory.tree_memory(pid)}
    serving = serve(stack, app, inputs, population, metrics_url=metrics_url)
    memory_now["after_serving"] = memory.tree_memory(pid)
    cold = cold_loads(stack, app, inputs, cold_names, metrics_url=metrics_url)
    memory_now["after_cold_loads"] = memory.tree_memory(pid)
    return {
        "models": {"trained": len(trained), "served": len(population), "cold": len(cold_names)},
        "serving": serving,
        "cold": cold,
        "memory": memory_now,
    }


def train_both_ways(stack: Stack, app: Celery) -> dict[str, Any]:
    """One ``pynomaly.train`` per model; then, if the contract has it, the same models
    (other names) through ``pynomaly.train_many``."""
    each = train_path(stack, app, prefix=MANY_MODELS_PREFIX, send=send_each(stack, app))
    # The batched task is being added beside this section: measured when it exists.
    task = getattr(contract, "TRAIN_MANY_TASK", None)
    if task is None:
        return {"each": each, "batched": None}
    batched = train_path(
        stack, app, prefix=MANY_BATCHED_PREFIX, send=send_batched(stack, app, task)
    )
    return {"each": each, "batched": {**batched, "task": task}}


def send_each(stack: Stack, app: Celery) -> Send:
    """One ``pynomaly.train`` message per model, the model's rows inline."""

    def send(names: Sequence[str]) -> list[Sent]:
        sent = []
        for i, name in enumerate(names):
            rows = training_rows(i, sizes=stack.sizes)
            sent_at = time.time()
            submission = submit_training(
                model=name, records=rows, contamination=CONTAMINATION, app=app
            )
            sent.append(Sent(job_id=name, task_id=submission.task_id, sent_at=sent_at))
        return sent

    return send


def send_batched(stack: Stack, app: Celery, task: str) -> Send:
    """``batch_models`` models a message: ``{"models": [<pynomaly.train kwargs>, ...]}``."""
    batch = stack.sizes.many_models.batch_models

    def send(names: Sequence[str]) -> list[Sent]:
        sent = []
        for start in range(0, len(names), batch):
            chunk = names[start : start + batch]
            trainings = [
                training_kwargs(
                    model=name,
                    records=training_rows(start + j, sizes=stack.sizes),
                    contamination=CONTAMINATION,
                )
                for j, name in enumerate(chunk)
            ]
            sent_at = time.time()
            result = publish(app, task, kwargs={"models": trainings})
            sent.append(Sent(job_id=chunk[0], task_id=str(result.id), sent_at=sent_at))
        return sent

    return send


def train_path(stack: Stack, app: Celery, *, prefix: str, send: Send) -> dict[str, Any]:
    """Send every model's training, wait until all are registered or ``train_cap_s``
    passed (then purge the queues and wait for the trainings already running)."""
    sizes = stack.sizes.many_models
    names = [f"{prefix}{i:04d}" for i in range(sizes.models)]
    say(f"many_models: training {len(names)} models as {prefix}*")
    sent = send(names)
    first = sent[0].sent_at
    reached = wait_registered(stack, prefix, expected=len(names), until=first + sizes.train_cap_s)
    complete = reached.count == len(names)
    if not complete:
        purged = purge_queues(app)
        say(f"many_models: {reached.count}/{len(names)} {prefix}* registered; purged {purged}")
        wait_training_idle(app, timeout=sizes.wait_s)
    span = (reached.last_at if complete and reached.last_at else reached.checked_at) - first
    per_min = round(reached.count / span * 60, 1) if span > 0 else None
    return {
        "models": len(names),
        "messages": len(sent),
        "registered": reached.count,
        "failed_messages": len(ping_outcome(stack, by_task(sent), 0.0).failed),
        "all_registered": complete,
        "seconds": round(span, 3),
        "models_per_min": per_min,
        "projected_minutes_full": round(sizes.full_models / per_min, 1) if per_min else None,
        "publish_s": round(sent[-1].sent_at - first, 3),
        "cap_s": sizes.train_cap_s,
    }


def registered(stack: Stack, prefix: str) -> Registered:
    """The models of ``prefix`` in the store now."""
    with stack.engine.connect() as conn:
        count, last = conn.execute(REGISTERED, {"pattern": f"{prefix}%"}).one()
    return Registered(int(count), None if last is None else last.timestamp(), time.time())


def wait_registered(stack: Stack, prefix: str, *, expected: int, until: float) -> Registered:
    """Poll the store until ``expected`` models are registered or the wall clock
    passes ``until``."""
    now = registered(stack, prefix)
    while now.count < expected and time.time() < until:
        time.sleep(0.25)
        now = registered(stack, prefix)
    return now


def wait_training_idle(app: Celery, *, timeout: float) -> bool:
    """Wait until the worker runs no training task (those it took before the purge), as
    it reports its active tasks; False if it still did after ``timeout``."""
    names = {contract.TRAIN_TASK, getattr(contract, "TRAIN_MANY_TASK", contract.TRAIN_TASK)}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        active = app.control.inspect(timeout=1.0).active()
        running = [t for tasks in (active or {}).values() for t in tasks if t.get("name") in names]
        if active is not None and not running:
            return True
        time.sleep(0.5)
    say("many_models: training still running after the purge; serving starts beside it")
    return False


def served_models(stack: Stack) -> list[str]:
    """The registered models, those trained one a message first, at most ``models``."""
    names: list[str] = []
    with stack.engine.connect() as conn:
        for prefix in (MANY_MODELS_PREFIX, MANY_BATCHED_PREFIX):
            found = conn.execute(REGISTERED_NAMES, {"pattern": f"{prefix}%"}).scalars()
            names.extend(str(name) for name in found)
    return names[: stack.sizes.many_models.models]


def cold_count(sizes: ManyModelsSizes, trained: Sequence[str]) -> int:
    """How many models to hold out of the traffic for the cold loads: ``cold_loads``,
    or half the trained models if fewer were trained."""
    return min(sizes.cold_loads, len(trained) // 2)


def zipf_picks(count: int, models: int, *, exponent: float, seed: int) -> list[int]:
    """``count`` model indices drawn by a Zipf law over ranks 1..``models`` (index 0
    the most requested), seeded."""
    weights = np.arange(1, models + 1, dtype=np.float64) ** -exponent
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.choice(models, size=count, p=weights / weights.sum())]


def serve(
    stack: Stack,
    app: Celery,
    inputs: ManyModelsInputs,
    population: Sequence[str],
    *,
    metrics_url: str,
) -> dict[str, Any]:
    """The paced one-record traffic to one model (after an untimed warm-up, so every
    process has loaded it), then the same rate spread over ``population``, with how the
    worker's model metrics moved during it."""
    if not population:
        return {"one_model": None, "zipf": None, "warmup_jobs_finished": None}
    sizes = stack.sizes.many_models
    top = population[0]
    warm = models.warm_up(stack, app, models=[top], records=inputs.warmup, tag="many")
    one_model = paced(stack, app, records=inputs.one_model, model=top, label="one_model")
    picks = zipf_picks(
        len(inputs.zipf), len(population), exponent=sizes.zipf_exponent, seed=sizes.seed
    )
    before = model_metrics(metrics_url)
    zipf = paced(
        stack, app, records=inputs.zipf, model=lambda i: population[picks[i]], label="zipf"
    )
    moves = metric_moves(before, model_metrics(metrics_url))
    return {
        "warmup_jobs_finished": f"{warm}/{len(inputs.warmup)}",
        "one_model": {**one_model, "model": top},
        "zipf": {**zipf, "distinct_models": len(set(picks)), "metrics": moves},
    }


def paced(
    stack: Stack,
    app: Celery,
    *,
    records: Sequence[list[float]],
    model: str | Callable[[int], str],
    label: str,
) -> dict[str, Any]:
    """One-record jobs at ``rate`` a second, one per record; latency to each result."""
    sizes = stack.sizes.many_models
    prefix = f"many-{label}-{uuid.uuid4().hex[:6]}-"
    sender = detect_sender(app, prefix=prefix, records=records, model=model)
    sent = send_paced(sender, count=len(records), per_second=sizes.rate)
    return result_latency(stack, app, sent, wait_s=sizes.wait_s, label=f"many_models {label}")


def cold_loads(
    stack: Stack,
    app: Celery,
    inputs: ManyModelsInputs,
    names: Sequence[str],
    *,
    metrics_url: str,
) -> dict[str, Any]:
    """One job at a time to each model in ``names`` (none named by a job before), the
    next after the previous one's result and a pause; send -> result, and what the
    worker's metrics about models moved meanwhile."""
    sizes = stack.sizes.many_models
    before = model_metrics(metrics_url)
    prefix = f"many-cold-{uuid.uuid4().hex[:6]}-"
    latencies, done = [], 0
    for i, (name, record) in enumerate(zip(names, inputs.cold, strict=False)):
        sent = send_detection(app, job_id=f"{prefix}{i:03d}", model=name, records=[record])
        outcome = ping_outcome(stack, by_task([sent]), sizes.wait_s)
        finished = outcome.done_at.get(sent.task_id)
        done += finished is not None
        latencies.append(((finished or outcome.checked_at) - sent.sent_at) * 1000)
        time.sleep(sizes.cold_gap_s)
    return {
        "latency_ms": percentiles(latencies),
        "jobs": len(latencies),
        "completed": done,
        "metrics": metric_moves(before, model_metrics(metrics_url)),
    }


def model_metrics(url: str) -> dict[str, dict[str, float]]:
    """Each histogram, counter and gauge on ``/metrics`` whose name speaks of loading or
    keeping models: its samples (``_count``, ``_sum``, ``_bucket{le}``, ``_total``, a
    gauge's value) summed over the other labels. Empty if the page cannot be read."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            page = response.read().decode()
    except OSError as exc:
        say(f"many_models: {url} unreadable: {exc}")
        return {}
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(page):
        if family.type not in ("histogram", "counter", "gauge"):
            continue
        if not MODEL_METRIC.search(family.name):
            continue
        values = found.setdefault(family.name, {})
        for sample in family.samples:
            key = sample.name.removeprefix(family.name) + sample.labels.get("le", "")
            values[key] = values.get(key, 0.0) + sample.value
    return found


def metric_moves(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, Any] | None:
    """How each model metric moved: a histogram's count, mean and the bucket its 95th
    percentile fell in; a counter's increase; a gauge's value after. None if the worker
    exports none."""
    if not after:
        return None
    moves: dict[str, Any] = {}
    for name, values in after.items():
        delta = {k: v - before.get(name, {}).get(k, 0.0) for k, v in values.items()}
        if "_count" in delta:
            moves[name] = histogram_move(name, delta)
        else:  # a counter's increase, or a gauge's value now
            moves[name] = delta["_total"] if "_total" in delta else {"now": values.get("")}
    return moves


def histogram_move(name: str, delta: dict[str, float]) -> dict[str, Any]:
    """Observations, their mean, and the upper bound of the bucket holding the 95th
    percentile (ms when the histogram counts seconds)."""
    count = delta["_count"]
    scale = 1000.0 if name.endswith("seconds") else 1.0
    buckets = sorted(
        (float(key.removeprefix("_bucket")), value)
        for key, value in delta.items()
        if key.startswith("_bucket")
    )
    p95 = next((bound for bound, seen in buckets if seen >= 0.95 * count), math.inf)
    return {
        "count": int(count),
        "mean": round(delta["_sum"] / count * scale, 3) if count else None,
        "p95_at_most": round(p95 * scale, 3) if count and math.isfinite(p95) else None,
        "unit": "ms" if scale > 1 else "as exported",
    }


def summarize(
    phases: dict[str, Any], sizes: ManyModelsSizes, *, pool: int | None
) -> dict[str, Any]:
    """The JSON section: the figures, how many models and jobs each phase had, details."""
    training, serving, cold = phases["train"], phases["serving"], phases["cold"]
    batched, counts = training["batched"], phases["models"]
    done = jobs_done(serving, cold)
    all_done = counts["served"] > 0 and all(count == total for count, total in done.values())
    return {
        "train_models_per_min": training["each"]["models_per_min"],
        "train_many_models_per_min": batched["models_per_min"] if batched else None,
        "latency_ms": (serving["zipf"] or {}).get("latency_ms"),
        "one_model_latency_ms": (serving["one_model"] or {}).get("latency_ms"),
        "worker_pss_mb": phases["memory"]["after_serving"]["pss_mb"],
        "cold_load_ms": cold["latency_ms"],
        "cold_load_metrics": cold["metrics"],
        "models_trained": counts["trained"],
        "models_served": counts["served"],
        "models_cold": counts["cold"],
        "jobs_done": {name: f"{count}/{total}" for name, (count, total) in done.items()},
        "all_trained": training["each"]["all_registered"],
        "all_trained_many": batched["all_registered"] if batched else None,
        "all_done": all_done,
        "serving_complete": all_done and counts["trained"] == sizes.models,
        "train": training,
        "serving": serving,
        "cold": cold,
        "memory": phases["memory"],
        "sizes": asdict(sizes),
        "worker_pool_size": pool,
    }


def jobs_done(serving: dict[str, Any], cold: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Per phase: jobs with a successful stored result, and jobs sent."""
    done = {"cold": (cold["completed"], cold["jobs"])}
    for name in ("one_model", "zipf"):
        phase = serving[name]
        done[name] = (phase["latency_completed"], phase["latency_jobs"]) if phase else (0, 0)
    return done
