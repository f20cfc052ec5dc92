"""The sandbox in which model-generated Python runs: `run_python(code, limits) -> SandboxResult`.

Nothing model-generated may run outside it. The code is written to `main.py` in a fresh temporary
directory (removed afterwards, also after a timeout) and run by `python -I -B` of the current
interpreter with an empty environment, stdin closed and stdout/stderr going to files. Linux only.

Process tree. This very file is copied next to the work dir and run as the bootstrap::

    datagen --spawn--> outer   (new session: the parent kills its whole group on timeout)
                         `-fork-> init  (pid 1 of a new pid namespace: reaps, reports the status)
                                    `-fork-> user  (pid 2: rlimits, dropped uid, audit hook, main.py)

Layers, strongest first:
1. A dedicated uid when datagen runs as root: the user process switches to an otherwise unused
   uid/gid (flock-allocated from a high range), so root-owned files are read-only and undeletable
   and RLIMIT_NPROC bounds a fork bomb. NPROC counts every process of a uid and is not enforced
   for root at all, hence a uid of its own rather than `nobody`, which others may share.
2. Namespaces: network (only a downed loopback: nothing is reachable), mount (/tmp, /var/tmp and
   /dev/shm become private tmpfs with the work dir bind-mounted back; directories the sandbox uid
   cannot traverse, like /root holding a pyenv interpreter, become tmpfs that expose only the
   Python paths, which also hides the rest of /root), pid (its init reaps every orphan, since the
   machine's pid 1 may not, and its death kills everything the code started). Without root they
   come from an unprivileged user namespace mapping the caller's uid onto itself.
3. rlimits: CPU, address space, file size, process count, no core files. The parent enforces the
   wall time by killing the group.
4. An audit hook (PEP 578) installed before the code runs refuses connect/bind/send/DNS, writes,
   deletes, renames and chmods outside the work dir, exec/spawn/system/subprocess, foreign calls
   through ctypes, and fork unless layers 1 and 2 bound it (dedicated uid and pid namespace).
   Hooks are defense in depth, not a boundary: code in the same interpreter can reach around them
   (e.g. through gc), which is why they are the last layer. Running without root and without user
   namespaces leaves only layers 3 and 4.

bubblewrap is not used even when installed: one code path, the same on every machine.
"""

from __future__ import annotations

import fcntl
import grp
import json
import math
import os
import pwd
import random
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

STATUSES = ("passed", "failed", "timeout", "memory", "killed", "error")


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: float = 5  # RLIMIT_CPU, rounded up to whole seconds (the kernel's granularity)
    wall_seconds: float = 10  # the whole process group is killed after this
    memory_mb: int = 512  # RLIMIT_AS
    file_size_mb: int = 16  # RLIMIT_FSIZE; applies to stdout/stderr too
    max_processes: int = 32  # RLIMIT_NPROC of the dedicated uid (only enforceable as root)
    output_chars: int = 20_000  # stdout/stderr kept: first and last halves, with a marker between

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not value > 0:
                raise ValueError(f"SandboxLimits.{name} must be positive (got {value!r})")


