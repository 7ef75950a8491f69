"""``pynomaly-workers``: run workers, beat and Flower; train, detect and inspect.

Output is for people by default; ``--json`` prints one JSON document for machines.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from pydantic import ValidationError

from pynomaly_workers.contract import (
    ALGORITHMS,
    FAILED,
    FINAL_STATUSES,
    JOB_STATUSES,
    MAINTENANCE_QUEUE,
    QUEUES,
    TRAIN_TASK,
    TRAINING_QUEUE,
    maintenance_task,
    queue_of,
)
from pynomaly_workers.domain.errors import PynomalyError

if TYPE_CHECKING:
    from celery.result import AsyncResult

    from pynomaly_workers.domain.models import AliasMove, ModelVersion
    from pynomaly_workers.domain.ports import AnomalyRecord, JobRecord, ModelOverview
    from pynomaly_workers.services.context import Adapters
    from pynomaly_workers.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])
MAINTENANCE_JOBS = (
    "refresh_views",
    "vacuum_analyze",
    "reindex",
    "retention",
    "drift",
    "slow_queries",
    "cache_stats",
    "sweep_stale_jobs",
)
"""What ``maintenance run`` accepts: the tasks of ``services/maintenance.py``."""


def fail(message: str, *, code: int = 1) -> NoReturn:
    """Print an error for a person and exit."""
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def emit(data: Any, *, as_json: bool, human: Callable[[], None]) -> None:
    """Print ``data`` as JSON, or call the human formatter."""
    if as_json:
        click.echo(json.dumps(data, default=_json_default, indent=2))
    else:
        human()


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain-text table."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join([line, rule, *body])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def json_option(func: F) -> F:
    """Adds ``--json``."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")(func)


def _settings() -> Settings:
    from pynomaly_workers.settings import get_settings

    try:
        return get_settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"PYNOMALY_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        fail(f"invalid settings: {problems}")


def _adapters() -> Adapters:
    from pynomaly_workers.bootstrap import get_adapters

    _settings()
    return get_adapters()


@click.group()
@click.version_option(package_name="pynomaly-workers")
def main() -> None:
    """Pynomaly Workers: distributed anomaly detection on Celery."""


# -- processes -------------------------------------------------------------------------
LONG_TASK_QUEUES = frozenset({TRAINING_QUEUE, MAINTENANCE_QUEUE})


@main.command()
@click.option("--queues", "-Q", default=None, help="Comma-separated queues (default: all).")
@click.option("--concurrency", "-c", type=int, default=None, help="Worker processes.")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.option("--pool", default=None, help="Celery pool (prefork, solo, threads).")
@click.option("--hostname", "-n", default=None, help="Node name (default: celery@<host name>).")
def worker(
    queues: str | None,
    concurrency: int | None,
    loglevel: str,
    pool: str | None,
    hostname: str | None,
) -> None:
    """Run a worker consuming the detection, training and maintenance queues, with
    Prometheus metrics at /metrics on PYNOMALY_METRICS_PORT (0 turns them off).

    With detection, the pool has one process per core plus one, and long work (file
    jobs, chunks, training, maintenance) uses at most all but one process: a one-record
    job never waits behind it. A pool of only training/maintenance queues takes one
    message per process at a time (prefetch 1): a long job never waits, reserved,
    behind another one."""
    settings = _settings()
    if settings.metrics_port:
        _prepare_metrics_folder(settings.home / "metrics", os.getpid())
    from pynomaly_workers.celery_app import get_app

    chosen = (queues or ",".join(QUEUES)).split(",")
    unknown = set(chosen) - set(QUEUES)
    if unknown:
        fail(f"unknown queue(s) {', '.join(sorted(unknown))}; choose from {', '.join(QUEUES)}")
    argv = [f"--loglevel={loglevel}", f"--queues={','.join(chosen)}", "--task-events"]
    argv += _prefetch_options(chosen)
    from pynomaly_workers.celery_app import layout_for

    processes = layout_for(chosen, concurrency=concurrency or settings.worker_concurrency)
    argv.append(f"--concurrency={processes.processes}")
    if pool:
        argv.append(f"--pool={pool}")
    if hostname:
        argv.append(f"--hostname={hostname}")
    if settings.metrics_port:
        from pynomaly_workers.metrics import serve

        try:
            serve(settings.metrics_port)
        except OSError as exc:
            fail(
                f"cannot serve metrics on port {settings.metrics_port} ({exc}); set "
                "PYNOMALY_METRICS_PORT to a free port, or 0 to turn metrics off"
            )
    # JSON logs: no banner, and warnings as JSON, so every output line is one object.
    quiet = _json_output() if settings.log_format == "json" else []
    get_app().start([*quiet, "worker", *argv])


