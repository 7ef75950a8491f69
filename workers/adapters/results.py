"""Task results of a whole micro-batch, stored in one Redis round trip instead of two
per job.

Celery's ``Backend.store_result`` reads each task's stored state (a result that is
already ``SUCCESS`` is never overwritten: a redelivered job must not replace what its
caller may have read) and then writes and publishes the new one: two round trips per
job, which at a few hundred small jobs a second were the largest Redis cost left in a
pool process. :func:`store_results` does the same for every job of a batch in one
server-side script (check, ``SET``, ``PUBLISH``; atomic, so no other writer can slip
in between the check and the write), building each stored value with the backend's own
methods, so a result reads back exactly as Celery wrote it. A result serializer other
than JSON, which the script cannot read, gets one ``MGET`` and one pipeline instead.

Anything this does not cover — a backend other than Redis, a request in a chord or a
chain, a failed round trip — falls back to Celery's own per-job calls, with their
retries.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celery import states
from celery.backends.redis import RedisBackend
from redis.commands.core import Script

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StoredResult:
    """One task's outcome: a result for ``SUCCESS``, an exception for ``FAILURE``."""

    task_id: str
    result: Any
    state: str
    request: Any = None


def store_results(backend: Any, results: Sequence[StoredResult]) -> None:
    """Store every result as Celery's ``mark_as_done`` / ``mark_as_failure`` would."""
    batched: list[StoredResult] = []
    single: list[StoredResult] = []
    for item in results:
        (batched if _batchable(backend, item) else single).append(item)
    if batched:
        try:
            _store_batched(backend, batched)
        except Exception as exc:  # Celery's per-job path retries where it can
            log.warning("batched result write failed (%s); writing one by one", exc)
            single = [*batched, *single]
    for item in single:
        _store_one(backend, item)


def _batchable(backend: Any, item: StoredResult) -> bool:
    request = item.request
    return (
        isinstance(backend, RedisBackend)
        and item.state in (states.SUCCESS, states.FAILURE)
        and not getattr(request, "ignore_result", False)
        and not getattr(request, "chord", None)
        and not getattr(request, "chain", None)
    )


# KEYS: the results' keys; ARGV[1]: seconds to keep them (0: for ever); ARGV[1 + i]: the
# value for KEYS[i]. A key whose stored result is SUCCESS is left alone.
_STORE = Script(
    None,  # type: ignore[arg-type]  # always called with a client; EVALSHA, loaded on NOSCRIPT
    b"""
local ttl = tonumber(ARGV[1])
local written = 0
for i, key in ipairs(KEYS) do
  local stored = redis.call('GET', key)
  local final = false
  if stored then
    local ok, meta = pcall(cjson.decode, stored)
    final = ok and type(meta) == 'table' and meta['status'] == 'SUCCESS'
  end
  if not final then
    local value = ARGV[i + 1]
    if ttl > 0 then
      redis.call('SETEX', key, ttl, value)
    else
      redis.call('SET', key, value)
    end
    redis.call('PUBLISH', key, value)
    written = written + 1
  end
end
return written
""",
)


def _encoded(backend: Any, item: StoredResult) -> Any:
    result = backend.encode_result(item.result, item.state)
    meta = backend._get_result_meta(
        result=result, state=item.state, traceback=None, request=item.request
    )
    meta["task_id"] = item.task_id
    return backend.encode(meta)


def _store_batched(backend: Any, items: Sequence[StoredResult]) -> None:
    keys = [backend.get_key_for_task(item.task_id) for item in items]
    if backend.serializer == "json":
        values = [_encoded(backend, item) for item in items]
        _STORE(keys=keys, args=[int(backend.expires or 0), *values], client=backend.client)
        return
    current = backend.client.mget(keys)
    with backend.client.pipeline() as pipe:
        for item, key, stored in zip(items, keys, current, strict=True):
            if stored is not None and backend.decode_result(stored)["status"] == states.SUCCESS:
                continue  # never replace a result a caller may already have read
            value = _encoded(backend, item)
            if backend.expires:
                pipe.setex(key, backend.expires, value)
            else:
                pipe.set(key, value)
            pipe.publish(key, value)
        pipe.execute()


def _store_one(backend: Any, item: StoredResult) -> None:
    if item.state == states.SUCCESS:
        backend.mark_as_done(item.task_id, item.result, request=item.request)
    else:
        backend.mark_as_failure(
            item.task_id, item.result, request=item.request, call_errbacks=False
        )
