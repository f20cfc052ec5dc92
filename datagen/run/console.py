"""Where engines print: what vLLM, torch and transformers write while an engine starts, generates
or stops (log records, warnings, weight-loading bars, C++ messages) goes to a log file
(OUT/run/engine.log) instead of the console, so that the console shows datagen's own progress
lines and funnel. `--verbose` leaves the console as it is.

The routing is done on the process's file descriptors 1 and 2 (dup2), only while an engine call
runs: Python loggers, `warnings`, tqdm and native code all write through them, also from threads
and child processes started meanwhile (vLLM's engine core keeps the descriptors it was started
with). Between calls the descriptors are the console again, so progress lines printed between two
shards are seen as usual.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class EngineOutput:
    """Sends file descriptors 1 and 2 to `log` (appended, created with its folder) inside
    `routed()`; with `log` None, `routed()` changes nothing. Re-entrant: a call nested in another
    (an engine started from inside a routed call) keeps the outer routing."""

    def __init__(self, log: Path | None):
        self.log = log
        self._depth = 0

    @contextmanager
    def routed(self) -> Iterator[None]:
        if self.log is None or self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self.log.parent.mkdir(parents=True, exist_ok=True)
        _flush()
        target = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(target, 1)
            os.dup2(target, 2)
            self._depth = 1
            try:
                yield
            finally:
                self._depth = 0
                _flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
        finally:
            for fd in (*saved, target):
                os.close(fd)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # a closed or odd stream: nothing to keep apart
            pass
