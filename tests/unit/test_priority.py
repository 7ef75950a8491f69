"""Bulk work runs on a thread of lower priority; the calling thread keeps its own."""

from __future__ import annotations

import contextvars
import os
import threading

import pytest

from pynomaly_workers.adapters.priority import run_niced

job: contextvars.ContextVar[str | None] = contextvars.ContextVar("job", default=None)


def own_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_bulk_work_runs_niced_and_the_caller_keeps_its_priority() -> None:
    before = own_nice()
    token = job.set("job-7")
    try:
        seen = run_niced(lambda: (own_nice(), job.get(), threading.get_native_id()), nice=5)
    finally:
        job.reset(token)

    assert seen[0] == min(before + 5, 19)
    assert seen[1] == "job-7"  # log lines still name the job
    assert seen[2] != threading.get_native_id()
    assert own_nice() == before


def test_an_error_reaches_the_caller() -> None:
    def fail() -> None:
        raise ValueError("bad chunk")

    with pytest.raises(ValueError, match="bad chunk"):
        run_niced(fail, nice=5)


def test_nice_zero_runs_on_the_calling_thread() -> None:
    assert run_niced(threading.get_native_id, nice=0) == threading.get_native_id()


def test_log_lines_written_by_bulk_work_name_its_task() -> None:
    import json
    import logging

    from pynomaly_workers.observability import JsonFormatter, current_task_ref

    # Given a task running (Celery's current_task is per thread; the context is copied)
    token = current_task_ref.set(("pynomaly.detect.chunk", "task-9", {"job_id": "job-9"}))
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "slow chunk", None, None)
    try:
        # When bulk work logs on its own thread
        line = run_niced(lambda: JsonFormatter().format(record), nice=1)
    finally:
        current_task_ref.reset(token)

    # Then the JSON line names the task, its id and its job
    data = json.loads(line)
    assert (data["task_name"], data["task_id"], data["job_id"]) == (
        "pynomaly.detect.chunk",
        "task-9",
        "job-9",
    )
