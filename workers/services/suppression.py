"""Suppression rules as operators handle them: add one for a known model (its feature
checked against what the model has), list them with what each suppressed, remove one
(kept, with who removed it). Detection reads the live ones through
``Adapters.suppressions`` (``services/detection/scoring.py``)."""

from __future__ import annotations

from pynomaly_workers.domain.errors import UnknownModel
from pynomaly_workers.domain.models import ModelRef, ModelVersion, check_model_name
from pynomaly_workers.domain.ports import Suppressions
from pynomaly_workers.domain.suppression import (
    RuleDraft,
    SuppressionError,
    SuppressionRule,
    check_draft,
    model_features,
    parse_until,
)
from pynomaly_workers.services.context import Adapters

KNOWN_SHOWN = 5
"""Model names a refusal of an unknown one lists."""


def add_rule(
    adapters: Adapters,
    *,
    model: str,
    until: str,
    reason: str,
    actor: str,
    entity: str | None = None,
    feature: str | None = None,
    between: tuple[float, float] | None = None,
) -> SuppressionRule:
    """Store a rule for model name ``model``; raise :class:`SuppressionError` (or
    ``InvalidInput``) with what to do when it cannot be."""
    now = adapters.clock.now()
    version = model_to_suppress(adapters, check_model_name(model))
    low, high = between if between is not None else (None, None)
    draft = RuleDraft(
        model_name=model,
        until=parse_until(until, now=now),
        reason=reason,
        actor=actor,
        entity=entity,
        feature=feature,
        low=low,
        high=high,
    )
    features = features_of(version)
    return suppressions_of(adapters).add_rule(
        check_draft(draft, now=now, features=features), now=now
    )


def model_to_suppress(adapters: Adapters, name: str) -> ModelVersion:
    """The version whose features a rule for ``name`` is checked against: the active
    one, else the newest; an unknown name raises, listing a few known ones."""
    try:
        return adapters.store.get_model(ModelRef(name))
    except UnknownModel:
        newest = adapters.store.list_models(name=name, limit=1)
        if newest:
            return newest[0]
    known = _known_names(adapters, name)
    listed = f"; known models include: {', '.join(known)}" if known else "; none is registered"
    raise SuppressionError(
        f"no model named {name!r}{listed} ('pynomaly-workers models' lists them all)"
    )


def _known_names(adapters: Adapters, name: str) -> list[str]:
    """A few model names, those containing ``name``'s first letters first."""
    names: list[str] = []
    for match in (name[:3], None):
        for version in adapters.store.list_models(match=match, limit=50):
            if version.name not in names:
                names.append(version.name)
    return names[:KNOWN_SHOWN]


def features_of(version: ModelVersion) -> tuple[str, ...]:
    """The version's features as rules name them."""
    names = version.profile.names if version.profile is not None else None
    return model_features(names, version.n_features)


def remove_rule(adapters: Adapters, rule_id: int, *, by: str) -> SuppressionRule:
    """Mark rule ``rule_id`` removed by ``by``; the rule and its count are kept."""
    return suppressions_of(adapters).remove_rule(rule_id, by=by, now=adapters.clock.now())


def list_rules(
    adapters: Adapters, *, model: str | None = None, ended: bool = False
) -> list[SuppressionRule]:
    """The live rules, newest first (with ``ended``, the expired and removed ones too)."""
    return suppressions_of(adapters).list_rules(now=adapters.clock.now(), model=model, ended=ended)


def suppressions_of(adapters: Adapters) -> Suppressions:
    """The suppression rules' store; bootstrap always wires one."""
    if adapters.suppressions is None:
        raise SuppressionError("suppression rules are not configured in these adapters")
    return adapters.suppressions
