"""The sandbox in which model-generated Python runs, isolated by the operating system (bubblewrap).

`call_functions(code, calls, limits)` runs the candidate's program and then calls its functions
with plain-data arguments, returning each call's outcome as plain data (the python_tests
verifier, which compares those values itself, outside the sandbox: datagen.steps.sandbox.suite).
`run_python(code, limits)` runs a program and reports how it ended. Neither raises for anything
the code does. `unavailable()` says why the sandbox cannot run here (None when it can).

Isolation (Linux, bubblewrap from the Debian package `bubblewrap`, installed by install.sh):
- A private root: /usr (and the /bin, /lib... links into it) and the interpreter's own prefix,
  read-only, with every site-packages / dist-packages directory covered by an empty read-only
  tmpfs; a fresh /proc of its own pid namespace and a minimal /dev, both read-only; and /tmp, the
  working directory, a tmpfs of `disk_mb` (the total disk quota). Nothing else of the host is
  visible: not the project, its templates and reference solutions, /root, /home, /work, other
  users' checkouts or the host's /tmp. The program and the calls travel on stdin; stdout, stderr
  and results go to unnamed (already deleted) host files, so a killed datagen leaves no directory
  behind.
- Namespaces: network (nothing but a loopback of its own), pid (bwrap's init; killing it kills
  the tree), ipc, uts, cgroup; `--die-with-parent` (the tree dies with the datagen thread that
  started it) and `--new-session` (no terminal to inject into). A seccomp filter
  (datagen.steps.sandbox.seccomp) refuses new namespaces and mounts inside, so a nested user namespace
  cannot mount a tmpfs around the disk quota.
- Identity: when datagen runs as root, the harness drops to a uid/gid of its own (flock-allocated
  from an unused high range) before any candidate code runs, so it holds no capability and
  RLIMIT_NPROC (never enforced for uid 0) applies; without root, bwrap runs in an unprivileged
  user namespace, where RLIMIT_NPROC counts the namespace's processes only (Linux >= 5.14).
  The uid locks are empty files in a root-only `<tmp>/datagen-sandbox-uids`: the one thing a
  run keeps on the host, and it holds nothing of any candidate.
- Limits: a cgroup per run (v2, or v1 memory + pids, when datagen may create one: as root on most
  machines) bounds the whole tree's memory (`memory_mb` + `disk_mb`, since tmpfs pages are
  charged to it) and process count (`max_processes`). Without a writable cgroup the bound is
  per process: RLIMIT_AS = `memory_mb` and RLIMIT_NPROC = `max_processes`, so the tree holds at
  most max_processes x memory_mb. rlimits are set either way: CPU seconds per process, address
  space, file size (also of stdout/stderr/results), process count, no core files; the parent
  kills the tree at `wall_seconds`.

Where bubblewrap is missing or cannot create its namespaces, every run ends with status "error"
and `unavailable()` gives the one-line reason (the verifier refuses the recipe with it): there is
no weaker fallback.
"""

from __future__ import annotations

import fcntl
import grp
import itertools
import json
import math
import os
import pwd
import random
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import asdict, dataclass
from glob import glob
from pathlib import Path
from typing import Any

from datagen.steps.sandbox import cgroup, seccomp, values
from datagen.steps.sandbox.cgroup import Cgroup

STATUSES = ("passed", "failed", "timeout", "memory", "killed", "error")

# Documented maxima of the limits (README, verify stage): a recipe asking for more is refused.
MAXIMA = {
    "cpu_seconds": 600,
    "wall_seconds": 3600,
    "memory_mb": 65536,
    "file_size_mb": 4096,
    "disk_mb": 4096,
    "max_processes": 4096,
    "output_chars": 10_000_000,
}


