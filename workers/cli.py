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
from typing import Any, NoReturn, TypeVar

import click
from pydantic import ValidationError

from pynomaly_workers.domain.errors import PynomalyError

F = TypeVar("F", bound=Callable[..., Any])
TERMINAL = ("succeeded", "failed")


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


def _settings() -> Any:
    from pynomaly_workers.settings import get_settings

    try:
        return get_settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"PYNOMALY_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        fail(f"invalid settings: {problems}")


def _services() -> Any:
    from pynomaly_workers.bootstrap import get_services

    _settings()
    return get_services()


@click.group()
@click.version_option(package_name="pynomaly-workers")
def main() -> None:
    """Pynomaly Workers: distributed anomaly detection on Celery."""


# -- processes -------------------------------------------------------------------------
@main.command()
@click.option("--queues", "-Q", default=None, help="Comma-separated queues (default: all).")
@click.option("--concurrency", "-c", type=int, default=None, help="Worker processes.")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.option("--pool", default=None, help="Celery pool (prefork, solo, threads).")
def worker(queues: str | None, concurrency: int | None, loglevel: str, pool: str | None) -> None:
    """Run a worker consuming the detection, training and maintenance queues, with
    Prometheus metrics at /metrics on PYNOMALY_METRICS_PORT (0 turns them off)."""
    settings = _settings()
    if settings.metrics_port:
        _prepare_metrics_folder(settings.home / "metrics" / str(os.getpid()))
    from pynomaly_workers.celery_app import QUEUES, app

    chosen = queues or ",".join(QUEUES)
    unknown = set(chosen.split(",")) - set(QUEUES)
    if unknown:
        fail(f"unknown queue(s) {', '.join(sorted(unknown))}; choose from {', '.join(QUEUES)}")
    argv = ["worker", f"--loglevel={loglevel}", f"--queues={chosen}", "--task-events"]
    if concurrency or settings.worker_concurrency:
        argv.append(f"--concurrency={concurrency or settings.worker_concurrency}")
    if pool:
        argv.append(f"--pool={pool}")
    if settings.metrics_port:
        from pynomaly_workers.metrics import serve

        try:
            serve(settings.metrics_port)
        except OSError as exc:
            fail(
                f"cannot serve metrics on port {settings.metrics_port} ({exc}); set "
                "PYNOMALY_METRICS_PORT to a free port, or 0 to turn metrics off"
            )
    app.worker_main(argv)


def _prepare_metrics_folder(folder: Path) -> None:
    """A fresh folder for prometheus-client's multiprocess files. It must be in the
    environment before prometheus_client is first imported (it reads it at import)."""
    import shutil

    assert "prometheus_client" not in sys.modules, "metrics folder set too late"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder.resolve())


@main.command()
@click.option("--loglevel", "-l", default="INFO", show_default=True)
def beat(loglevel: str) -> None:
    """Run the beat scheduler. Safe to start twice on Redis: one ticks, the other waits
    and takes over within PYNOMALY_BEAT_LOCK_TIMEOUT + PYNOMALY_BEAT_MAX_LOOP_INTERVAL
    seconds of the leader's death. On the embedded default run one."""
    from pynomaly_workers.celery_app import app

    settings = _settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    schedule = settings.home.resolve() / "celerybeat-schedule"
    app.start(["beat", f"--loglevel={loglevel}", f"--schedule={schedule}"])


@main.command()
@click.option("--port", default=5555, show_default=True)
@click.option("--address", default="0.0.0.0", show_default=True)  # noqa: S104
def flower(port: int, address: str) -> None:
    """Run Flower behind basic auth (PYNOMALY_FLOWER_BASIC_AUTH=user:password)."""
    from pynomaly_workers.celery_app import app

    settings = _settings()
    if not settings.flower_basic_auth:
        fail("Flower needs basic auth: set PYNOMALY_FLOWER_BASIC_AUTH=user:password")
    app.start(
        [
            "flower",
            f"--port={port}",
            f"--address={address}",
            f"--basic-auth={settings.flower_basic_auth}",
        ]
    )