@dataclass(frozen=True)
class SandboxResult:
    """How a run ended.

    status: "passed" (exit 0) | "failed" (non-zero exit: an uncaught exception, sys.exit(n), a
    write past the file-size limit, a refused operation) | "timeout" (wall limit, or SIGXCPU /
    SIGKILL at the CPU limit) | "memory" (MemoryError, ENOMEM, or a signal death near the memory
    limit) | "killed" (any other signal death) | "error" (the sandbox itself could not run).
    detail: one short line, e.g. "AssertionError: assert add(1, 2) == 4"; empty when passed.
    """

    status: str
    returncode: int | None  # of the user process; negative: killed by that signal
    stdout: str
    stderr: str
    seconds: float
    detail: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_python(code: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run `code` as a script in the sandbox and classify the outcome. Never raises for user code."""
    started = time.monotonic()
    identity = root = None
    try:
        identity = _Identity.acquire() if os.geteuid() == 0 else None
        root = Path(tempfile.mkdtemp(prefix="datagen-sandbox-"))
        return _run(code, limits, root, identity, started)
    except (OSError, ValueError) as exc:  # ValueError: e.g. code with lone surrogates cannot be written
        return SandboxResult("error", None, "", "", time.monotonic() - started, f"sandbox could not run: {exc}")
    finally:
        if root is not None:
            _remove_tree(root)
        if identity is not None:
            identity.release()


# --------------------------------------------------------------------------------------------
# Parent side


_DETAIL_CHARS = 300
_MEMORY_MARKERS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory")
# A high block of ids no account uses; rootless containers map only 65536 ids, hence the fallback.
_UID_BASES = (2_000_000_000, 64_000)
_UID_COUNT = 1000


class _Identity:
    """An unused uid/gid for one run, held by an flock so concurrent runs never share one."""

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


def _child_env(work: Path) -> dict[str, str]:
    # Only what Python needs; -I already ignores PYTHON* variables.
    return {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


def _run(code: str, limits: SandboxLimits, root: Path, identity: _Identity | None, started: float) -> SandboxResult:
    work = root / "work"
    work.mkdir()
    main = work / "main.py"
    main.write_text(code, encoding="utf-8")
    (root / "boot.py").write_text(Path(__file__).read_text(encoding="utf-8"), encoding="utf-8")
    if identity is not None:
        os.chown(work, identity.uid, identity.uid)
        os.chown(main, identity.uid, identity.uid)
        root.chmod(0o711)  # the sandbox uid may pass through, not list
    report_r, report_w = os.pipe()
    config = {
        "workdir": str(work.resolve()),
        "main": str(main.resolve()),
        "uid": identity.uid if identity else None,
        "limits": asdict(limits),
        "report_fd": report_w,
        "parent_pid": os.getpid(),
    }
    try:
        with open(root / "stdout", "wb") as out, open(root / "stderr", "wb") as err:
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-B", str(root / "boot.py"), json.dumps(config)],
                    cwd=work,
                    env=_child_env(work),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    pass_fds=(report_w,),
                    start_new_session=True,
                )
            finally:
                os.close(report_w)
        os.set_blocking(report_r, False)
        timed_out, status, usage, report = _wait(proc, report_r, limits.wall_seconds)
    finally:
        os.close(report_r)
    seconds = time.monotonic() - started
    stdout = _read_output(root / "stdout", limits.output_chars)
    stderr = _read_output(root / "stderr", limits.output_chars)
    cpu, maxrss_kb = usage.ru_utime + usage.ru_stime, usage.ru_maxrss
    if "exit" in report:  # the init of the pid namespace saw the user process end
        raw, cpu, maxrss_kb = report["exit"]
        returncode = os.waitstatus_to_exitcode(raw)
    elif "init" not in report:  # no pid namespace: the outer process was the user process
        returncode = os.waitstatus_to_exitcode(status)
    else:  # the namespace was killed (wall time) or its init failed before reporting
        returncode = -signal.SIGKILL if timed_out else None
    status_name, detail = _classify(limits, "ready" in report, timed_out, returncode, cpu, maxrss_kb, stderr)
    return SandboxResult(status_name, returncode, stdout, stderr, seconds, detail)


def _wait(proc: subprocess.Popen, report_fd: int, wall_seconds: float):
    """Wait for the outer process until the wall deadline, then make sure the whole tree is gone."""
    report: dict = {}
    timed_out = not _wait_exit(proc.pid, time.monotonic() + wall_seconds)
    if timed_out:
        _read_report(report_fd, report)
        if "init" in report:  # killing the namespace's init kills every process in it
            _signal(report["init"], signal.SIGKILL)
            _wait_exit(proc.pid, time.monotonic() + 2)
    # The outer process is not reaped yet, so its pid (= the group id) cannot have been reused.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    _read_report(report_fd, report)
    return timed_out, status, usage, report


def _wait_exit(pid: int, deadline: float) -> bool:
    """True once `pid` has exited (left unreaped), False at the deadline."""
    delay = 0.001
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.05)
    return True


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _read_report(fd: int, report: dict) -> None:
    """The bootstrap's side channel (closed before user code runs, so it cannot be forged)."""
    chunks = [report.pop("_partial", b"")]
    while True:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    *lines, report["_partial"] = b"".join(chunks).split(b"\n")
    for line in lines:
        key, *values = line.decode().split() or [""]
        if key == "ready":
            report["ready"] = True
        elif key == "init":
            report["init"] = int(values[0])
        elif key == "exit":
            report["exit"] = (int(values[0]), float(values[1]), int(values[2]))


def _classify(limits, ready, timed_out, returncode, cpu, maxrss_kb, stderr) -> tuple[str, str]:
    if not ready:
        last = _last_line(stderr)
        return "error", _short(f"sandbox setup failed: {last or f'exit status {returncode}'}")
    if timed_out:
        return "timeout", f"wall time limit {limits.wall_seconds:g} s"
    if returncode is None:
        return "error", _short(f"sandbox init ended without a report: {_last_line(stderr)}")
    signum = -returncode if returncode < 0 else None
    if signum == signal.SIGXCPU or (signum == signal.SIGKILL and cpu >= math.ceil(limits.cpu_seconds)):
        return "timeout", f"cpu time limit {math.ceil(limits.cpu_seconds)} s"
    if returncode == 0:
        return "passed", ""
    failure = _failure_line(stderr)
    near_limit = maxrss_kb * 1024 >= 0.9 * limits.memory_mb * 2**20
    if any(marker in failure for marker in _MEMORY_MARKERS) or (
        signum and (near_limit or any(marker in stderr for marker in _MEMORY_MARKERS))
    ):
        return "memory", _short(f"memory limit {limits.memory_mb} MB: {failure or _signal_name(signum)}")
    if signum:
        return "killed", f"killed by {_signal_name(signum)}"
    return "failed", _short(failure or f"exit code {returncode}")


def _signal_name(signum: int) -> str:
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


def _read_output(path: Path, limit: int) -> str:
    """At most `limit` characters: the first and last halves, with a marker where text was cut."""
    budget = limit * 4  # a character is at most 4 bytes of UTF-8
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
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


def _remove_tree(path: Path) -> None:
    def make_writable_and_retry(function, failed_path, _exc_info):
        os.chmod(os.path.dirname(failed_path), 0o700)
        if os.path.isdir(failed_path) and not os.path.islink(failed_path):
            os.chmod(failed_path, 0o700)
        function(failed_path)

    # The code may leave directories without write permission (only a problem when not root).
    shutil.rmtree(path, onerror=make_writable_and_retry)


# --------------------------------------------------------------------------------------------
# Bootstrap side: runs in the child, as `python -I -B boot.py CONFIG`, with this file as boot.py.

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x4000, 0x40000
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SYS_OPEN_TREE, SYS_MOVE_MOUNT = 428, 429  # the same on x86-64 and arm64 (unified numbers)
OPEN_TREE_CLONE, AT_RECURSIVE, AT_FDCWD, MOVE_MOUNT_F_EMPTY_PATH = 1, 0x8000, -100, 0x4
SHARED_WRITABLE_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


class _Libc:
    """The few Linux calls the standard library lacks."""

    def __init__(self):
        import ctypes

        self.ctypes = ctypes
        self.lib = ctypes.CDLL(None, use_errno=True)
        self.lib.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
        self.lib.syscall.restype = ctypes.c_long

    def _check(self, result: int, what: str) -> int:
        if result < 0:
            errno = self.ctypes.get_errno()
            raise OSError(errno, f"{what}: {os.strerror(errno)}")
        return result

    def unshare(self, flags: int) -> bool:
        return self.lib.unshare(flags) == 0

    def prctl(self, option: int, value: int) -> None:
        c_ulong = self.ctypes.c_ulong
        self._check(self.lib.prctl(option, c_ulong(value), c_ulong(0), c_ulong(0), c_ulong(0)), "prctl")

    def mount(self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
        args = [None if value is None else os.fsencode(value) for value in (source, target, fstype)]
        data_bytes = None if data is None else data.encode()
        self._check(self.lib.mount(*args, flags, data_bytes), f"mount {target}")

    def open_tree(self, path: str) -> int:
        c_long = self.ctypes.c_long
        flags = OPEN_TREE_CLONE | AT_RECURSIVE | os.O_CLOEXEC
        return self._check(
            self.lib.syscall(c_long(SYS_OPEN_TREE), c_long(AT_FDCWD), self.ctypes.c_char_p(os.fsencode(path)), c_long(flags)),
            f"open_tree {path}",
        )

    def move_mount(self, fd: int, target: str) -> None:
        c_long, c_char_p = self.ctypes.c_long, self.ctypes.c_char_p
        args = (c_long(fd), c_char_p(b""), c_long(AT_FDCWD), c_char_p(os.fsencode(target)), c_long(MOVE_MOUNT_F_EMPTY_PATH))
        self._check(self.lib.syscall(c_long(SYS_MOVE_MOUNT), *args), f"move_mount {target}")

    def drop_capabilities(self) -> None:
        ctypes = self.ctypes

        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

        data = (ctypes.c_uint32 * 6)()  # two (effective, permitted, inheritable) sets, all empty
        self._check(self.lib.capset(ctypes.byref(Header(0x20080522, 0)), data), "capset")


def _boot(config: dict) -> None:
    libc = _Libc()
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # if datagen dies, so does the sandbox
    if os.getppid() != config["parent_pid"]:
        os._exit(1)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.umask(0o022)
    layers = _enter_namespaces(libc, as_root=config["uid"] is not None)
    if "mount" in layers:
        _private_mounts(libc, config, SandboxLimits(**config["limits"]))
    if "pid" in layers:
        init = os.fork()
        if init:  # the outer process
            os.write(config["report_fd"], f"init {init}\n".encode())
            os.waitpid(init, 0)
            os._exit(0)
        user = _start_init(libc)
        if user:
            _reap_and_report(user, config["report_fd"])
    # The user process (or, without a pid namespace, the outer process itself). It ends through
    # the interpreter's normal shutdown, so atexit handlers run and threads are joined.
    _user_process(libc, config, layers)


def _start_init(libc: _Libc) -> int:
    """Become pid 1 of the new namespace and fork the user process (0 is returned in the latter)."""
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    try:  # a /proc of this namespace: the code sees its own processes only
        libc.mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        pass
    return os.fork()


def _reap_and_report(user: int, report_fd: int) -> None:
    """pid 1's job: reap every process until the user process ends, report how, and exit, which
    kills whatever is still left in the namespace."""
    code = 1
    try:
        while True:
            pid, status, usage = os.wait4(-1, 0)
            if pid == user:
                break
        cpu = usage.ru_utime + usage.ru_stime
        os.write(report_fd, f"exit {status} {cpu:.3f} {usage.ru_maxrss}\n".encode())
        code = 0
    finally:
        os._exit(code)


def _enter_namespaces(libc: _Libc, as_root: bool) -> set[str]:
    uid, gid = os.getuid(), os.getgid()
    attempts = [CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID, CLONE_NEWNET | CLONE_NEWNS, CLONE_NEWNET]
    if not as_root:
        attempts = [flags | CLONE_NEWUSER for flags in attempts]
    for flags in attempts:
        if libc.unshare(flags):
            if flags & CLONE_NEWUSER:  # keep our own identity inside, or files could not be created
                Path("/proc/self/setgroups").write_text("deny")
                Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
                Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
            names = {CLONE_NEWUSER: "user", CLONE_NEWNET: "net", CLONE_NEWNS: "mount", CLONE_NEWPID: "pid"}
            return {name for bit, name in names.items() if flags & bit}
    return set()


def _private_mounts(libc: _Libc, config: dict, limits: SandboxLimits) -> None:
    libc.mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the host
    python_paths = [p for p in sys.path[1:] if os.path.isdir(p)]  # [0] is the bootstrap's dir
    keep = sorted({os.path.realpath(p) for p in [config["workdir"], *python_paths]})
    for shared in SHARED_WRITABLE_DIRS:
        if os.path.isdir(shared) and not os.path.islink(shared) and os.stat(shared).st_mode & 0o002:
            _cover(libc, shared, keep, f"mode=1777,size={limits.file_size_mb}m")
    if config["uid"] is not None:
        for blocked in sorted({b for b in map(_first_untraversable, keep) if b}):
            _cover(libc, blocked, keep, "mode=755,size=1m")


def _first_untraversable(path: str) -> str | None:
    """The highest ancestor of `path` that a uid without any rights on it cannot pass through."""
    parts = Path(path).parts
    for depth in range(2, len(parts)):
        ancestor = os.path.join(*parts[:depth])
        if not os.stat(ancestor).st_mode & stat.S_IXOTH:
            return ancestor
    return None


def _cover(libc: _Libc, directory: str, keep: list[str], options: str) -> None:
    """Mount a tmpfs over `directory`, with the kept paths below it bind-mounted back in place."""
    inside = [p for p in keep if p.startswith(directory.rstrip("/") + "/")]
    outermost = [p for p in inside if not any(p.startswith(q + "/") for q in inside if q != p)]
    trees = [(path, libc.open_tree(path)) for path in outermost]
    try:
        libc.mount("tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV, options)
        for path, fd in trees:
            os.makedirs(path, exist_ok=True)
            libc.move_mount(fd, path)
    finally:
        for _, fd in trees:
            os.close(fd)


def _user_process(libc: _Libc, config: dict, layers: set[str]) -> None:
    limits = SandboxLimits(**config["limits"])
    dedicated = config["uid"] is not None
    _apply_rlimits(limits, dedicated)
    if dedicated:
        os.setgroups([])
        os.setgid(config["uid"])
        os.setuid(config["uid"])
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise RuntimeError("privileges were not dropped")
        # Without a mount namespace nothing exposed an interpreter under, say, /root: fail closed.
        os.listdir(os.path.dirname(os.__file__))
    elif "user" in layers:
        libc.drop_capabilities()  # those it holds inside its own user namespace
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # changing credentials cleared it
    workdir, main = config["workdir"], config["main"]
    os.chdir(workdir)
    sys.path[0] = workdir
    sys.argv = [main]
    sys.dont_write_bytecode = True
    allow_processes = dedicated and "pid" in layers
    if not allow_processes:
        import _posixsubprocess

        _posixsubprocess.fork_exec = _refuse_fork_exec  # it raises no audit event of its own
    sys.addaudithook(_audit_hook(workdir, allow_processes, allow_signals=dedicated or "pid" in layers))
    os.write(config["report_fd"], b"ready\n")
    os.close(config["report_fd"])
    _run_main(main)


def _apply_rlimits(limits: SandboxLimits, dedicated: bool) -> None:
    cpu = math.ceil(limits.cpu_seconds)
    wanted = {
        resource.RLIMIT_CPU: (cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL a second later
        resource.RLIMIT_AS: (limits.memory_mb * 2**20,) * 2,
        resource.RLIMIT_FSIZE: (limits.file_size_mb * 2**20,) * 2,
        resource.RLIMIT_CORE: (0, 0),
    }
    if dedicated:  # for a shared uid it would count the caller's own processes too
        wanted[resource.RLIMIT_NPROC] = (limits.max_processes,) * 2
    for which, (soft, hard) in wanted.items():
        _, current_hard = resource.getrlimit(which)
        if current_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        resource.setrlimit(which, (soft, hard))


def _refuse_fork_exec(*_args, **_kwargs):
    raise PermissionError("sandbox: starting programs is not allowed")


_ALWAYS_REFUSED = frozenset(
    {
        "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.startfile", "subprocess.Popen",
        "socket.bind", "socket.connect", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
        "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo", "socket.sethostname",
        "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.call_function",
    }
)  # fmt: skip
_FORK_EVENTS = frozenset({"os.fork", "os.forkpty"})
# event -> (index of a path argument, index of its dir_fd argument or None)
_PATH_EVENTS = {
    "os.remove": ((0, 1),),
    "os.rmdir": ((0, 1),),
    "os.rename": ((0, 2), (1, 3)),
    "os.link": ((0, 2), (1, 3)),
    "os.symlink": ((1, 2),),
    "os.truncate": ((0, None),),
    "os.chmod": ((0, 2),),
    "os.chown": ((0, 3),),
    "os.utime": ((0, 3),),
    "os.mkdir": ((0, 2),),
    "os.chflags": ((0, None),),
    "os.lchflags": ((0, None),),
    "os.setxattr": ((0, None),),
    "os.removexattr": ((0, None),),
    "shutil.rmtree": ((0, 1),),
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_WRITABLE_DEVICES = frozenset({"/dev/null", "/dev/stdout", "/dev/stderr"})


def _audit_hook(workdir: str, allow_processes: bool, allow_signals: bool):
    prefix = workdir.rstrip("/") + "/"

    def resolve(path, dir_fd) -> str | None:
        if isinstance(path, int) or path is None:  # an already-open descriptor
            return None
        path = os.fsdecode(os.fspath(path))
        base = os.getcwd()
        if isinstance(dir_fd, int) and dir_fd >= 0 and not os.path.isabs(path):
            base = os.readlink(f"/proc/self/fd/{dir_fd}")
        full = os.path.join(base, path)
        if os.path.normpath(full) in _WRITABLE_DEVICES:
            return None
        return os.path.realpath(full)

    def check_inside(event: str, path, dir_fd=None) -> None:
        real = resolve(path, dir_fd)
        if real is not None and real != workdir and not real.startswith(prefix):
            raise PermissionError(f"sandbox: {event} outside the working directory: {real}")

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = flags & _WRITE_FLAGS if isinstance(flags, int) and flags >= 0 else set(mode or "") & set("wax+")
            if writing:
                check_inside(event, path)
            elif mode is None and os.path.isdir(path if isinstance(path, int) else os.fspath(path)):
                # os.open's event carries no dir_fd, so a descriptor of an outside directory would
                # let a later relative os.open(..., dir_fd=) write there unchecked.
                check_inside("open of a directory", path)
        elif event in _PATH_EVENTS:
            for path_index, fd_index in _PATH_EVENTS[event]:
                if path_index < len(args):
                    dir_fd = args[fd_index] if fd_index is not None and fd_index < len(args) else None
                    check_inside(event, args[path_index], dir_fd)
        elif event in _ALWAYS_REFUSED or (event in _FORK_EVENTS and not allow_processes):
            raise PermissionError(f"sandbox: {event} is not allowed")
        elif event == "ctypes.dlopen" and args and args[0] is not None:  # dlopen(None) is `import ctypes`
            raise PermissionError(f"sandbox: {event} is not allowed")
        elif event in ("os.kill", "os.killpg") and not allow_signals:
            target = args[0]
            own = (0, os.getpid(), -os.getpgrp()) if event == "os.kill" else (0, os.getpgrp())
            if target not in own:
                raise PermissionError(f"sandbox: {event} of another process is not allowed")

    return hook


def _run_main(main: str) -> None:
    import builtins
    import traceback
    import types

    try:
        code = compile(Path(main).read_bytes(), main, "exec")
    except (SyntaxError, ValueError) as exc:
        traceback.print_exception(type(exc), exc, None)
        sys.exit(1)
    module = types.ModuleType("__main__")
    module.__file__ = main
    module.__builtins__ = builtins
    sys.modules["__main__"] = module  # so that pickling the code's own classes works
    try:
        exec(code, module.__dict__)
    except SystemExit:
        raise
    except BaseException as exc:  # print the traceback without this bootstrap's frame
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        sys.exit(1)


if __name__ == "__main__":
    _boot(json.loads(sys.argv[1]))
