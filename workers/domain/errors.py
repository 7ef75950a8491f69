"""Errors the core raises. Two families, because tasks treat them differently:

* :class:`InvalidInput` and its children are the caller's mistake. The job is failed with
  the message and the task is not retried: retrying cannot fix the input.
* Everything else that escapes a service (a database or Redis outage) is treated as
  transient by the task layer and retried with backoff.
"""

from __future__ import annotations


class PynomalyError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidInput(PynomalyError):
    """The request cannot succeed as written; the message says what to change."""

    code = "invalid_input"


class InvalidRecords(InvalidInput):
    """Records are empty, ragged, non-numeric, non-finite or of the wrong width."""

    code = "invalid_records"


class PayloadTooLarge(InvalidInput):
    """More rows or features than one message may carry."""

    code = "payload_too_large"


class UnknownModel(InvalidInput):
    """No registered model version matches the reference."""

    code = "unknown_model"


class UnknownDataset(InvalidInput):
    """No registered dataset has that name."""

    code = "unknown_dataset"


class InvalidSource(InvalidInput):
    """A source file is missing, unreadable, outside the allowed roots or malformed."""

    code = "invalid_source"


class InvalidMessage(InvalidInput):
    """The task's keyword arguments do not follow the public contract."""

    code = "invalid_message"


class ArtifactCorrupt(PynomalyError):
    """A stored model artifact does not match its recorded sha256."""

    code = "artifact_corrupt"


class InvalidLabels(InvalidInput):
    """A dataset's label column is missing, holds something other than 0/1, or has a
    single class (nothing to rank anomalies against)."""

    code = "invalid_labels"
