"""``models``: list model versions, move and roll back their aliases, compare."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import click

from pynomaly_workers.cli.context import load_adapters
from pynomaly_workers.cli.evaluation import evaluations_table
from pynomaly_workers.cli.output import emit, fail, json_option, table
from pynomaly_workers.cli.promotion import (
    Promotion,
    compare_evaluations,
    evidence_text,
    judge_promotion,
    promotion_options,
)
from pynomaly_workers.cli.thresholds import PRECISION_HEADERS, precision_cells, with_precision
from pynomaly_workers.domain.errors import PynomalyError

if TYPE_CHECKING:
    from pynomaly_workers.domain.models import AliasMove, ModelVersion
    from pynomaly_workers.domain.ports import ModelOverview, StoredEvaluation


@click.group(invoke_without_command=True)
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
    adapters = load_adapters()
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
@promotion_options
@json_option
def models_alias(
    name: str,
    alias: str,
    version: int,
    promotion: Promotion,
    as_json: bool,
) -> None:
    """Point NAME@ALIAS (e.g. champion) at VERSION. Jobs sent with model="NAME@ALIAS"
    use it once the move commits (on SQLite, within PYNOMALY_MODEL_REF_TTL_SECONDS).
    With --require-better --on DATASET, VERSION and the version NAME@ALIAS points at
    now are evaluated on the labelled DATASET first, and the move is refused (exit 4)
    unless VERSION's average precision is at least as high; --force --reason TEXT
    moves it anyway, and is recorded."""
    from pynomaly_workers.domain.models import check_alias, check_model_name

    adapters = load_adapters()
    try:
        check_model_name(name), check_alias(alias)
        evidence = judge_promotion(adapters, name, alias, version, promotion)
        moved = adapters.store.set_alias(
            name,
            alias,
            version,
            now=adapters.clock.now(),
            actor=promotion.actor,
            reason=promotion.reason,
            evidence=evidence,
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
    adapters = load_adapters()
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
    adapters = load_adapters()
    moves = adapters.store.alias_history(name, alias=alias)
    emit(
        [asdict(m) for m in moves],
        as_json=as_json,
        human=lambda: _print_history(moves, adapters.store.list_evaluations(name)),
    )


@models.command("compare")
@click.argument("name")
@click.option(
    "--on",
    "dataset",
    default=None,
    help="Instead: each version's evaluations on this labelled dataset ('evaluate').",
)
@json_option
def models_compare(name: str, dataset: str | None, as_json: bool) -> None:
    """How NAME@challenger compared with NAME@champion on the records it shadowed
    (PYNOMALY_SHADOW_FRACTION): flags each raised, agreement, score correlation, and the
    alert precision triage's labels give each (the champion's stored anomalies, the
    challenger's shadow flags); with --on DATASET, how NAME's versions scored on that
    labelled dataset."""
    adapters = load_adapters()
    if dataset is not None:
        compare_evaluations(adapters, name, dataset, as_json=as_json)
        return
    found = with_precision(adapters, name, adapters.store.shadow_comparison(name))
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
                        *precision_cells(c),
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
                    *PRECISION_HEADERS,
                ],
            )
        ),
    )


def _print_move(moved: AliasMove) -> None:
    before = f"version {moved.previous_version}" if moved.previous_version else "nothing"
    click.echo(f"{moved.name}@{moved.alias} -> version {moved.version} (was {before})")
    if moved.evidence is not None:
        click.echo(evidence_text(moved.evidence))


def _print_history(moves: Sequence[AliasMove], evaluations: list[StoredEvaluation]) -> None:
    click.echo(
        table(
            [
                [
                    m.alias,
                    m.action,
                    m.previous_version,
                    m.version,
                    m.moved_at,
                    m.actor,
                    m.reason,
                    evidence_text(m.evidence) if m.evidence else None,
                ]
                for m in moves
            ],
            ["alias", "action", "from", "to", "when", "by", "reason", "evidence"],
        )
    )
    if evaluations:
        click.echo(f"\nevaluations\n{evaluations_table(evaluations)}")


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