# -- database --------------------------------------------------------------------------
@main.command()
@click.option("--revision", default="head", show_default=True)
def migrate(revision: str) -> None:
    """Create or upgrade the database schema (Alembic)."""
    from sqlalchemy.engine import make_url

    from pynomaly_workers.adapters.stores.engine import normalize_url
    from pynomaly_workers.migrate import upgrade

    url = _settings().resolved_database_url
    upgrade(url, revision=revision)
    safe = make_url(normalize_url(url)).render_as_string(hide_password=True)
    click.echo(f"database {safe} is at revision {revision}")


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


def _input_kwargs(
    records_file: Path | None, dataset: str | None, source: str | None
) -> dict[str, Any]:
    given = [v for v in (records_file, dataset, source) if v]
    if len(given) != 1:
        fail("give exactly one of --records-file, --dataset or --source")
    if records_file:
        return _load_records_file(records_file)
    if source:
        return {"source": str(Path(source).resolve())}
    return {"dataset": dataset}


def input_options(func: F) -> F:
    """Adds --records-file / --dataset / --source."""
    func = click.option("--source", help="CSV/Parquet path readable by the workers.")(func)
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
    type=click.Choice(["iforest", "lof", "ocsvm", "elliptic"]),
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
    from pynomaly_workers.client import TRAIN_TASK, client_app

    kwargs = {
        "model": model,
        "algorithm": algorithm,
        "contamination": contamination,
        "params": _parse_params(params),
        **_input_kwargs(records_file, dataset, source),
    }
    app = client_app(_settings())
    result = app.send_task(TRAIN_TASK, kwargs=kwargs, queue="training")
    if not wait:
        emit(
            {"task_id": result.id},
            as_json=as_json,
            human=lambda: click.echo(f"queued training task {result.id}"),
        )
        return
    summary = _wait_result(result, timeout=timeout, what="training")
    emit(summary, as_json=as_json, human=lambda: _print_training(summary))


def _wait_result(result: Any, *, timeout: float, what: str) -> dict[str, Any]:
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

    services = _services()
    job_id = job_id or new_job_id()
    services.store.enqueue_job(job_id, model=model, now=services.clock.now())
    submission = submit_detection(
        model=model,
        job_id=job_id,
        app=client_app(services.settings),
        **_input_kwargs(records_file, dataset, source),
    )
    if not wait:
        emit(
            asdict(submission),
            as_json=as_json,
            human=lambda: click.echo(f"queued job {submission.job_id}"),
        )
        return
    job = wait_for_job(services, submission.job_id, timeout=timeout)
    if job.status == "failed":
        emit(asdict(job), as_json=as_json, human=lambda: None)
        fail(f"job {job.job_id} failed ({job.error_type}): {job.error}")
    emit(job.summary, as_json=as_json, human=lambda: print_summary(job.summary))


