"""What every benchmark reports: the machine, CPU and wall time of a call, and peak memory."""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        memory = float("nan")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return f"{cpu}, {cores} cores, {memory:.0f} GiB RAM, Python {platform.python_version()} on {sys.platform}; load average at start {load}"


@dataclass
class Timed:
    value: Any
    cpu: float  # CPU seconds of this process, all threads: comparable across runs on a busy machine
    wall: float


def timed(fn: Callable[[], Any]) -> Timed:
    cpu, wall = time.process_time(), time.perf_counter()
    value = fn()
    return Timed(value, time.process_time() - cpu, time.perf_counter() - wall)


def rss_mib() -> float:
    return _status("VmRSS")


def reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS counter (VmHWM) for this process; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """Peak resident memory since start or the last reset_peak_rss(), from the kernel's own counter."""
    return _status("VmHWM")


def _status(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")
