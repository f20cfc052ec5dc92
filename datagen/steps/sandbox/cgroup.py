"""A cgroup per sandbox run, bounding the memory and the process count of its whole tree.

`Cgroup.create(name, memory_bytes, max_processes)` returns a group in the cgroup v2 hierarchy
(memory.max, memory.swap.max, pids.max) or, on a v1 machine, one in the memory and the pids
hierarchies (memory.limit_in_bytes, memory.memsw.limit_in_bytes, pids.max), below the cgroup
datagen itself runs in; None where neither is writable (no root, no delegation, controllers not
enabled), in which case the sandbox falls back to per-process rlimits (see datagen.steps.sandbox).
`procs_files` are the files a process writes its pid to in order to join; `oom_killed()` says
whether the kernel killed something in it for memory; `remove()` deletes the (empty) group.

Groups are named `datagen-sandbox-<pid of datagen>-<n>`, so `remove_stale()` can delete those
of a datagen that was killed (an empty cgroup holds no files, only a name).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PREFIX = "datagen-sandbox-"


def _own_paths() -> dict[str, str]:
    """controller ('' for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    paths = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _writable_dir(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK)


def parents() -> dict[str, Path] | None:
    """Where new groups go: {'v2': dir} or {'memory': dir, 'pids': dir}; None if nowhere."""
    try:
        own = _own_paths()
    except OSError:
        return None
    if "memory" in own and "pids" in own:  # v1 (or hybrid with v1 controllers)
        found = {c: ROOT / c / own[c].lstrip("/") for c in ("memory", "pids")}
        if all(_writable_dir(p) for p in found.values()):
            return found
        return None
    if "" in own:
        base = ROOT / own[""].lstrip("/")
        try:
            enabled = (base / "cgroup.subtree_control").read_text().split()
        except OSError:
            return None
        if {"memory", "pids"} <= set(enabled) and _writable_dir(base):
            return {"v2": base}
    return None


@dataclass
class Cgroup:
    dirs: dict[str, Path]

    @classmethod
    def create(cls, name: str, memory_bytes: int, max_processes: int) -> Cgroup | None:
        where = parents()
        if where is None:
            return None
        made: dict[str, Path] = {}
        group = cls(made)
        try:
            for controller, parent in where.items():
                made[controller] = parent / name
                made[controller].mkdir()
            if "v2" in made:
                base = made["v2"]
                (base / "memory.max").write_text(str(memory_bytes))
                _write_if_present(base / "memory.swap.max", "0")
                (base / "pids.max").write_text(str(max_processes))
            else:
                memory = made["memory"]
                (memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
                _write_if_present(memory / "memory.memsw.limit_in_bytes", str(memory_bytes))
                (made["pids"] / "pids.max").write_text(str(max_processes))
        except OSError:
            group.remove()
            return None
        return group

    @property
    def procs_files(self) -> list[str]:
        return [str(path / "cgroup.procs") for path in self.dirs.values()]

    def oom_killed(self) -> bool:
        try:
            if "v2" in self.dirs:
                events = (self.dirs["v2"] / "memory.events").read_text()
                return int(re.search(r"^oom_kill (\d+)", events, re.M).group(1)) > 0
            control = (self.dirs["memory"] / "memory.oom_control").read_text()
            return int(re.search(r"^oom_kill (\d+)", control, re.M).group(1)) > 0
        except (OSError, AttributeError, ValueError):
            return False

    def remove(self) -> None:
        for path in self.dirs.values():
            try:
                path.rmdir()
            except FileNotFoundError:
                pass
            except OSError:  # still busy for a moment after the last process was reaped
                _retry_rmdir(path)


def _write_if_present(path: Path, value: str) -> None:
    if path.exists():
        path.write_text(value)


def _retry_rmdir(path: Path) -> None:
    import time

    for _ in range(50):
        time.sleep(0.01)
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            continue


def remove_stale() -> None:
    """Delete the groups of datagen processes that no longer exist (killed before cleaning up)."""
    where = parents()
    for parent in (where or {}).values():
        try:
            entries = list(parent.iterdir())
        except OSError:
            continue
        for entry in entries:
            match = re.fullmatch(re.escape(PREFIX) + r"(\d+)-\d+", entry.name)
            if match and not Path(f"/proc/{match.group(1)}").exists():
                try:
                    entry.rmdir()
                except OSError:
                    pass
