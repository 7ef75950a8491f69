"""What every task shares: which errors are transient, and the retry policy for them."""

from __future__ import annotations

from typing import Any

import redis.exceptions
import sqlalchemy.exc
from kombu.exceptions import OperationalError as KombuOperationalError

from pynomaly_workers.domain.errors import InvalidInput
from pynomaly_workers.settings import Settings

# Outages that retrying fixes: the database or Redis is down, restarting or overloaded.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    KombuOperationalError,
    ConnectionError,
    TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    """True for an outage retrying fixes: one of :data:`TRANSIENT_ERRORS`, or any database
    error that cost the connection (e.g. the server ended an idle-in-transaction session,
    which psycopg reports as an ``InternalError``)."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    return isinstance(exc, sqlalchemy.exc.DBAPIError) and bool(exc.connection_invalidated)


def retry_options(settings: Settings) -> dict[str, Any]:
    """Celery task options: exponential backoff with full jitter on transient errors;
    bad input is an expected outcome (``throws``), logged without a traceback."""
    return {
        "bind": True,
        "autoretry_for": TRANSIENT_ERRORS,
        "retry_backoff": 1,
        "retry_backoff_max": settings.retry_backoff_max,
        "retry_jitter": True,
        "max_retries": settings.retry_max,
        "throws": (InvalidInput,),
    }
