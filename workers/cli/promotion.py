"""Promotion on proof: ``models alias NAME ALIAS VERSION --require-better --on DATASET``
evaluates VERSION and the version the alias points at now on a labelled dataset, through
the workers, and refuses the move (exit 4) unless VERSION ranks the anomalies at least as
well (average precision); ``--force --reason`` moves it anyway. Either way the figures
are kept with the move (``model_alias_moves.evidence``)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from pynomaly_workers.cli.evaluation import (
    evaluation_dict,
    evaluations_table,
    submit_evaluation,
    wait_evaluation,
)
from pynomaly_workers.cli.incidents import who
from pynomaly_workers.cli.output import emit, fail
from pynomaly_workers.contract import EVALUATION_PURPOSES
from pynomaly_workers.domain.errors import UnknownModel
from pynomaly_workers.domain.evaluation import promotion_evidence
from pynomaly_workers.domain.models import ModelRef

if TYPE_CHECKING:
    from pynomaly_workers.domain.ports import StoredEvaluation
    from pynomaly_workers.services.context import Adapters

REFUSED = 4
"""The exit status of a move refused for want of proof."""
PROMOTION = EVALUATION_PURPOSES[1]
KEPT = ("average_precision", "roc_auc", "precision", "recall", "f1", "precision_at_k")


@dataclass(frozen=True, slots=True)
class Promotion:
    """What a move must prove, and who makes it."""

    actor: str
    dataset: str | None = None
    force: bool = False
    reason: str | None = None
    timeout: float = 600.0
    as_json: bool = False

    @property
    def require_better(self) -> bool:
        return self.dataset is not None


def promotion_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Adds --require-better, --on, --force, --reason, --by and --timeout, handed to the
    command as one ``promotion``."""

    @functools.wraps(func)
    def command(
        *args: Any,
        require_better: bool,
        on: str | None,
        force: bool,
        reason: str | None,
        by: str | None,
        timeout: float,
        **kwargs: Any,
    ) -> Any:
        if require_better != (on is not None):
            raise click.UsageError("--require-better and --on DATASET go together")
        if force and not (require_better and reason):
            raise click.UsageError(
                "--force overrides --require-better, and needs --reason TEXT (it is recorded)"
            )
        promotion = Promotion(
            actor=by or who(),
            dataset=on,
            force=force,
            reason=reason,
            timeout=timeout,
            as_json=bool(kwargs.get("as_json")),
        )
        return func(*args, promotion=promotion, **kwargs)

    options = [
        click.option(
            "--require-better",
            is_flag=True,
            help="Move only if VERSION's average precision on --on DATASET is at least "
            "that of the version the alias points at now (both evaluated by the workers).",
        ),
        click.option("--on", default=None, help="The labelled dataset to judge on."),
        click.option("--force", is_flag=True, help="Move even if VERSION is not better."),
        click.option("--reason", default=None, help="Why (kept with the move)."),
        click.option("--by", default=None, help="Who (default: your login name)."),
        click.option(
            "--timeout",
            type=float,
            default=600,
            show_default=True,
            help="Seconds to wait for the evaluations.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def judge_promotion(
    adapters: Adapters, name: str, alias: str, version: int, promotion: Promotion
) -> dict[str, Any] | None:
    """The evidence to record with the move, or None without --require-better; exits
    with :data:`REFUSED` (both figures printed) when VERSION is not better and the move
    is not forced."""
    if not promotion.require_better:
        return None
    assert promotion.dataset is not None
    adapters.store.get_model(ModelRef(name, version))  # an unknown version fails now
    current = _current(adapters, name, alias)
    versions = [version] if current in (None, version) else [version, current]
    jobs = {
        v: submit_evaluation(
            adapters,
            model=f"{name}@{v}",
            dataset=promotion.dataset,
            purpose=PROMOTION,
            actor=promotion.actor,
        )
        for v in versions
    }
    found = {
        v: wait_evaluation(adapters, job, timeout=promotion.timeout) for v, job in jobs.items()
    }
    evidence = promotion_evidence(
        dataset=promotion.dataset,
        candidate=_figures(found[version]),
        champion=_figures(found[current]) if current is not None else None,
        forced=promotion.force,
    )
    if not evidence["passed"] and not promotion.force:
        _refuse(name, alias, evidence, as_json=promotion.as_json)
    return evidence


def _current(adapters: Adapters, name: str, alias: str) -> int | None:
    try:
        return adapters.store.get_model(ModelRef(name, alias=alias)).version
    except UnknownModel:
        return None  # nothing to beat: the alias is new


def _figures(stored: StoredEvaluation) -> dict[str, Any]:
    return {
        "version": stored.model_version,
        "job_id": stored.job_id,
        "evaluation_id": stored.id,
        "n_records": stored.n_records,
        "n_positive": stored.n_positive,
        **{key: stored.metrics[key] for key in KEPT},
    }


def _refuse(name: str, alias: str, evidence: dict[str, Any], *, as_json: bool) -> None:
    candidate, current = evidence["candidate"], evidence["current"]
    if as_json:
        emit({"moved": False, "evidence": evidence}, as_json=True, human=lambda: None)
    fail(
        f"refused: {name}@{candidate['version']} has average precision "
        f"{candidate['average_precision']:.4f} on dataset {evidence['dataset']}, below "
        f"{current['average_precision']:.4f} of {name}@{alias} (version {current['version']}); "
        "pass --force --reason TEXT to move it anyway",
        code=REFUSED,
    )


def evidence_text(evidence: dict[str, Any]) -> str:
    """One line: the two figures a move was judged on, and whether it was forced."""
    candidate, current = evidence["candidate"], evidence.get("current")
    text = f"AP v{candidate['version']} {candidate['average_precision']:.4f}"
    if current is not None:
        sign = ">=" if evidence["passed"] else "<"
        text += f" {sign} v{current['version']} {current['average_precision']:.4f}"
    text += f" on {evidence['dataset']}"
    return text + (" (forced)" if evidence.get("forced") else "")


def compare_evaluations(adapters: Adapters, name: str, dataset: str, *, as_json: bool) -> None:
    """``models compare NAME --on DATASET``: the evaluations of NAME's versions on it."""
    found = [e for e in adapters.store.list_evaluations(name) if e.dataset_name == dataset]
    if not found and not as_json:
        fail(
            f"no evaluation of {name!r} on dataset {dataset!r}: run "
            f"'pynomaly-workers evaluate {name}@VERSION --dataset {dataset}'"
        )
    emit(
        [evaluation_dict(e) for e in found],
        as_json=as_json,
        human=lambda: click.echo(evaluations_table(found)),
    )
