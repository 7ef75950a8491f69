"""The private internals of other libraries the workers still rely on, in one list, checked
loudly when a worker starts.

Public APIs cover almost everything; what remains is small and named here, with the
module that uses each. ``pyproject.toml`` bounds these libraries to the minor versions
tested (``constraints.txt`` pins them), and :func:`check_internals` refuses to start a
worker whose installed versions lack any of them, instead of a ``getattr(..., None)``
changing behaviour silently:

- kombu's Redis transport: the poller hooks :mod:`.adapters.redis_transport` replaces
  (``_brpop_start`` / ``_brpop_read``) and the QoS methods it extends.
- celery-batches' ``Batches``: the buffers and flush timer ``tasks.detection.release_stale``
  empties after a consumer restart (``_buffer``, ``_pending``, ``_tref``, ``_count``).
- billiard/Celery's ``AsynPool``: the process sets ``tasks.detection.idle_processes``
  reads (``_all_inqueues``, ``_busy_workers``, ``outbound_buffer``), and what
  ``pool.ResultHandler`` reads on with at a warm shutdown (``fileno_to_outq``,
  ``join_exited_workers``, ``_flush_outqueue``, ``_state``; ``on_state_change`` is made
  at start).
- kombu's transport registry (``TRANSPORT_ALIASES``, ``_transport_cache``), where
  ``celery_config.transport_name`` installs the Redis transport under kombu's own alias.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

TESTED = {"kombu": "5.7", "celery": "5.6", "celery-batches": "0.11", "billiard": "4.3"}
"""Library -> the minor version the internals were tested with (pyproject bounds them)."""


class MissingInternals(RuntimeError):
    """The installed libraries lack internals the workers rely on; the text says which."""


def _assigned_in_init(cls: type, name: str) -> bool:
    init: Any = cls.__dict__.get("__init__")
    code = getattr(init, "__code__", None)
    return code is not None and name in code.co_names


def _has(cls: type, name: str) -> bool:
    return hasattr(cls, name) or any(_assigned_in_init(k, name) for k in cls.__mro__)


def missing_internals() -> list[str]:
    """Every relied-on internal the installed libraries lack, as ``module.Class.name``."""
    from celery.concurrency.asynpool import AsynPool, ResultHandler
    from celery_batches import Batches
    from kombu import transport as kombu_transport

    from pynomaly_workers.adapters import redis_transport

    missing = [f"kombu.transport.redis.{name}" for name in redis_transport.missing_internals()]
    for cls, names in (
        (Batches, ("_buffer", "_pending", "_tref", "_count")),
        (AsynPool, ("_all_inqueues", "_busy_workers", "outbound_buffer")),
        (
            ResultHandler,
            ("fileno_to_outq", "join_exited_workers", "_flush_outqueue", "_state"),
        ),
    ):
        missing += [f"{cls.__module__}.{cls.__name__}.{n}" for n in names if not _has(cls, n)]
    for name in ("TRANSPORT_ALIASES", "_transport_cache"):
        if not hasattr(kombu_transport, name):
            missing.append(f"kombu.transport.{name}")
    return missing


def installed_versions() -> dict[str, str]:
    versions = {}
    for name in TESTED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def check_internals() -> None:
    """Raise :class:`MissingInternals`, naming each missing internal and the versions
    installed and tested, if any relied-on internal is gone."""
    missing = missing_internals()
    if not missing:
        return
    installed = ", ".join(f"{k} {v}" for k, v in installed_versions().items())
    tested = ", ".join(f"{k} {v}.x" for k, v in TESTED.items())
    raise MissingInternals(
        "this worker relies on internals the installed libraries lack: "
        f"{', '.join(missing)}. Installed: {installed}; tested: {tested}. Install the "
        "tested versions (pip install -c constraints.txt pynomaly-workers)."
    )
