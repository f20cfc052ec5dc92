"""Running untrusted computation (a template's expansion) in a forked child under a time and
memory limit, so that a hostile template cannot hang or exhaust the machine.

`run_bounded(fn, seconds, memory_bytes)` forks; the child sets RLIMIT_AS to its current size plus
`memory_bytes` and a CPU-time timer of `seconds` (ITIMER_PROF, raising `TimeLimit` in the
child's Python code), runs `fn` and sends back its result (pickled) or the DatagenError it raised.
CPU time rather than wall time, so that a busy machine does not fail a template that is merely
slow to get scheduled. The parent waits at most WALL_FACTOR x `seconds` plus a grace period of
wall time, then kills the child (a C call that ignores the timer, or a child starved of CPU). Forking keeps `fn` a plain closure: nothing needs to be importable or picklable but the
result. Where fork is unavailable, `fn` runs in this process without bounds.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import sys
import time
from typing import Any, Callable

from datagen.errors import DatagenError

GRACE_S = 2.0
WALL_FACTOR = 4  # wall seconds allowed per CPU second before the parent kills the child


class TimeLimit(BaseException):
    """Raised in the child when its time is up (a BaseException, so `except Exception` does not swallow it)."""


class Exceeded(Exception):
    """The child ran out of time or memory without a DatagenError of its own; `what` says which."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


def _on_alarm(signum, frame):
    raise TimeLimit()


def _address_space() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _child(fn: Callable[[], Any], seconds: float, memory_bytes: int, write_fd: int) -> None:
    import resource

    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = _address_space() + memory_bytes
        limit = min([limit] + [bound for bound in (soft, hard) if bound != resource.RLIM_INFINITY])
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        signal.signal(signal.SIGPROF, _on_alarm)
        signal.setitimer(signal.ITIMER_PROF, seconds)
        try:
            result: tuple = ("ok", fn())
        except DatagenError as err:
            result = ("error", err.message, err.source, err.field)
        except TimeLimit:
            result = ("exceeded", "time")
        except MemoryError:
            result = ("exceeded", "memory")
        signal.setitimer(signal.ITIMER_PROF, 0)
        try:
            data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        except MemoryError:
            data = pickle.dumps(("exceeded", "memory"))
        view = memoryview(data)
        while view:
            view = view[os.write(write_fd, view[: 1 << 20]):]
    except BaseException:  # noqa: BLE001 - the parent sees a child that sent nothing
        pass
    finally:
        os._exit(0)


def run_bounded(fn: Callable[[], Any], seconds: float, memory_bytes: int) -> Any:
    """fn() computed in a child process; raises the child's DatagenError, or Exceeded("time" |
    "memory") when it used more than `seconds` of CPU time (or WALL_FACTOR x `seconds` + GRACE_S of
    wall time) or needed more than `memory_bytes` more memory."""
    if not hasattr(os, "fork") or not sys.platform.startswith("linux"):
        return fn()
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(fn, seconds, memory_bytes, write_fd)
    os.close(write_fd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + WALL_FACTOR * seconds + GRACE_S
    killed = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                killed = True
                break
            ready, _, _ = select.select([read_fd], [], [], left)
            if ready:
                chunk = os.read(read_fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)
    if killed:
        raise Exceeded("time")
    if not chunks:
        raise Exceeded("memory")  # the child died without a word: the kernel's memory limit is the usual cause
    result = pickle.loads(b"".join(chunks))
    if result[0] == "ok":
        return result[1]
    if result[0] == "error":
        raise DatagenError(result[1], result[2], result[3])
    raise Exceeded(result[1])
