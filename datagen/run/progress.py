"""Progress of one stage: a tqdm bar on a terminal, plain log lines elsewhere (CI, nohup, pipes).

A log line reads `[2/8] verify: 48/96 rows, 105 rows/s, ETA 00:01`; generation adds tokens/s.
One line when a stage starts, then at most one every `interval` seconds (checked as shards finish)
and one when it ends; no line holds '\\r'.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

MODES: tuple[str, ...] = ("auto", "bar", "log", "none")
LOG_INTERVAL_S = 10.0


def resolve_mode(progress: bool | str, stream: TextIO) -> str:
    """True/'auto' -> a bar when `stream` is a terminal, else log lines; False -> 'none'."""
    if progress is True or progress == "auto":
        isatty = getattr(stream, "isatty", None)
        return "bar" if isatty is not None and isatty() else "log"
    if progress is False:
        return "none"
    if progress not in MODES:
        raise ValueError(f"progress must be one of {', '.join(MODES)}, got {progress!r}")
    return str(progress)


def _rate(count: float, seconds: float) -> str:
    return tqdm.format_sizeof(count / seconds) if seconds > 0 else "?"


class StageProgress:
    """Counts the units (prompts, rows) a stage has handled and the tokens it generated."""

    def __init__(self, label: str, position: str, total: int, unit: str, progress: bool | str = True,
                 stream: TextIO | None = None, interval: float = LOG_INTERVAL_S):
        self.stream = stream if stream is not None else sys.stderr  # looked up now: tests swap sys.stderr
        self.mode = resolve_mode(progress, self.stream)
        self.desc = f"{position} {label}"
        self.total, self.unit, self.interval = total, unit, interval
        self.done = self.tokens = 0
        self.started = self._last_line = time.perf_counter()
        self._bar = None
        self._logged: int | None = None  # units done at the last log line
        if self.mode == "bar":
            self._bar = tqdm(total=total, desc=self.desc, unit=unit, file=self.stream, dynamic_ncols=True)
        elif self.mode == "log":
            start = f"{total} {unit}s to do" if total else "nothing to do (finished earlier)"
            print(f"{self.desc}: {start}", file=self.stream, flush=True)
            self._logged = 0

    def update(self, n: int, tokens: int | None = None) -> None:
        self.done += n
        if tokens is not None:
            self.tokens += tokens
        if self._bar is not None:
            if tokens is not None:
                self._bar.set_postfix_str(f"{_rate(self.tokens, time.perf_counter() - self.started)} tok/s", refresh=False)
            self._bar.update(n)
        elif self.mode == "log" and time.perf_counter() - self._last_line >= self.interval:
            self._log()

    def line(self) -> str:
        elapsed = time.perf_counter() - self.started
        parts = [f"{self.done}/{self.total} {self.unit}s", f"{_rate(self.done, elapsed)} {self.unit}s/s"]
        if self.tokens:
            parts.append(f"{_rate(self.tokens, elapsed)} tok/s")
        if self.done >= self.total:
            parts.append(f"done in {tqdm.format_interval(elapsed)}")
        elif self.done:
            parts.append(f"ETA {tqdm.format_interval(elapsed * (self.total - self.done) / self.done)}")
        return f"{self.desc}: " + ", ".join(parts)

    def _log(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self._last_line, self._logged = time.perf_counter(), self.done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "log" and self._logged != self.done:
            self._log()
        self.mode = "none"  # a second close says nothing

    def __enter__(self) -> "StageProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