def wait_for_job(services: Any, job_id: str, *, timeout: float) -> Any:
    """Poll the job record until it is succeeded or failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = services.store.get_job(job_id)
        if job is not None and job.status in TERMINAL:
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
@click.option("--status", type=click.Choice(["queued", "running", "succeeded", "failed"]))
@click.option("--limit", default=20, show_default=True)
@json_option
def jobs(job_id: str | None, status: str | None, limit: int, as_json: bool) -> None:
    """List detection jobs, or show one."""
    store = _services().store
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


def _print_job(job: Any) -> None:
    if job.summary:
        print_summary(job.summary)
    else:
        click.echo(f"job {job.job_id}: {job.status}, model {job.model}, attempts {job.attempts}")
    if job.error:
        click.echo(f"error ({job.error_type}): {job.error}")


@main.command()
@click.option("--name", default=None, help="Only this model name.")
@json_option
def models(name: str | None, as_json: bool) -> None:
    """List model versions with their detection record (jobs and anomalies as of the
    last refresh of mv_model_performance)."""
    found = _services().reads.model_performance(name=name)
    emit(
        [asdict(m) for m in found],
        as_json=as_json,
        human=lambda: click.echo(
            table(
                [
                    [
                        m.name,
                        m.version,
                        m.algorithm,
                        "*" if m.active else "",
                        m.n_features,
                        m.threshold,
                        "yes" if m.onnx else "no",
                        m.jobs,
                        m.anomalies_found,
                        m.last_job_at,
                        m.created_at,
                    ]
                    for m in found
                ],
                [
                    "name",
                    "version",
                    "algorithm",
                    "active",
                    "features",
                    "threshold",
                    "onnx",
                    "jobs",
                    "anomalies",
                    "last job",
                    "created",
                ],
            )
        ),
    )


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
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
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
    services = _services()
    if newest:
        found = _newest_anomalies(services, model=model, hours=hours, limit=limit)
    else:
        found = services.reads.top_anomalies(
            min_severity=min_severity, model=model, job_id=job_id, limit=limit
        )
    emit(
        [asdict(a) for a in found],
        as_json=as_json,
        human=lambda: click.echo(
            table(
                [
                    [a.job_id, a.record_index, a.record_id, a.score, a.severity, a.timestamp]
                    for a in found
                ],
                ["job_id", "record", "record_id", "score", "severity", "timestamp"],
            )
        ),
    )


def _newest_anomalies(services: Any, *, model: str | None, hours: float, limit: int) -> Any:
    from datetime import timedelta

    now = services.clock.now()
    if model is None:
        return services.reads.recent_anomalies(now=now, limit=limit)
    active = [m for m in services.reads.model_performance(name=model) if m.active]
    if not active:
        fail(f"no active version of model {model!r}; 'pynomaly-workers models' lists them")
    return services.reads.anomalies_of_model(
        model_id=active[0].model_id, since=now - timedelta(hours=hours), limit=limit
    )


@main.group()
def datasets() -> None:
    """Register and list datasets."""


@datasets.command("add")
@click.argument("name")
@click.argument("path", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@json_option
def datasets_add(name: str, path: Path, as_json: bool) -> None:
    """Register the CSV/Parquet file PATH as dataset NAME."""
    from dataclasses import replace

    from pynomaly_workers.domain.models import check_model_name

    services = _services()
    described = services.sources.describe(str(path.resolve()))
    dataset = services.store.register_dataset(
        replace(described, name=check_model_name(name)), now=services.clock.now()
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
    found = _services().store.list_datasets()
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


# -- operations ------------------------------------------------------------------------
def _maintenance_names() -> list[str]:
    from pynomaly_workers.services.maintenance import TASKS

    return list(TASKS)


@main.group()
def maintenance() -> None:
    """Run maintenance tasks and see what ran."""


@maintenance.command("run")
@click.argument("name", type=click.Choice(_maintenance_names()))
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
        report = run_maintenance(_services(), name, **options).to_dict()
    else:
        from pynomaly_workers.client import client_app

        result = client_app(_settings()).send_task(
            f"pynomaly.maintenance.{name}", kwargs=options, queue="maintenance"
        )
        report = _wait_result(result, timeout=timeout, what=f"maintenance {name}")
    emit(report, as_json=as_json, human=lambda: _print_run(report))
    if report["outcome"] == "failed":
        sys.exit(1)


def _print_run(run: dict[str, Any]) -> None:
    click.echo(
        f"{run['task']}: {run['outcome']} in {run['duration_ms']:.0f} ms, "
        f"{run['rows_affected']} affected - {json.dumps(run['detail'], default=str)}"
    )


@maintenance.command("history")
@click.option("--task", type=click.Choice(_maintenance_names()), default=None)
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@json_option
def maintenance_history(task: str | None, limit: int, as_json: bool) -> None:
    """The latest maintenance runs, newest first."""
    runs = _services().maintenance.runs(task=task, limit=limit)
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
@click.option("--queues", default="detection,training,maintenance", show_default=True)
@click.option("--timeout", type=float, default=15, show_default=True)
@json_option
def health(queues: str, timeout: float, as_json: bool) -> None:
    """Prove the system works: database reachable, and a canary task round-trips
    through a worker on each queue."""
    from pynomaly_workers.services.health import check_health

    report = check_health(_services(), queues=queues.split(","), timeout=timeout)
    emit(report, as_json=as_json, human=lambda: _print_health(report))
    if not report["ok"]:
        sys.exit(1)


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
