"""Model versions and references to them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pynomaly_workers.contract import ALGORITHMS, NAME_PATTERN
from pynomaly_workers.domain.errors import InvalidInput
from pynomaly_workers.domain.scoring import ScoreStats

__all__ = ["ALGORITHMS", "ModelRef", "ModelVersion", "check_model_name", "parse_model_ref"]
_NAME = re.compile(NAME_PATTERN)


@dataclass(frozen=True, slots=True)
class ModelRef:
    """``name`` (the active version) or ``name@version`` (that exact version)."""

    name: str
    version: int | None = None

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"


def parse_model_ref(text: object) -> ModelRef:
    """Parse ``'name'`` or ``'name@3'``; raise :class:`InvalidInput` on anything else."""
    if not isinstance(text, str):
        raise InvalidInput(f"model must be a string like 'name' or 'name@3', got {text!r}")
    name, sep, version = text.partition("@")
    check_model_name(name)
    if not sep:
        return ModelRef(name)
    if not (version.isascii() and version.isdigit()) or int(version) < 1:
        raise InvalidInput(f"model version in {text!r} must be a positive integer")
    return ModelRef(name, int(version))


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a valid model or dataset name, else raise."""
    if not _NAME.fullmatch(name):
        raise InvalidInput(
            f"name {name!r} is invalid: use 1-128 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


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

    @property
    def threshold(self) -> float:
        """Scores above this are anomalies."""
        return self.stats.threshold

    @property
    def content_hash(self) -> str:
        """Identifies what this version computes; keys the prediction cache."""
        return self.artifact_sha256

    @property
    def label(self) -> str:
        """``name@version``."""
        return f"{self.name}@{self.version}"
