"""``detect`` and ``jobs``: submit detection jobs and follow them."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pynomaly_workers.cli.context import load_adapters
from pynomaly_workers.cli.inputs import input_kwargs, input_options
from pynomaly_workers.cli.output import emit, fail, json_option, table
from pynomaly_workers.cli.progress import progress_display
from pynomaly_workers.cli.waiting import wait_for_job
from pynomaly_workers.contract import FAILED, JOB_STATUSES

if TYPE_CHECKING:
    from pynomaly_workers.domain.ports import JobRecord


@click.command()
@click.option("--model", required=True, help="Model name or name@version.")
@input_options
@click.option("--job-id", default=None, help="Idempotency key (default: generated).")
@click.option(
    "--entity-field",
    default=None,
    help="With --dataset/--source: the column naming each record's entity (incidents are "
    "kept per model version and entity).",
)
@click.option(
    "--wait/--no-wait",
    default=False,
    show_default=True,
    help="Wait and print the job summary. A fanned-out job's progress (chunks, records/s, "
    "time left) shows on stderr when it is a terminal, as JSON lines with --json otherwise.",
)
@click.option("--timeout", type=float, default=600, show_default=True)
@json_option
def detect(
    model: str,
    records_file: Path | None,
    dataset: str | None,
    source: str | None,
    job_id: str | None,
    entity_field: str | None,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Submit a detection job (pynomaly.detect)."""
    from pynomaly_workers.client import client_app, new_job_id, submit_detection

    if entity_field and records_file:
        fail(
            "--entity-field goes with --dataset or --source; a records file names each "
            "record's entity in its 'entities' list"
        )
    adapters = load_adapters()
    job_id = job_id or new_job_id()
    adapters.store.enqueue_job(job_id, model=model, now=adapters.clock.now())
    submission = submit_detection(
        model=model,
        job_id=job_id,
        app=client_app(adapters.settings),
        entity_field=entity_field,
        **input_kwargs(records_file, dataset, source),
    )
    if not wait:
        emit(
            asdict(submission),
            as_json=as_json,
            human=lambda: click.echo(f"queued job {submission.job_id}"),
        )
        return
    display = progress_display(sys.stderr, as_json=as_json)
    job = wait_for_job(adapters, submission.job_id, timeout=timeout, display=display)
    if job.status == FAILED:
        emit(asdict(job), as_json=as_json, human=lambda: None)
        fail(f"job {job.job_id} failed ({job.error_type}): {job.error}")
    summary = job.summary or {}
    emit(summary, as_json=as_json, human=lambda: print_summary(summary))


def print_summary(summary: dict[str, Any]) -> None:
    """The job summary and its top anomalies, for people."""
    tops = summary["top_anomalies"]
    if tops:
        click.echo(
            table(
                [
                    [
                        a["record_index"],
                        a["record_id"],
                        a["score"],
                        a["severity"],
                        f"rule {a['suppressed_by']}" if a.get("suppressed_by") else "-",
                    ]
                    for a in tops
                ],
                ["record", "record_id", "score", "severity", "suppressed"],
            )
        )
        click.echo()
    click.echo(
        f"job {summary['job_id']}: {summary['status']} - model {summary['model']}@"
        f"{summary['model_version']}, {summary['n_records']} records, "
        f"{summary['n_anomalies']} anomalies{_suppressed(summary)} (threshold "
        f"{summary['threshold']:.5f}), "
        f"{summary['cache_hits']} cache hits, {summary['duration_ms']:.1f} ms"
    )


def _suppressed(summary: dict[str, Any]) -> str:
    n = summary.get("n_suppressed", 0)
    return f", {n} of them suppressed (never notified)" if n else ""


@click.command()
@click.argument("job_id", required=False)
@click.option("--status", type=click.Choice(JOB_STATUSES))
@click.option("--limit", default=20, show_default=True)
@json_option
def jobs(job_id: str | None, status: str | None, limit: int, as_json: bool) -> None:
    """List detection jobs, or show one."""
    store = load_adapters().store
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