def _json_output() -> list[str]:
    """Python warnings as JSON lines; Celery's ``--quiet`` (no banner)."""
    import warnings

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        del file, line
        text = f"{category.__name__}: {message} ({filename}:{lineno})"
        click.echo(json.dumps({"level": "WARNING", "message": text}), err=True)

    warnings.showwarning = show
    return ["--quiet"]


def _prefetch_options(queues: Sequence[str]) -> list[str]:
    """Prefetch 1 and fair scheduling for a pool of long tasks only. A worker that also
    consumes detection keeps the detection prefetch (PYNOMALY_PREFETCH_MULTIPLIER, for
    micro-batching) and takes training and maintenance through its bulk lane, one
    message per bulk slot (workers/lanes.py)."""
    if set(queues) <= LONG_TASK_QUEUES:
        return ["--prefetch-multiplier=1", "-O", "fair"]
    return []


def _prepare_metrics_folder(parent: Path, pid: int) -> None:
    """A fresh folder for prometheus-client's multiprocess files, and the folders of
    earlier runs removed. It must be in the environment before prometheus_client is
    first imported (it reads it at import)."""
    import shutil

    assert "prometheus_client" not in sys.modules, "metrics folder set too late"
    folder = parent / str(pid)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder.resolve())
    from pynomaly_workers.metrics import remove_stale_folders

    remove_stale_folders(parent, keep=folder)


@main.command()
@click.option("--loglevel", "-l", default="INFO", show_default=True)
def beat(loglevel: str) -> None:
    """Run the beat scheduler. Safe to start twice on Redis: one ticks, the other waits
    and takes over within PYNOMALY_BEAT_LOCK_TIMEOUT + PYNOMALY_BEAT_MAX_LOOP_INTERVAL
    seconds of the leader's death. On the embedded default run one."""
    from pynomaly_workers.celery_app import get_app

    settings = _settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    schedule = settings.home.resolve() / "celerybeat-schedule"
    quiet = _json_output() if settings.log_format == "json" else []
    get_app().start([*quiet, "beat", f"--loglevel={loglevel}", f"--schedule={schedule}"])


@main.command()
@click.option("--port", default=5555, show_default=True)
@click.option("--address", default="0.0.0.0", show_default=True)  # noqa: S104
def flower(port: int, address: str) -> None:
    """Run Flower behind basic auth (PYNOMALY_FLOWER_BASIC_AUTH=user:password; the
    password may contain commas)."""
    from pynomaly_workers.celery_app import get_app
    from pynomaly_workers.flower import run_flower

    settings = _settings()
    if not settings.flower_basic_auth:
        fail("Flower needs basic auth: set PYNOMALY_FLOWER_BASIC_AUTH=user:password")
    run_flower(get_app(), settings, port=port, address=address)


# -- database --------------------------------------------------------------------------
@main.command()
@click.option("--revision", default="head", show_default=True)
@click.option(
    "--broker",
    is_flag=True,
    help="Instead of the database: on RabbitMQ, replace the topic exchanges an earlier "
    "release named like the queues with the direct ones producers declare. Run once no "
    "worker or client of that release runs.",
)
def migrate(revision: str, broker: bool) -> None:
    """Create or upgrade the database schema (Alembic); with --broker, the RabbitMQ
    exchanges instead."""
    if broker:
        _migrate_broker()
        return
    from sqlalchemy.engine import make_url

    from pynomaly_workers.adapters.stores.engine import normalize_url
    from pynomaly_workers.migrate import upgrade

    url = _settings().resolved_database_url
    upgrade(url, revision=revision)
    safe = make_url(normalize_url(url)).render_as_string(hide_password=True)
    click.echo(f"database {safe} is at revision {revision}")


def _migrate_broker() -> None:
    from kombu.utils.url import maybe_sanitize_url

    from pynomaly_workers.adapters.amqp_topology import migrate_exchanges
    from pynomaly_workers.celery_app import get_app

    settings = _settings()
    if not settings.is_amqp:
        fail("--broker migrates RabbitMQ exchanges; PYNOMALY_BROKER_URL is not amqp://")
    app = get_app()
    with app.connection_for_write() as connection:
        replaced = migrate_exchanges(connection, app.amqp.queues.values())
    where = maybe_sanitize_url(settings.broker_url)
    if replaced:
        click.echo(f"{where}: replaced with direct exchanges: {', '.join(replaced)}")
    else:
        click.echo(f"{where}: every queue's exchange is already direct; nothing to do")


# -- training and detection ------------------------------------------------------------
def _parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            fail(
                f"--param {pair!r} must look like key=value (value as JSON, e.g. n_estimators=200)"
            )
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def _load_records_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        fail(f"cannot read records from {path}: {exc}")
    if isinstance(data, list):
        return {"records": data}
    if isinstance(data, dict) and "records" in data:
        return {k: data[k] for k in ("records", "record_ids", "timestamps") if k in data}
    fail(f"{path} must hold a JSON list of rows or an object with a 'records' key")