@dataclass(frozen=True)
class SandboxLimits:
    """Per run. Raises ValueError naming the field for a value that is not a finite number in
    (0, MAXIMA[field]]."""

    cpu_seconds: float = 5  # RLIMIT_CPU per process, rounded up to whole seconds
    wall_seconds: float = 10  # the whole tree is killed after this
    memory_mb: int = 512  # the tree's memory with a cgroup; else RLIMIT_AS per process
    file_size_mb: int = 16  # RLIMIT_FSIZE; applies to stdout/stderr and the results too
    disk_mb: int = 32  # size of the sandbox's only writable filesystem (/tmp, the working dir)
    max_processes: int = 32  # pids.max of the cgroup and RLIMIT_NPROC
    output_chars: int = 20_000  # stdout/stderr kept: first and last halves, with a marker between

    def __post_init__(self):
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"SandboxLimits.{name} must be a finite number (got {value!r})")
            if not 0 < value <= MAXIMA[name]:
                raise ValueError(f"SandboxLimits.{name} must be in (0, {MAXIMA[name]}] (got {value!r})")


@dataclass(frozen=True)
class CallOutcome:
    """One call's result: `value` (exact builtin types) when `error` is None; else `error` says
    what went wrong: "ValueError: ..." raised by the call, or a value that is not plain data."""

    value: Any = None
    error: str | None = None


@dataclass(frozen=True)
class SandboxResult:
    """How a run ended.

    status: "passed" (exit 0) | "failed" (non-zero exit: an uncaught exception, sys.exit(n), a
    write past the file-size limit) | "timeout" (wall limit, or SIGXCPU / SIGKILL at the CPU
    limit) | "memory" (MemoryError, ENOMEM, the cgroup's OOM kill, or a signal death near the
    memory limit) | "killed" (any other signal death) | "error" (the sandbox itself could not run).
    detail: one short line, e.g. "ZeroDivisionError: division by zero"; empty when passed.
    calls: in calls mode, one CallOutcome per requested call, None for a call never answered.
    """

    status: str
    returncode: int | None  # of the sandboxed program; negative: killed by that signal
    stdout: str
    stderr: str
    seconds: float
    detail: str
    calls: list[CallOutcome | None] | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_python(code: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run `code` as a script (`__main__`) in the sandbox and classify how it ended."""
    return _run(code, None, limits)


def call_functions(code: str, calls: list[tuple[str, tuple, dict]], limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run `code`, then call its module-level functions: `calls` is a list of (name, args,
    kwargs) with plain-data arguments (datagen.steps.sandbox.values); a name ".x" fetches the module's
    global `x` instead of calling. The outcomes are in `result.calls`, in order."""
    encoded = [[name, values.encode(list(args)), values.encode(dict(kwargs))] for name, args, kwargs in calls]
    return _run(code, encoded, limits)


def unavailable() -> str | None:
    """Why the sandbox cannot run on this machine, as one line; None when a probe run works."""
    if bwrap_path() is None:
        return "bubblewrap (bwrap) is not installed: run install.sh, or apt-get install bubblewrap"
    result = run_python("pass", SandboxLimits(cpu_seconds=5, wall_seconds=20))
    if result.status != "passed":
        return f"the bubblewrap sandbox cannot run here: {result.detail or result.status}"
    return None


# --------------------------------------------------------------------------------------------

_HARNESS = (Path(__file__).parent / "harness.py").read_text(encoding="utf-8")
_DETAIL_CHARS = 300
_MEMORY_MARKERS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory")
_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
_COUNTER = itertools.count()


def bwrap_path() -> str | None:
    return shutil.which("bwrap") or next((p for p in ("/usr/bin/bwrap", "/bin/bwrap") if os.access(p, os.X_OK)), None)


def _run(code: str, calls: list | None, limits: SandboxLimits) -> SandboxResult:
    started = time.monotonic()
    bwrap = bwrap_path()
    if bwrap is None:
        return SandboxResult("error", None, "", "", 0.0, "bubblewrap (bwrap) is not installed: run install.sh")
    identity = group = None
    try:
        identity = _Identity.acquire() if os.geteuid() == 0 else None
        cgroup.remove_stale()
        memory = (limits.memory_mb + limits.disk_mb) * 2**20
        group = Cgroup.create(f"{cgroup.PREFIX}{os.getpid()}-{next(_COUNTER)}", memory, limits.max_processes)
        return _launch(bwrap, code, calls, limits, identity, group, started)
    except (OSError, ValueError) as exc:
        return SandboxResult("error", None, "", "", time.monotonic() - started, _short(f"sandbox could not run: {exc}"))
    finally:
        if group is not None:
            group.remove()
        if identity is not None:
            identity.release()


def _command(bwrap: str, limits: SandboxLimits, as_root: bool, seccomp_fd: int) -> list[str]:
    interpreter = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    args = [bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    if as_root:  # the harness needs these two to drop to the sandbox uid; it holds none after
        args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        args += ["--unshare-user"]
    args += ["--die-with-parent", "--new-session", "--clearenv"]
    for name, value in _ENV.items():
        args += ["--setenv", name, value]
    args += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    prefixes = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix, os.path.dirname(os.path.dirname(interpreter)))}
    for prefix in sorted(prefixes):
        if prefix != "/usr" and not prefix.startswith("/usr/") and prefix != "/":
            args += ["--ro-bind", prefix, prefix]
            # bwrap copies the modes of the folders it creates above a bind (/root is 0700): the
            # sandbox uid must pass through them, and they hold nothing but the path to the bind.
            for ancestor in list(Path(prefix).parents)[:-1]:
                args += ["--chmod", "0755", str(ancestor)]
    for hidden in _package_dirs():
        args += ["--tmpfs", hidden, "--remount-ro", hidden]
    args += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev"]
    args += ["--size", str(limits.disk_mb * 2**20), "--perms", "1777", "--tmpfs", "/tmp"]
    args += ["--remount-ro", "/", "--chdir", "/tmp", "--seccomp", str(seccomp_fd)]
    args += [interpreter, "-I", "-S", "-B", "-c", _HARNESS]
    return args


