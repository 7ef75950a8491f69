"""Model versions and references to them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pynomaly_workers.contract import ALGORITHMS, ALIAS_PATTERN, NAME_PATTERN
from pynomaly_workers.domain.errors import InvalidInput
from pynomaly_workers.domain.profile import TrainingProfile
from pynomaly_workers.domain.scoring import ScoreStats

__all__ = [
    "ALGORITHMS",
    "AliasMove",
    "ModelRef",
    "ModelVersion",
    "check_alias",
    "check_model_name",
    "parse_model_ref",
]
_NAME = re.compile(NAME_PATTERN)
_ALIAS = re.compile(ALIAS_PATTERN)


@dataclass(frozen=True, slots=True)
class ModelRef:
    """``name`` (the active version), ``name@version`` (that exact version) or
    ``name@alias`` (the version a movable alias such as ``champion`` points at)."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name if self.version is None else f"{self.name}@{self.version}"

    @property
    def is_exact(self) -> bool:
        """True for ``name@version``: it always names the same immutable version."""
        return self.version is not None


MAX_VERSION = 2**31 - 1
"""Versions are 32-bit integers in the database; a larger one is bad input, not an error
the database raises (which the task layer would retry as transient)."""


def parse_model_ref(text: object) -> ModelRef:
    """Parse ``'name'``, ``'name@3'`` or ``'name@champion'``; raise
    :class:`InvalidInput` on anything else."""
    if not isinstance(text, str):
        raise InvalidInput(
            f"model must be a string like 'name', 'name@3' or 'name@champion', got {text!r}"
        )
    name, sep, suffix = text.partition("@")
    check_model_name(name)
    if not sep:
        return ModelRef(name)
    if suffix.isascii() and suffix.isdigit():
        # Length first: int() refuses text past 4,300 digits with a ValueError.
        if len(suffix.lstrip("0")) > len(str(MAX_VERSION)) or int(suffix) > MAX_VERSION:
            raise InvalidInput(f"model version in {text!r} is past the largest, {MAX_VERSION}")
        if int(suffix) < 1:
            raise InvalidInput(f"model version in {text!r} must be a positive integer")
        return ModelRef(name, int(suffix))
    if not _ALIAS.fullmatch(suffix):
        raise InvalidInput(
            f"{suffix!r} in {text!r} is neither a version number nor an alias "
            "(1-64 letters, digits, '_' or '-', starting with a letter)"
        )
    return ModelRef(name, alias=suffix)


def check_alias(alias: str) -> str:
    """Return ``alias`` if it is a valid alias name (not a number), else raise."""
    if not _ALIAS.fullmatch(alias):
        raise InvalidInput(
            f"alias {alias!r} is invalid: use 1-64 letters, digits, '_' or '-', starting "
            "with a letter (a number would read as a version)"
        )
    return alias


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a valid model or dataset name, else raise."""
    if not _NAME.fullmatch(name):
        raise InvalidInput(
            f"name {name!r} is invalid: use 1-128 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True, slots=True)
class AliasMove:
    """One move of an alias: where it points now and where it pointed before."""

    name: str
    alias: str
    version: int
    previous_version: int | None
    action: str  # "set" or "rollback"
    moved_at: datetime | None = None
    actor: str | None = None
    reason: str | None = None
    evidence: dict[str, Any] | None = None
    """The evaluations a ``--require-better`` move was judged on (and whether it was
    forced past them)."""


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One immutable, registered version of a model."""

    id: int
    name: str
    version: int
    algorithm: str
    artifact_sha256: str
    onnx_sha256: str | None
    n_features: int
    stats: ScoreStats
    params: dict[str, Any] = field(default_factory=dict)
    parity_max_error: float | None = None
    parity_tolerance: float | None = None
    n_training_rows: int = 0
    active: bool = True
    created_at: datetime | None = None
    profile: TrainingProfile | None = None
    """What the version learned about its training data (None for versions trained
    before profiles were kept)."""
    trained_threshold: float | None = None
    """The threshold it was registered with, when a recorded threshold change
    (``models threshold``) put another in force; then :attr:`stats` holds the one in
    force (``domain.thresholds.effective_stats``). None: the trained one is in force."""

    @property
    def threshold(self) -> float:
        """Scores above this are anomalies (the threshold in force)."""
        return self.stats.threshold

    @property
    def content_hash(self) -> str:
        """Identifies what this version computes; keys the prediction cache."""
        return self.artifact_sha256

    @property
    def label(self) -> str:
        """``name@version``."""
        return f"{self.name}@{self.version}"