def is_object_uri(uri: str) -> bool:
    """True for ``s3://bucket/key`` (passed to the workers as it is)."""
    return uri.startswith("s3://")


def _input_kwargs(
    records_file: Path | None, dataset: str | None, source: str | None
) -> dict[str, Any]:
    given = [v for v in (records_file, dataset, source) if v]
    if len(given) != 1:
        fail("give exactly one of --records-file, --dataset or --source")
    if records_file:
        return _load_records_file(records_file)
    if source:
        return {"source": source if is_object_uri(source) else str(Path(source).resolve())}
    return {"dataset": dataset}


def input_options(func: F) -> F:
    """Adds --records-file / --dataset / --source."""
    func = click.option(
        "--source", help="CSV/Parquet path readable by the workers, or s3://bucket/key."
    )(func)
    func = click.option("--dataset", help="Name of a registered dataset.")(func)
    return click.option(
        "--records-file",
        type=click.Path(path_type=Path, exists=True, dir_okay=False),
        help="JSON file: a list of rows, or {records, record_ids, timestamps}.",
    )(func)


@main.command()
@click.option("--model", required=True, help="Name to register the new version under.")
@click.option(
    "--algorithm",
    type=click.Choice(ALGORITHMS),
    default="iforest",
    show_default=True,
)
@input_options
@click.option("--contamination", type=float, default=0.01, show_default=True)
@click.option("--param", "params", multiple=True, help="Estimator parameter key=value.")
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.option("--timeout", type=float, default=600, show_default=True)
@json_option
def train(
    model: str,
    algorithm: str,
    records_file: Path | None,
    dataset: str | None,
    source: str | None,
    contamination: float,
    params: tuple[str, ...],
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Train a model version on a worker (pynomaly.train)."""
    from pynomaly_workers.client import client_app, publish

    kwargs = {
        "model": model,
        "algorithm": algorithm,
        "contamination": contamination,
        "params": _parse_params(params),
        **_input_kwargs(records_file, dataset, source),
    }
    app = client_app(_settings())
    result = publish(app, TRAIN_TASK, kwargs=kwargs, queue=TRAINING_QUEUE)
    if not wait:
        emit(
            {"task_id": result.id},
            as_json=as_json,
            human=lambda: click.echo(f"queued training task {result.id}"),
        )
        return
    summary = _wait_result(result, timeout=timeout, what="training")
    emit(summary, as_json=as_json, human=lambda: _print_training(summary))


def _wait_result(result: AsyncResult[Any], *, timeout: float, what: str) -> dict[str, Any]:
    try:
        value = result.get(timeout=timeout, propagate=False)
    except Exception as exc:  # celery raises its own TimeoutError
        fail(
            f"{what} did not finish within {timeout:.0f}s ({type(exc).__name__}); "
            "is a worker running? ('pynomaly-workers worker', then 'pynomaly-workers health')"
        )
    if result.failed():
        fail(f"{what} failed: {value}")
    return dict(value)


def _print_training(summary: dict[str, Any]) -> None:
    onnx = "yes" if summary["onnx"] else "no"
    click.echo(
        f"registered {summary['model']}@{summary['model_version']} ({summary['algorithm']}): "
        f"{summary['n_training_rows']} rows x {summary['n_features']} features, "
        f"threshold {summary['threshold']:.5f}, ONNX {onnx}"
        + (
            f" (parity error {summary['parity_max_error']:.2e})"
            if summary["parity_max_error"] is not None
            else ""
        )
    )


@main.command("train-many")
@click.option(
    "--file",
    "models_file",
    required=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="JSON file: a list with one pynomaly.train arguments object per model "
    '(model, algorithm, records | dataset | source, ...), or {"models": [...]}.',
)
@click.option(
    "--task-id",
    default=None,
    help="Idempotency key (default: generated). Resending with the same id registers no "
    "model twice and trains only the models not yet registered.",
)
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.option("--timeout", type=float, default=900, show_default=True)
@json_option
def train_many(
    models_file: Path, task_id: str | None, wait: bool, timeout: float, as_json: bool
) -> None:
    """Train many models in one message (pynomaly.train_many), each registered as its
    own version. A model that cannot be trained fails alone; exit 1 if any failed."""
    from pynomaly_workers.client import client_app, submit_training_many

    app = client_app(_settings())
    submission = submit_training_many(
        models=_load_models_file(models_file), task_id=task_id, app=app
    )
    if not wait:
        emit(
            {"task_id": submission.task_id},
            as_json=as_json,
            human=lambda: click.echo(f"queued training task {submission.task_id}"),
        )
        return
    result = app.AsyncResult(submission.task_id)
    summary = _wait_result(result, timeout=timeout, what="training")
    emit(summary, as_json=as_json, human=lambda: _print_training_many(summary))
    if summary["n_failed"]:
        fail(
            f"{summary['n_failed']} of {summary['n_models']} models failed (see why above); "
            f"fix them in {models_file} without reordering it and resend it with --task-id "
            f"{submission.task_id}: the registered ones are not trained again"
        )


def _load_models_file(path: Path) -> list[Any]:
    """The items of a train-many file, local ``source`` paths made absolute like
    ``train --source`` makes them."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        fail(f"cannot read models from {path}: {exc}")
    items = data.get("models") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        fail(
            f"{path} must hold a non-empty JSON list of training arguments (one object per "
            'model, e.g. {"model": "m", "dataset": "d"}) or {"models": [...]}'
        )
    return [_absolute_source(item) for item in items]


def _absolute_source(item: Any) -> Any:
    source = item.get("source") if isinstance(item, dict) else None
    if not isinstance(source, str) or is_object_uri(source) or source.startswith("file://"):
        return item
    return {**item, "source": str(Path(source).resolve())}


def _print_training_many(summary: dict[str, Any]) -> None:
    rows = [
        [
            index,
            item["model"],
            item.get("model_version"),
            item["status"],
            _training_outcome(item),
        ]
        for index, item in enumerate(summary["models"])
    ]
    click.echo(table(rows, ["#", "model", "version", "status", "detail"]))
    click.echo(
        f"\nregistered {summary['n_succeeded']} of {summary['n_models']} models"
        + (f"; {summary['n_failed']} failed" if summary["n_failed"] else "")
    )


def _training_outcome(item: dict[str, Any]) -> str:
    if item["status"] == FAILED:
        return f"{item['error_type']}: {item['error']}"
    onnx = "ONNX" if item["onnx"] else "no ONNX"
    return (
        f"{item['algorithm']}, {item['n_training_rows']} rows x {item['n_features']} "
        f"features, {onnx}"
    )


@main.command()
@click.option("--model", required=True, help="Model name or name@version.")
@input_options
@click.option("--job-id", default=None, help="Idempotency key (default: generated).")
@click.option(
    "--wait/--no-wait", default=False, show_default=True, help="Wait and print the job summary."
)
@click.option("--timeout", type=float, default=600, show_default=True)
@json_option
def detect(
    model: str,
    records_file: Path | None,
    dataset: str | None,
    source: str | None,
    job_id: str | None,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Submit a detection job (pynomaly.detect)."""
    from pynomaly_workers.client import client_app, new_job_id, submit_detection

    adapters = _adapters()
    job_id = job_id or new_job_id()
    adapters.store.enqueue_job(job_id, model=model, now=adapters.clock.now())
    submission = submit_detection(
        model=model,
        job_id=job_id,
        app=client_app(adapters.settings),
        **_input_kwargs(records_file, dataset, source),
    )
    if not wait:
        emit(
            asdict(submission),
            as_json=as_json,
            human=lambda: click.echo(f"queued job {submission.job_id}"),
        )
        return
    job = wait_for_job(adapters, submission.job_id, timeout=timeout)
    if job.status == FAILED:
        emit(asdict(job), as_json=as_json, human=lambda: None)
        fail(f"job {job.job_id} failed ({job.error_type}): {job.error}")
    summary = job.summary or {}
    emit(summary, as_json=as_json, human=lambda: print_summary(summary))


def wait_for_job(adapters: Adapters, job_id: str, *, timeout: float) -> JobRecord:
    """Poll the job record until it is succeeded or failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = adapters.store.get_job(job_id)
        if job is not None and job.status in FINAL_STATUSES:
            return job
        time.sleep(0.1)
    fail(
        f"job {job_id} did not finish within {timeout:.0f}s; is a worker running? "
        "('pynomaly-workers health' checks)"
    )


def print_summary(summary: dict[str, Any]) -> None:
    """The job summary and its top anomalies, for people."""
    tops = summary["top_anomalies"]
    if tops:
        click.echo(
            table(
                [[a["record_index"], a["record_id"], a["score"], a["severity"]] for a in tops],
                ["record", "record_id", "score", "severity"],
            )
        )
        click.echo()
    click.echo(
        f"job {summary['job_id']}: {summary['status']} - model {summary['model']}@"
        f"{summary['model_version']}, {summary['n_records']} records, "
        f"{summary['n_anomalies']} anomalies (threshold {summary['threshold']:.5f}), "
        f"{summary['cache_hits']} cache hits, {summary['duration_ms']:.1f} ms"
    )


# -- inspection ------------------------------------------------------------------------
@main.command()
@click.argument("job_id", required=False)
@click.option("--status", type=click.Choice(JOB_STATUSES))
@click.option("--limit", default=20, show_default=True)
@json_option
def jobs(job_id: str | None, status: str | None, limit: int, as_json: bool) -> None:
    """List detection jobs, or show one."""
    store = _adapters().store
    if job_id:
        job = store.get_job(job_id)
        if job is None:
            fail(f"no job {job_id!r}; 'pynomaly-workers jobs' lists recent ones")
        emit(asdict(job), as_json=as_json, human=lambda: _print_job(job))
        return
    found = store.list_jobs(status=status, limit=limit)
    emit(
        [asdict(j) for j in found],
        as_json=as_json,
        human=lambda: click.echo(
            table(
                [
                    [
                        j.job_id,
                        j.status,
                        j.model,
                        j.n_records,
                        j.n_anomalies,
                        j.duration_ms,
                        j.created_at,
                    ]
                    for j in found
                ],
                ["job_id", "status", "model", "records", "anomalies", "ms", "created"],
            )
        ),
    )


def _print_job(job: JobRecord) -> None:
    if job.summary:
        print_summary(job.summary)
    else:
        click.echo(f"job {job.job_id}: {job.status}, model {job.model}, attempts {job.attempts}")
    if job.error:
        click.echo(f"error ({job.error_type}): {job.error}")


@main.group(invoke_without_command=True)
@click.option("--name", default=None, help="Only this model name (exact).")
@click.option("--match", default=None, help="Only names containing this text (any case).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option(
    "--offset",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Skip this many versions: the next page is at --offset plus --limit.",
)
@json_option
@click.pass_context
def models(
    ctx: click.Context,
    name: str | None,
    match: str | None,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """List registered model versions by name, newest first, a page at a time (and
    their detection record); see the subcommands to move an alias or roll it back."""
    if ctx.invoked_subcommand is not None:
        return
    adapters = _adapters()
    found = adapters.store.list_models(name=name, match=match, limit=limit, offset=offset)
    performance = {
        p.model_id: p for p in adapters.reads.model_performance_of([m.id for m in found])
    }
    listed = [_model_dict(m, performance.get(m.id)) for m in found]
    if as_json:
        emit(listed, as_json=True, human=lambda: None)
        return
    total = adapters.store.count_models(name=name, match=match)
    click.echo(_models_table(found, performance))
    options = _filter_options(name, match)
    click.echo(
        f"\n{_page_note(len(found), total=total, limit=limit, offset=offset, options=options)}"
    )


def _models_table(found: Sequence[ModelVersion], performance: dict[int, ModelOverview]) -> str:
    rows = [
        [
            m.name,
            m.version,
            m.algorithm,
            "*" if m.active else "",
            m.n_features,
            m.threshold,
            "yes" if m.onnx_sha256 else "no",
            m.artifact_sha256[:12],
            *_performance_cells(performance.get(m.id)),
            m.created_at,
        ]
        for m in found
    ]
    headers = ["name", "version", "algorithm", "active", "features", "threshold", "onnx"]
    return table(rows, [*headers, "sha256", "jobs", "anomalies", "last job", "created"])


def _page_note(shown: int, *, total: int, limit: int, offset: int, options: str) -> str:
    """Which versions of how many are shown, and the command for the next page."""
    if shown:
        note = f"versions {offset + 1}-{offset + shown} of {total}"
        if offset + shown < total:
            next_page = f"--limit {limit} --offset {offset + shown}"
            note += f"; next page: pynomaly-workers models{options} {next_page}"
        return note
    if total == 0 and options:
        return f"no model versions match{options}; 'pynomaly-workers models' lists them all"
    if total == 0:
        return "no model versions yet; register one with 'pynomaly-workers train' or 'train-many'"
    last = (total - 1) // limit * limit
    return f"no versions at offset {offset}: there are {total}; the last page is --offset {last}"


def _filter_options(name: str | None, match: str | None) -> str:
    """The filters as command-line options, quoted for a shell."""
    import shlex

    given = {"--name": name, "--match": match}
    return "".join(f" {key} {shlex.quote(value)}" for key, value in given.items() if value)


@models.command("alias")
@click.argument("name")
@click.argument("alias")
@click.argument("version", type=click.IntRange(min=1))
@json_option
def models_alias(name: str, alias: str, version: int, as_json: bool) -> None:
    """Point NAME@ALIAS (e.g. champion) at VERSION. Jobs sent with model="NAME@ALIAS"
    use it within PYNOMALY_MODEL_REF_TTL_SECONDS."""
    from pynomaly_workers.domain.models import check_alias, check_model_name

    adapters = _adapters()
    try:
        moved = adapters.store.set_alias(
            check_model_name(name), check_alias(alias), version, now=adapters.clock.now()
        )
    except PynomalyError as exc:
        fail(str(exc))
    emit(asdict(moved), as_json=as_json, human=lambda: _print_move(moved))


@models.command("rollback")
@click.argument("name")
@click.argument("alias")
@json_option
def models_rollback(name: str, alias: str, as_json: bool) -> None:
    """Point NAME@ALIAS back at the version it pointed at before its last move."""
    adapters = _adapters()
    try:
        moved = adapters.store.rollback_alias(name, alias, now=adapters.clock.now())
    except PynomalyError as exc:
        fail(str(exc))
    emit(asdict(moved), as_json=as_json, human=lambda: _print_move(moved))


@models.command("history")
@click.argument("name")
@click.option("--alias", default=None, help="Only this alias.")
@json_option
def models_history(name: str, alias: str | None, as_json: bool) -> None:
    """Every move of NAME's aliases, newest first."""
    moves = _adapters().store.alias_history(name, alias=alias)
    emit(
        [asdict(m) for m in moves],
        as_json=as_json,
        human=lambda: click.echo(
            table(
                [[m.alias, m.action, m.previous_version, m.version, m.moved_at] for m in moves],
                ["alias", "action", "from", "to", "when"],
            )
        ),
    )


def _top_features(explanation: dict[str, Any] | None, *, k: int = 3) -> str:
    """The first features of an anomaly's explanation, e.g. ``temp 4.1, rpm 0.3``."""
    if not explanation:
        return "-"
    top = explanation.get("top", [])[:k]
    return ", ".join(f"{item['feature']} {item['contribution']:.3g}" for item in top)


@models.command("compare")
@click.argument("name")
@json_option
def models_compare(name: str, as_json: bool) -> None:
    """How NAME@challenger compared with NAME@champion on the records it shadowed
    (PYNOMALY_SHADOW_FRACTION): flags each raised, agreement, score correlation."""
    found = _adapters().store.shadow_comparison(name)
    if not found and not as_json:
        fail(
            f"no shadow scoring recorded for {name!r}: point {name}@champion and "
            f"{name}@challenger at versions, set PYNOMALY_SHADOW_FRACTION on the workers "
            f"(e.g. 0.1) and send jobs to model '{name}@champion'"
        )
    emit(
        found,
        as_json=as_json,
        human=lambda: click.echo(
            table(
                [
                    [
                        c["champion_version"],
                        c["challenger_version"],
                        c["n_records"],
                        c["champion_flags"],
                        c["challenger_flags"],
                        c["both_flags"],
                        c["agreement"],
                        c["score_correlation"],
                    ]
                    for c in found
                ],
                [
                    "champion",
                    "challenger",
                    "records",
                    "flags A",
                    "flags B",
                    "both",
                    "agree",
                    "corr",
                ],
            )
        ),
    )


def _print_move(moved: AliasMove) -> None:
    before = f"version {moved.previous_version}" if moved.previous_version else "nothing"
    click.echo(f"{moved.name}@{moved.alias} -> version {moved.version} (was {before})")


def _model_dict(model: ModelVersion, performance: ModelOverview | None = None) -> dict[str, Any]:
    data = asdict(model)
    data["stats"] = {k: v for k, v in data["stats"].items() if k != "quantiles"}
    if performance is not None:
        keys = ("jobs", "jobs_failed", "records_scored", "anomalies_found", "anomaly_rate")
        data["performance"] = {k: getattr(performance, k) for k in keys} | {
            "p95_duration_ms": performance.p95_duration_ms,
            "last_job_at": performance.last_job_at,
        }
    return data


def _performance_cells(performance: ModelOverview | None) -> list[Any]:
    """Jobs, anomalies and last job from mv_model_performance (as of its last refresh)."""
    if performance is None:
        return [None, None, None]
    return [performance.jobs, performance.anomalies_found, performance.last_job_at]


@main.command()
@click.option("--job-id", default=None, help="Only this job's anomalies.")
@click.option("--model", default=None, help="Model name (every version).")
@click.option("--min-severity", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option(
    "--newest",
    is_flag=True,
    help="Newest first instead of most severe first: the last --hours of --model "
    "(its active version), or the last 7 days of every model (mv_recent_anomalies).",
)
@click.option("--hours", type=click.FloatRange(min=0, min_open=True), default=24.0)
@click.option("--limit", type=click.IntRange(1, 100_000), default=20, show_default=True)
@json_option
def anomalies(
    job_id: str | None,
    model: str | None,
    min_severity: float,
    newest: bool,
    hours: float,
    limit: int,
    as_json: bool,
) -> None:
    """List stored anomalies, most severe (then newest) first."""
    adapters = _adapters()
    if newest:
        found = _newest_anomalies(adapters, model=model, hours=hours, limit=limit)
    else:
        found = adapters.reads.top_anomalies(
            min_severity=min_severity, model=model, job_id=job_id, limit=limit
        )
    emit(
        [asdict(a) for a in found],
        as_json=as_json,
        human=lambda: click.echo(
            table(
                [
                    [
                        a.job_id,
                        a.record_index,
                        a.record_id,
                        a.score,
                        a.severity,
                        a.timestamp,
                        _top_features(a.explanation),
                    ]
                    for a in found
                ],
                ["job_id", "record", "record_id", "score", "severity", "timestamp", "why"],
            )
        ),
    )


def _newest_anomalies(
    adapters: Adapters, *, model: str | None, hours: float, limit: int
) -> list[AnomalyRecord]:
    from datetime import timedelta

    now = adapters.clock.now()
    if model is None:
        return adapters.reads.recent_anomalies(now=now, limit=limit)
    active = [m for m in adapters.reads.model_performance(name=model) if m.active]
    if not active:
        fail(f"no active version of model {model!r}; 'pynomaly-workers models' lists them")
    return adapters.reads.anomalies_of_model(
        model_id=active[0].model_id, since=now - timedelta(hours=hours), limit=limit
    )


@main.group()
def datasets() -> None:
    """Register and list datasets."""


@datasets.command("add")
@click.argument("name")
@click.argument("path")
@json_option
def datasets_add(name: str, path: str, as_json: bool) -> None:
    """Register the CSV/Parquet file PATH (a path, file:// URI or s3://bucket/key) as
    dataset NAME."""
    from dataclasses import replace

    from pynomaly_workers.domain.models import check_model_name

    adapters = _adapters()
    uri = path if is_object_uri(path) or path.startswith("file://") else str(Path(path).resolve())
    try:
        described = adapters.sources.describe(uri)
    except PynomalyError as exc:
        fail(str(exc))
    dataset = adapters.store.register_dataset(
        replace(described, name=check_model_name(name)), now=adapters.clock.now()
    )
    emit(
        asdict(dataset),
        as_json=as_json,
        human=lambda: click.echo(
            f"dataset {dataset.name}: {dataset.n_rows} rows x {dataset.n_features} features "
            f"({dataset.format}, {dataset.uri})"
        ),
    )


@datasets.command("list")
@json_option
def datasets_list(as_json: bool) -> None:
    """List registered datasets."""
    found = _adapters().store.list_datasets()
    emit(
        [asdict(d) for d in found],
        as_json=as_json,
        human=lambda: click.echo(
            table(
                [[d.name, d.format, d.n_rows, d.n_features, d.uri] for d in found],
                ["name", "format", "rows", "features", "uri"],
            )
        ),
    )


# -- drift -----------------------------------------------------------------------------
@main.command()
@click.option("--model", default=None, help="Only this model name.")
@json_option
def drift(model: str | None, as_json: bool) -> None:
    """Has each model's recent data drifted from what it was trained on? Per feature: PSI,
    chi-squared p-value (Benjamini-Hochberg corrected), drifted; the score distribution;
    the flagged rate against the training contamination. Exit 3 if anything drifted."""
    from pynomaly_workers.services.drift import check_drift

    reports = check_drift(_adapters(), model=model)
    emit(reports, as_json=as_json, human=lambda: _print_drift(reports))
    if any(r["drifted"] for r in reports):
        sys.exit(3)


def _print_drift(reports: list[dict[str, Any]]) -> None:
    if not reports:
        click.echo("no model scored anything in the look-back period")
    for report in reports:
        verdict = click.style("DRIFTED", fg="red") if report["drifted"] else "stable"
        click.echo(
            f"{report['model']}@{report['model_version']}: {verdict} "
            f"({report['n_records']} records, {report['status']})"
        )
        if report["status"] != "checked":
            continue
        rows = [
            [f["feature"], f["psi"], f["p_value"], f["q_value"], "yes" if f["drifted"] else ""]
            for f in report["features"]
        ]
        click.echo(table(rows, ["feature", "psi", "p", "q (BH)", "drifted"]))
        score, rate = report["score"], report["flag_rate"]
        click.echo(f"score: psi {score['psi']:.3f}, p {score['p_value']:.3g}")
        click.echo(
            f"flagged: {rate['observed']:.4f} vs {rate['expected']:.4f} (p {rate['p_value']:.3g})\n"
        )


# -- operations ------------------------------------------------------------------------
@main.group()
def maintenance() -> None:
    """Run maintenance tasks and see what ran."""


@maintenance.command("run")
@click.argument("name", type=click.Choice(MAINTENANCE_JOBS))
@click.option("--days", type=int, default=None, help="retention: keep this many days.")
@click.option("--inline", is_flag=True, help="Run here instead of on a maintenance worker.")
@click.option("--timeout", type=float, default=600, show_default=True)
@json_option
def maintenance_run(
    name: str, days: int | None, inline: bool, timeout: float, as_json: bool
) -> None:
    """Run one maintenance task now (under its lock, recorded in maintenance_runs)."""
    from pynomaly_workers.services.maintenance import retention_cutoff, run_maintenance

    if days is not None and name != "retention":
        fail("--days applies to 'maintenance run retention' only")
    options = {"days": days} if days is not None else {}
    if days is not None:
        try:
            retention_cutoff(days=days, now=datetime.now().astimezone())
        except PynomalyError as exc:
            fail(str(exc).replace("days=1", "--days 1"))
    if inline:
        report = run_maintenance(_adapters(), name, **options).to_dict()
    else:
        from pynomaly_workers.client import client_app

        task = maintenance_task(name)
        result = client_app(_settings()).send_task(task, kwargs=options, queue=queue_of(task))
        report = _wait_result(result, timeout=timeout, what=f"maintenance {name}")
    emit(report, as_json=as_json, human=lambda: _print_run(report))
    if report["outcome"] == FAILED:
        sys.exit(1)


def _print_run(run: dict[str, Any]) -> None:
    click.echo(
        f"{run['task']}: {run['outcome']} in {run['duration_ms']:.0f} ms, "
        f"{run['rows_affected']} affected - {json.dumps(run['detail'], default=str)}"
    )


@maintenance.command("history")
@click.option("--task", type=click.Choice(MAINTENANCE_JOBS), default=None)
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@json_option
def maintenance_history(task: str | None, limit: int, as_json: bool) -> None:
    """The latest maintenance runs, newest first."""
    runs = _adapters().maintenance.runs(task=task, limit=limit)
    emit(
        runs,
        as_json=as_json,
        human=lambda: click.echo(
            table(
                [
                    [
                        r["started_at"],
                        r["task"],
                        r["outcome"],
                        round(r["duration_ms"]),
                        r["rows_affected"],
                        json.dumps(r["detail"], default=str)[:80],
                    ]
                    for r in runs
                ],
                ["started", "task", "outcome", "ms", "rows", "detail"],
            )
        ),
    )


@main.command()
@click.option(
    "--liveness",
    "mode",
    flag_value="liveness",
    help="Local and cheap: this host's worker runs and its consumer loop is not stuck "
    "(a broker outage does not fail it).",
)
@click.option(
    "--readiness",
    "mode",
    flag_value="readiness",
    help="The broker and the database answer and the schema is at the migrations' head.",
)
@click.option(
    "--queues",
    default=None,
    help="Deep check through these queues (any worker may answer) instead of this "
    "host's worker's own queue.",
)
@click.option(
    "--worker",
    "worker_name",
    default=None,
    help="Worker whose own queue the canary goes to (default: celery@<this host>).",
)
@click.option("--timeout", type=float, default=15, show_default=True)
@json_option
def health(
    mode: str | None,
    queues: str | None,
    worker_name: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Probe the system; exit 0 when healthy, 1 when not.

    Without --liveness/--readiness: the deep check. The database answers, and a canary
    task round-trips through this host's worker (its own queue), proving that worker
    consumes; or through each of --queues."""
    settings = _settings()
    if mode == "liveness":
        from pynomaly_workers.probes import check_liveness

        report = {"ok": (live := check_liveness(settings))["ok"], "checks": {"liveness": live}}
    elif mode == "readiness":
        from pynomaly_workers.probes import check_readiness

        report = check_readiness(settings, timeout=min(timeout, 10))
    else:
        from pynomaly_workers.services.health import check_health

        report = check_health(
            _adapters(),
            queues=queues.split(",") if queues else [],
            worker=None if queues else (worker_name or _this_worker()),
            timeout=timeout,
        )
    emit(report, as_json=as_json, human=lambda: _print_health(report))
    if not report["ok"]:
        sys.exit(1)


def _this_worker() -> str:
    import socket

    return f"celery@{socket.gethostname()}"


def _print_health(report: dict[str, Any]) -> None:
    for name, check in report["checks"].items():
        mark = click.style("ok", fg="green") if check["ok"] else click.style("FAIL", fg="red")
        click.echo(f"{mark:>4}  {name}: {check['detail']}")


@main.command()
@click.option("--timeout", type=float, default=180, show_default=True)
@json_option
def demo(timeout: float, as_json: bool) -> None:
    """Train and detect end to end through a real worker on this machine."""
    from pynomaly_workers.demo import DemoFailed, run_demo

    try:
        outcome = run_demo(_settings(), timeout=timeout, echo=None if as_json else click.echo)
    except (DemoFailed, PynomalyError) as exc:
        fail(str(exc))
    emit(outcome, as_json=as_json, human=lambda: print_summary(outcome["summary"]))


if __name__ == "__main__":
    main()