def _package_dirs() -> list[str]:
    """Installed-package folders of the base interpreter and the system, hidden in the sandbox
    (datagen itself, and so its templates, may be installed in one)."""
    found = set()
    for scheme_vars in ({"base": sys.base_prefix, "platbase": sys.base_exec_prefix},):
        for key in ("purelib", "platlib"):
            found.add(sysconfig.get_paths(vars=scheme_vars)[key])
    for pattern in ("/usr/lib/python3*/*-packages", "/usr/local/lib/python3*/*-packages", "/usr/lib/python3/dist-packages"):
        found.update(glob(pattern))
    return sorted(os.path.realpath(p) for p in found if os.path.isdir(p))


def _launch(bwrap, code, calls, limits, identity, group, started) -> SandboxResult:
    filter_file = tempfile.TemporaryFile()
    with filter_file:
        filter_file.write(seccomp.program())
        filter_file.seek(0)
        return _start(_command(bwrap, limits, identity is not None, filter_file.fileno()), filter_file.fileno(), code, calls, limits, identity, group, started)


def _start(command, filter_fd, code, calls, limits, identity, group, started) -> SandboxResult:
    if group is not None:  # join the cgroup, then become bwrap: the whole tree is inside
        join = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
        command = ["/bin/sh", "-c", join, "sh", *group.procs_files, "--", *command]
    with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as results:
        # The harness writes "ready" to this pipe and closes it before any candidate code runs,
        # so a program cannot pass its own failure off as a sandbox that did not start.
        ready_r, ready_w = os.pipe()
        request = {"code": code, "calls": calls, "limits": asdict(limits), "uid": identity.uid if identity else None,
                   "results_fd": results.fileno(), "ready_fd": ready_w}  # fmt: skip
        stdin.write(json.dumps(request, ensure_ascii=True).encode())
        stdin.seek(0)
        try:
            fds = (results.fileno(), ready_w, filter_fd)
            proc = subprocess.Popen(command, stdin=stdin, stdout=out, stderr=err, pass_fds=fds, start_new_session=True, env=_ENV)
        except OSError:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)
        timed_out = not _wait_exit(proc.pid, time.monotonic() + limits.wall_seconds)
        try:  # bwrap's init dies with it (--die-with-parent), and with the init the whole pid namespace
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = returncode = os.waitstatus_to_exitcode(status)
        if returncode > 128 and returncode - 128 in _SIGNALS:  # bwrap reports a signal death as 128 + signal
            returncode = 128 - returncode
        stdout = _read_output(out, limits.output_chars)
        stderr = _read_output(err, limits.output_chars)
        outcomes = _read_results(results, len(calls)) if calls is not None else None
        os.set_blocking(ready_r, False)
        try:
            ready = os.read(ready_r, 6) == b"ready\n"
        except BlockingIOError:
            ready = False
        finally:
            os.close(ready_r)
    seconds = time.monotonic() - started
    oom = group is not None and group.oom_killed()
    cpu = usage.ru_utime + usage.ru_stime
    # With a cgroup its OOM count is the evidence. Without one, the peak RSS of the waited-for bwrap
    # process is the only sign; it includes the pages bwrap shared with datagen between fork and
    # exec, so it over-reports when datagen itself is large (then signal deaths read as "memory").
    maxrss_kb = None if group is not None else usage.ru_maxrss
    name, detail = _classify(limits, ready, timed_out, returncode, cpu, maxrss_kb, oom, stderr)
    return SandboxResult(name, returncode, stdout, stderr, seconds, detail, outcomes)


