"""Isolated work (training) runs in a forked child that gives its memory back."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from pynomaly_workers.adapters.heap import release_free_memory
from pynomaly_workers.adapters.isolation import ChildDied, ForkedIsolation
from pynomaly_workers.domain.errors import InvalidInput
from pynomaly_workers.services.context import InlineIsolation

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")


def test_the_work_runs_in_another_process_and_its_result_comes_back() -> None:
    # Given the forked isolation
    isolation = ForkedIsolation()

    # When work that reports its process runs
    pid, value = isolation.run(lambda: (os.getpid(), [1.5] * 3))

    # Then it ran elsewhere, and its result arrived intact
    assert pid != os.getpid()
    assert value == [1.5, 1.5, 1.5]


def test_what_the_work_imports_stays_in_the_child() -> None:
    # Given a module this process has not imported (a throwaway one)
    name = "pynomaly_isolation_probe_module"
    assert name not in sys.modules

    def work() -> bool:
        sys.modules[name] = type(sys)(name)  # as an import would
        return name in sys.modules

    # When isolated work imports it
    imported_there = ForkedIsolation().run(work)

    # Then the child had it and this process still does not
    assert imported_there
    assert name not in sys.modules


def test_an_exception_comes_back_with_its_type() -> None:
    # Given work that rejects its input (the task maps this type to "fail, no retry")
    def work() -> None:
        raise InvalidInput("training needs at least 10 rows, got 3")

    # When it runs isolated, Then the same exception type is raised here
    with pytest.raises(InvalidInput, match="at least 10 rows"):
        ForkedIsolation().run(work)


def test_an_exception_that_cannot_be_pickled_is_described() -> None:
    class Local(Exception):  # a local class cannot be pickled
        pass

    def work() -> None:
        raise Local("odd")

    with pytest.raises(RuntimeError, match="Local: odd"):
        ForkedIsolation().run(work)


def test_a_child_that_dies_is_reported_not_waited_for() -> None:
    # Given work whose process is killed (out of memory, say)
    def work() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    # When it runs isolated, Then the caller gets an error naming the signal
    with pytest.raises(ChildDied, match="signal 9"):
        ForkedIsolation().run(work)


def test_the_hooks_run_in_the_child_only(tmp_path: Path) -> None:
    # Given hooks that leave a mark with their pid
    marks = tmp_path / "marks"

    def mark(tag: str) -> None:
        with marks.open("a") as out:
            out.write(f"{tag} {os.getpid()}\n")

    isolation = ForkedIsolation(
        after_fork=lambda: mark("after_fork"), before_exit=lambda: mark("before_exit")
    )

    # When work runs
    child = isolation.run(os.getpid)

    # Then both hooks ran, in that order, in the child
    assert marks.read_text().split("\n")[:2] == [f"after_fork {child}", f"before_exit {child}"]
    assert child != os.getpid()


def test_inline_isolation_runs_here() -> None:
    assert InlineIsolation().run(os.getpid) == os.getpid()


def test_releasing_free_memory_gives_pages_back() -> None:
    # Given 64 MB freed in small pieces between survivors, so the heap cannot shrink
    # from its top by itself: free() keeps it all
    pieces, survivors = [], []
    for i in range(16_384):
        pieces.append(bytearray(4096))
        if i % 64 == 0:
            survivors.append(bytearray(64))
    survivors.append(bytearray(64))
    before = _anonymous_kb()
    del pieces
    kept = _anonymous_kb()

    # When freed memory is released
    release_free_memory()

    # Then most of it left the process
    assert before - _anonymous_kb() > 32 * 1024, (before, kept, _anonymous_kb())
    assert len(survivors) == 257


def _anonymous_kb() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1])
    raise AssertionError("no Anonymous line")


class _Finalized:
    """Garbage in a reference cycle whose finalizer leaves a mark, as an inherited
    psycopg connection's warns."""

    def __init__(self, mark: Path) -> None:
        self.mark = mark
        self.cycle = self

    def __del__(self) -> None:
        self.mark.write_text(str(os.getpid()))


def test_the_child_does_not_finalize_what_the_parent_left_for_the_gc(tmp_path: Path) -> None:
    # Given cyclic garbage the parent has not collected yet
    import gc

    mark = tmp_path / "finalized"
    gc.disable()
    try:
        _Finalized(mark)

        # When the isolated work collects garbage (as any allocation-heavy import may)
        collected = ForkedIsolation().run(lambda: gc.collect() >= 0)

        # Then the child finalized none of it (a finalizer that imports, run inside an
        # import, failed that import on Python 3.11)
        assert collected
        assert not mark.exists()
    finally:
        gc.enable()
        gc.collect()
    # and the parent still does, as usual
    assert mark.read_text() == str(os.getpid())


def test_a_dropped_inherited_connection_does_not_warn_in_the_child() -> None:
    import warnings

    def work() -> bool:
        with warnings.catch_warnings(record=True) as caught:
            warnings.warn("unclosed", ResourceWarning, stacklevel=1)
        return not caught

    assert ForkedIsolation().run(work)
