"""The :class:`~pynomaly_workers.domain.ports.Isolation` on ``os.fork``: work runs in a
short-lived child of the pool process, and everything it allocated or imported goes
away with the child.

Why: a pool process that trains keeps the fit's heap (glibc does not give most of it
back) and skl2onnx/onnx imports for the rest of its life, about 60 MB per process that
ever trained. A forked child starts with the parent's modules already loaded (shared
copy-on-write pages, so no import cost) and hands back only the result, pickled through a
pipe between two processes of this worker (never from a message or a cache).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
import pickle
import signal
import sys
import traceback
import warnings
from collections.abc import Callable
from typing import TypeVar, cast

log = logging.getLogger(__name__)

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1


class ChildDied(RuntimeError):
    """The child ended without a result (killed, or out of memory)."""


class ForkedIsolation:
    """Runs work in a forked child; falls back to running it here where ``fork`` does
    not exist. ``after_fork`` runs first in the child (drop inherited connections),
    ``before_exit`` last (close the child's own)."""

    def __init__(
        self,
        *,
        after_fork: Callable[[], None] = lambda: None,
        before_exit: Callable[[], None] = lambda: None,
    ) -> None:
        self._after_fork = after_fork
        self._before_exit = before_exit

    def run(self, work: Callable[[], T]) -> T:
        if not hasattr(os, "fork"):
            return work()
        reader, writer = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            os.close(reader)
            self._child(work, writer, parent=parent)  # never returns
        os.close(writer)
        try:
            with os.fdopen(reader, "rb") as pipe:
                payload = pipe.read()
        except BaseException:
            # A soft time limit or a shutdown interrupted the wait: the child must not
            # outlive the task it worked for.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            raise
        finally:
            _, status = os.waitpid(pid, 0)
        return cast(T, _unpack(payload, status))

    def _child(self, work: Callable[[], T], writer: int, *, parent: int) -> None:
        """In the child: run ``work``, write (ok, value) to the pipe, exit at once
        (no atexit hooks or finalizers of the parent's, no Celery shutdown)."""
        code = 0
        try:
            _die_with_parent(parent)
            # What the parent allocated is not this child's to finalize. The cyclic GC,
            # run by allocations in the middle of an import, finalized inherited psycopg
            # connections; their ResourceWarning imported in turn, and Python 3.11's
            # module lock bookkeeping (one entry per thread, not re-entrant) failed the
            # outer import with ``KeyError: <thread id>`` (seen in training's skl2onnx
            # import and in calibration). Inherited objects stay frozen, and a dropped
            # inherited connection does not warn.
            gc.freeze()
            warnings.simplefilter("ignore", ResourceWarning)
            self._after_fork()
            try:
                payload = pickle.dumps((True, work()), protocol=pickle.HIGHEST_PROTOCOL)
            except BaseException as exc:
                # the traceback stays here: the parent gets it as a note on the exception
                exc.add_note("in the isolated child:\n" + "".join(traceback.format_exc()))
                payload = pickle.dumps((False, _picklable(exc)), protocol=pickle.HIGHEST_PROTOCOL)
            finally:
                self._before_exit()
            with os.fdopen(writer, "wb") as pipe:
                pipe.write(payload)
        except BaseException:
            log.exception("isolated work could not report its result")
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)


def _unpack(payload: bytes, status: int) -> object:
    if not payload:
        raise ChildDied(f"isolated work ended without a result ({_describe(status)})")
    ok, value = pickle.loads(payload)  # noqa: S301 - written by our own forked child
    if ok:
        return value
    raise value


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _picklable(exc: BaseException) -> BaseException:
    """``exc`` itself if it survives the pipe, else a RuntimeError saying what it was
    (the type decides retry or fail in the task, so keep it whenever possible)."""
    try:
        pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own bytes, just made
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel kills the child if the pool process dies (a hard time limit
    SIGKILLs it), so no training outlives its task."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(1)