def _read_results(handle, count: int) -> list[CallOutcome | None]:
    """The first well-formed line for each call index; lines that are not are ignored (the
    candidate can write here too, which gains it nothing: see datagen.steps.sandbox.harness)."""
    outcomes: list[CallOutcome | None] = [None] * count
    handle.seek(0)
    for raw in handle:
        try:
            line = json.loads(raw, parse_constant=_refuse_constant)
            index = line["call"]
            if type(index) is not int or not 0 <= index < count or outcomes[index] is not None:
                continue
            if type(line.get("raised")) is str:
                outcomes[index] = CallOutcome(error=_short(line["raised"]))
            elif "value" in line:
                try:
                    outcomes[index] = CallOutcome(values.decode(line["value"]))
                except ValueError as exc:
                    outcomes[index] = CallOutcome(error=_short(f"returned something that is not plain data: {exc}"))
        except (ValueError, TypeError, KeyError, RecursionError):
            continue
    return outcomes


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _wait_exit(pid: int, deadline: float) -> bool:
    """True once `pid` has exited (left unreaped), False at the deadline. Sleeps on a pidfd, which
    becomes readable when the process exits (Linux >= 5.3), so the verdict comes at once rather
    than at the next poll."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # an older kernel, or pidfds refused by a seccomp policy: poll
        return _poll_exit(pid, deadline)
    try:
        exited = select.poll()  # not select.select: a busy process may hold fds above FD_SETSIZE
        exited.register(pidfd, select.POLLIN)
        while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            exited.poll(max(1, math.ceil(remaining * 1000)))
        return True
    finally:
        os.close(pidfd)


def _poll_exit(pid: int, deadline: float) -> bool:
    delay = 0.001
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.02)
    return True


def _classify(limits, ready, timed_out, returncode, cpu, maxrss_kb: int | None, oom: bool, stderr) -> tuple[str, str]:
    if timed_out:  # also before "ready" on a loaded machine: slow, not broken
        return "timeout", f"wall time limit {limits.wall_seconds:g} s"
    if not ready:
        if returncode == 125 and not stderr.strip():
            return "error", "sandbox setup failed: could not join the run's cgroup"
        return "error", _short(f"sandbox setup failed: {_last_line(stderr) or f'exit status {returncode}'}")
    if returncode == 0:
        return "passed", ""
    signum = -returncode if returncode < 0 else None
    if signum == signal.SIGXCPU or (signum == signal.SIGKILL and cpu >= math.ceil(limits.cpu_seconds)):
        return "timeout", f"cpu time limit {math.ceil(limits.cpu_seconds)} s"
    failure = _failure_line(stderr)
    near_limit = maxrss_kb is not None and maxrss_kb * 1024 >= 0.9 * limits.memory_mb * 2**20
    if oom or any(marker in failure for marker in _MEMORY_MARKERS) or (signum and near_limit):
        return "memory", _short(f"memory limit {limits.memory_mb} MB: {failure or _signal_name(signum) or 'killed'}")
    if signum:
        return "killed", f"killed by {_signal_name(signum)}"
    return "failed", _short(failure or f"exit code {returncode}")


_SIGNALS = {int(s) for s in signal.Signals}


def _signal_name(signum: int | None) -> str:
    if signum is None:
        return ""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


_BARE_EXCEPTION = re.compile(r"[A-Za-z_][\w.]*")


def _failure_line(stderr: str) -> str:
    """The exception line; for a bare one (a plain `assert`) with the failing source line added."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if not lines:
        return ""
    last = lines[-1].strip()
    if _BARE_EXCEPTION.fullmatch(last):
        frames = [i for i, line in enumerate(lines[:-1]) if line.lstrip().startswith('File "')]
        if frames and frames[-1] + 1 < len(lines) - 1:
            source = lines[frames[-1] + 1].strip()
            if source and set(source) - set("^~ "):
                last = f"{last}: {source}"
    return last


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _short(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _DETAIL_CHARS else line[: _DETAIL_CHARS - 3] + "..."


def _read_output(handle, limit: int) -> str:
    """At most `limit` characters: the first and last halves, with a marker where text was cut."""
    budget = limit * 4  # a character is at most 4 bytes of UTF-8
    size = os.fstat(handle.fileno()).st_size
    handle.seek(0)
    if size <= 2 * budget:
        text = handle.read().decode("utf-8", "replace")
        if len(text) <= limit:
            return text
        head, tail, cut = text[: limit // 2], text[len(text) - (limit - limit // 2) :], f"{len(text) - limit} characters"
    else:
        head = handle.read(budget).decode("utf-8", "replace")[: limit // 2]
        handle.seek(size - budget)
        tail = handle.read().decode("utf-8", "replace")[-(limit - limit // 2) :]
        cut = f"about {size - 2 * budget} bytes"
    return f"{head}\n[... {cut} truncated ...]\n{tail}"


# --------------------------------------------------------------------------------------------
# A uid of its own per run when datagen is root.

# A high block of ids no account uses; rootless containers map only 65536 ids, hence the fallback.
_UID_BASES = (2_000_000_000, 64_000)
_UID_COUNT = 1000


class _Identity:
    """An unused uid/gid for one run, held by an flock so concurrent runs never share one (the
    lock files hold no data; RLIMIT_NPROC counts per uid, so sharing one would share the limit)."""

    def __init__(self, uid: int, lock_fd: int):
        self.uid = uid
        self.lock_fd = lock_fd

    @classmethod
    def acquire(cls) -> _Identity:
        base = _uid_base()
        lock_dir = Path(tempfile.gettempdir()) / "datagen-sandbox-uids"
        lock_dir.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(lock_dir)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
            raise OSError(f"{lock_dir} is not a root-only directory")
        offset = random.randrange(_UID_COUNT)
        for i in range(_UID_COUNT):
            uid = base + (offset + i) % _UID_COUNT
            if _has_account(uid):
                continue
            fd = os.open(lock_dir / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return cls(uid, fd)
        raise OSError(f"all {_UID_COUNT} sandbox uids from {base} are in use")

    def release(self) -> None:
        os.close(self.lock_fd)


def _uid_base() -> int:
    def ranges(path: str) -> list[tuple[int, int]]:
        rows = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
        return [(int(inside), int(inside) + int(count)) for inside, _, count in rows]

    uid_ranges, gid_ranges = ranges("/proc/self/uid_map"), ranges("/proc/self/gid_map")
    for base in _UID_BASES:
        span = (base, base + _UID_COUNT)
        if all(any(lo <= span[0] and span[1] <= hi for lo, hi in table) for table in (uid_ranges, gid_ranges)):
            return base
    raise OSError("no unused uid range is mapped in this user namespace")


def _has_account(uid: int) -> bool:
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return True
        except KeyError:
            pass
    return False


__all__ = ["STATUSES", "MAXIMA", "SandboxLimits", "SandboxResult", "CallOutcome", "run_python", "call_functions", "unavailable", "bwrap_path"]
