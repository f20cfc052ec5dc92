"""Benchmark 5: the python_tests verifier's cost per candidate (sandbox start + tests).

    .venv/bin/python benchmarks/bench_sandbox.py [--candidates 40] [--workers 1]

Every candidate is a shipped reference solution of templates/python_functions.yaml, fenced as a
model would write it, checked by `PythonTestsVerifier.check` exactly as the verify stage does
(sandbox start, the candidate's import, the template's tests, teardown). Reported: median and
p90 wall seconds per candidate with one worker, the CPU seconds per candidate of datagen and all
the sandbox's processes (steadier than wall time on a shared machine), and candidates per second with `--workers`
threads (the verify stage's pool). The baseline is a bare `python -I -S -c pass` of the same
interpreter, the floor any process-per-candidate design pays.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datagen.steps.verify import PythonTestsVerifier  # noqa: E402


class CpuMeter:
    """CPU seconds of this process and every process it starts, wherever they are reparented:
    a cpuacct cgroup (v1) this process moves into. rusage would miss the sandboxed processes,
    which bwrap's init reaps, not datagen. None where no such cgroup can be made."""

    def __init__(self):
        self.group = Path("/sys/fs/cgroup/cpuacct") / f"bench-sandbox-{os.getpid()}"
        try:
            self.group.mkdir()
            (self.group / "cgroup.procs").write_text(str(os.getpid()))
        except OSError:
            self.group = None

    def seconds(self) -> float | None:
        return int((self.group / "cpuacct.usage").read_text()) / 1e9 if self.group else None

    def close(self) -> None:
        if self.group:
            (self.group.parent / "cgroup.procs").write_text(str(os.getpid()))
            self.group.rmdir()


def rows() -> list[dict]:
    tasks = yaml.safe_load((REPO / "templates" / "python_functions.yaml").read_text())["slots"]["task"]
    return [{"completion": f"Here it is.\n\n```python\n{t['solution']}```\n", "tests": t["tests"]} for t in tasks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    verifier = PythonTestsVerifier()
    tasks = rows()
    batch = [tasks[i % len(tasks)] for i in range(args.candidates)]

    verifier.check(batch[0])  # warm the page cache
    seconds, failed = [], 0
    meter = CpuMeter()
    cpu_before = meter.seconds()
    for row in batch:
        started = time.perf_counter()
        verdict = verifier.check(row)
        seconds.append(time.perf_counter() - started)
        failed += not verdict.keep
    cpu_after = meter.seconds()
    meter.close()
    floor = []
    for _ in range(10):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True)
        floor.append(time.perf_counter() - started)
    started = time.perf_counter()
    with ThreadPoolExecutor(args.workers) as pool:
        parallel = list(pool.map(verifier.check, batch))
    elapsed = time.perf_counter() - started
    seconds.sort()
    print(f"candidates: {len(batch)} reference solutions, {failed} failed (must be 0)")
    print(f"one worker: median {statistics.median(seconds) * 1000:.0f} ms, p90 {seconds[int(0.9 * len(seconds))] * 1000:.0f} ms per candidate")
    if cpu_before is not None:
        print(f"CPU per candidate (datagen + every sandbox process): {(cpu_after - cpu_before) / len(batch) * 1000:.0f} ms")
    print(f"bare interpreter start (floor): median {statistics.median(floor) * 1000:.0f} ms")
    print(f"{args.workers} workers: {len(batch) / elapsed:.1f} candidates/s ({sum(not v.keep for v in parallel)} failed)")


if __name__ == "__main__":
    main()
