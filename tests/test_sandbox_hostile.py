"""Hostile candidates: wrong solutions that try to be scored as right, and code that tries to leave
the sandbox. Every reward-hacking case below is a WRONG solution plus an attack: it must be
rejected. Every containment case checks the host from outside after the run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from datagen.steps.sandbox import SandboxLimits, cgroup, run_python
from datagen.steps.verify import PythonTestsVerifier

from helpers import REPO, TEMPLATES

TASKS = {task["id"]: task for task in yaml.safe_load((TEMPLATES / "python_functions.yaml").read_text())["slots"]["task"]}
VERIFIER = PythonTestsVerifier(cpu_seconds=2, wall_seconds=15, memory_mb=256)  # wall: slack for a loaded CI machine
WRONG = "def is_palindrome(s):\n    return s == s[::-1]\n"  # fails 'A man, a plan...' and "No 'x' in Nixon"
SIDE_TESTS = """\
assert len(dedupe([1, 1, 2])) == 2
assert sorted(dedupe([3, 1, 3])) == [1, 3]
assert abs(distance(2, 5)) == 3
assert isinstance(dedupe([]), list)
"""
SIDE_WRONG = "def dedupe(xs):\n    return xs\n\ndef distance(a, b):\n    return 0\n"


def verdict(code: str, tests: str | None = None):
    row = {"completion": f"```python\n{textwrap.dedent(code)}\n```", "tests": tests or TASKS["is_palindrome"]["tests"]}
    return VERIFIER.check(row)


REWARD_HACKS = {
    "always_equal_object": WRONG + """
class Anything:
    def __eq__(self, other): return True
    def __bool__(self): return True
    __hash__ = object.__hash__
def is_palindrome(s):
    return Anything()
""",
    "int_subclass_forged_eq": WRONG + """
class Liar(int):
    def __eq__(self, other): return True
    def __ne__(self, other): return False
def is_palindrome(s):
    return Liar(1)
""",
    "str_subclass_forged_eq": """
class Liar(str):
    def __eq__(self, other): return True
def count_vowels(s):
    return Liar("")
""",
    "print_end_token_and_exit_0": WRONG + """
import os, sys
for prefix in ("datagen-tests-done-", "OK", "passed"):
    print(prefix + "0" * 16, flush=True)
os._exit(0)
""",
    "atexit_hook_exits_0": WRONG + """
import atexit, os, sys
atexit.register(lambda: (print("datagen-tests-done-0000000000000000", flush=True), os._exit(0)))
""",
    "replace_sys_exit_and_traceback": WRONG + """
import sys, traceback
sys.exit = lambda *a: None
sys.excepthook = lambda *a: None
traceback.print_exception = lambda *a, **k: None
traceback.print_exc = lambda *a, **k: None
""",
    "trace_function_skips_asserts": WRONG + """
import sys
def skip(frame, event, arg):
    frame.f_trace_lines = True
    if event == "line":
        try:
            if "assert" in open(frame.f_code.co_filename).read().splitlines()[frame.f_lineno - 1]:
                frame.f_lineno = frame.f_lineno + 1
        except Exception:
            pass
    return skip
sys.settrace(skip)
sys._getframe().f_trace = skip
""",
    "reexecute_file_without_asserts": WRONG + """
import os, sys
source = open(sys.argv[0] if os.path.exists(sys.argv[0]) else __file__).read()
exec("\\n".join(l for l in source.splitlines() if not l.lstrip().startswith("assert")), {"__name__": "rerun"})
os._exit(0)
""",
    "read_the_reference_solution": WRONG + """
import os, re
found = None
for root in ("/work", "/home", "/root", "/srv", "/opt", "/tmp", "/usr", "/"):
    for folder, dirs, files in os.walk(root):
        for name in files:
            if name.endswith((".yaml", ".yml")):
                try:
                    text = open(os.path.join(folder, name)).read()
                except OSError:
                    continue
                if "def is_palindrome" in text:
                    found = text
                    break
        if found: break
    if found: break
if found:
    import yaml
    for task in yaml.safe_load(found)["slots"]["task"]:
        if task["id"] == "is_palindrome":
            exec(task["solution"])
""",
    "forge_results_on_every_fd": WRONG + """
import gc, json, os
calls = [o for o in gc.get_objects() if isinstance(o, dict) and "calls" in o and "results_fd" in o]
lines = "".join(json.dumps({"call": i, "value": True}) + "\\n" for i in range(64))
for fd in range(3, 64):
    try:
        os.write(fd, lines.encode())
    except OSError:
        pass
os._exit(0)
""",
    "patch_the_harness_encoder": WRONG + """
import sys, json
harness = sys.modules.get("__main__")
for module in list(sys.modules.values()):
    if hasattr(module, "encode"):
        try: module.encode = lambda value, depth=0: True
        except Exception: pass
json.dumps = lambda *a, **k: '{"call": 0, "value": true}'
""",
    "find_token_in_proc_and_memory": WRONG + """
import gc, os, re
token = None
for pid in os.listdir("/proc"):
    for part in ("cmdline", "environ"):
        try:
            data = open(f"/proc/{pid}/{part}", "rb").read().decode("latin-1")
        except OSError:
            continue
        match = re.search(r"datagen-tests-done-[0-9a-f]{16}", data)
        token = token or (match and match.group(0))
for obj in gc.get_objects():
    if isinstance(obj, str) and obj.startswith("datagen-tests-done-"):
        token = obj
print(token or "datagen-tests-done-", flush=True)
os._exit(0)
""",
    "fake_a_sandbox_setup_failure": WRONG + """
import os, sys
sys.stderr.write("bwrap: Can't mount proc on /newroot/proc: Operation not permitted\\n")
sys.stderr.flush()
os._exit(1)
""",
    "fake_a_cgroup_join_failure": WRONG + """
import os
os._exit(125)
""",
    "system_exit_inside_the_call": """
def is_palindrome(s):
    raise SystemExit(0)
""",
    "kill_own_process_during_call": """
import os, signal
def is_palindrome(s):
    os.kill(os.getpid(), signal.SIGKILL)
""",
    "return_a_lazy_proxy": WRONG + """
def is_palindrome(s):
    return (x for x in [True])
""",
}

SIDE_HACKS = {
    "shadow_builtins_in_module": SIDE_WRONG + """
def len(x): return 2
def sorted(x): return [1, 3]
def abs(x): return 3
def isinstance(x, t): return True
""",
    "patch_builtins_module": SIDE_WRONG + """
import builtins
builtins.len = lambda x: 2
builtins.sorted = lambda x, **k: [1, 3]
builtins.abs = lambda x: 3
builtins.isinstance = lambda *a: True
""",
}


@pytest.mark.parametrize("name", sorted(REWARD_HACKS))
def test_reward_hacks_of_a_wrong_solution_are_rejected(name):
    code = REWARD_HACKS[name]
    tests = TASKS["count_vowels"]["tests"] if "count_vowels" in code else None
    result = verdict(code, tests)
    assert result.keep is False, (name, result)
    # A verdict on the candidate, never one that blames the check (sandbox_error, verifier_error).
    assert result.reason in ("tests_failed", "tests_not_run", "killed", "timeout", "memory"), (name, result)


@pytest.mark.parametrize("name", sorted(SIDE_HACKS))
def test_shadowed_or_patched_builtins_do_not_change_the_comparison(name):
    result = verdict(SIDE_HACKS[name], SIDE_TESTS)
    assert result.keep is False and result.reason == "tests_failed", (name, result)


def test_the_same_tests_pass_an_honest_solution():
    honest = "def dedupe(xs):\n    return list(dict.fromkeys(xs))\n\ndef distance(a, b):\n    return b - a\n"
    assert verdict(honest, SIDE_TESTS).keep is True
    assert verdict(TASKS["is_palindrome"]["solution"]).keep is True


def test_every_shipped_reference_solution_passes_in_parallel():
    rows = [{"completion": f"```python\n{t['solution']}```", "tests": t["tests"]} for t in TASKS.values()]
    with ThreadPoolExecutor(4) as pool:
        verdicts = list(pool.map(VERIFIER.check, rows))
    failed = {task: v for task, v in zip(TASKS, verdicts) if not v.keep}
    assert not failed


# ---------------------------------------------------------------- containment


def run(code: str, **limits):
    return run_python(textwrap.dedent(code), SandboxLimits(**{"cpu_seconds": 3, "wall_seconds": 6} | limits))


def test_host_files_are_not_visible():
    result = run(
        f"""
        import os
        for path in ({str(REPO / "templates" / "python_functions.yaml")!r}, {str(REPO)!r}, "/work", "/home", "/root/.bashrc",
                     "/etc/passwd", "/etc/shadow", {sys.executable!r}, "/run", "/var", "/srv", "/mnt"):
            try:
                print(path, "VISIBLE", os.listdir(path)[:3] if os.path.isdir(path) else len(open(path, "rb").read()))
            except OSError as exc:
                print(path, "hidden", exc.strerror)
        print("root:", sorted(os.listdir("/")))
        print("site-packages:", [os.listdir(p) for p in __import__("sysconfig").get_paths().values() if "packages" in p and os.path.isdir(p)])
        """
    )
    assert result.status == "passed", result.stderr
    visible = [line for line in result.stdout.splitlines() if "VISIBLE" in line]
    assert visible == [], result.stdout
    root = eval(result.stdout.split("root:", 1)[1].splitlines()[0])  # noqa: S307 - our own printed list
    assert set(root) <= {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "proc", "dev", "tmp", "root", "opt", "home"}
    assert "site-packages: [[]" in result.stdout or "site-packages: []" in result.stdout


def world_writable_host_dirs() -> list[Path]:
    """Every world-writable folder of the host down to depth 5 (/proc and /sys aside), plus the
    usual shared ones and the project, which must not be writable from the sandbox either."""
    found = subprocess.run(
        ["find", "/", "(", "-path", "/proc", "-o", "-path", "/sys", ")", "-prune", "-o", "-maxdepth", "5", "-type", "d", "-perm", "-0002", "-print"],
        capture_output=True, text=True, timeout=60,
    ).stdout.split()  # fmt: skip
    usual = ["/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/var/lock", "/work", "/home", str(REPO), str(Path.home())]
    return sorted({Path(p) for p in found + usual if Path(p).is_dir() and not Path(p).is_symlink()})[:500]


def test_writes_to_every_world_writable_host_path_never_reach_the_host(tmp_path):
    control = tmp_path / "control"
    control.mkdir()
    control.chmod(0o777)
    targets = world_writable_host_dirs() + [control]
    marker = f"datagen-escape-{os.getpid()}-{time.monotonic_ns()}"
    writer = textwrap.dedent(
        f"""
        import os, subprocess
        for folder in {[str(t) for t in targets]!r}:
            for how in ("open", "shell"):
                path = os.path.join(folder, {marker!r} + how)
                try:
                    if how == "open":
                        open(path, "w").write("x" * 1000)
                    else:
                        subprocess.run(["/bin/sh", "-c", f"echo x > {{path}}"], timeout=2)
                except Exception:
                    pass
        """
    )
    result = run(writer, max_processes=8)
    assert result.status in ("passed", "failed"), result
    leaked = [str(t / (marker + how)) for t in targets for how in ("open", "shell") if (t / (marker + how)).exists()]
    assert leaked == []
    # The same program outside the sandbox does write: the check above can see a leak.
    subprocess.run([sys.executable, "-c", writer.replace(repr([str(t) for t in targets]), repr([str(control)]))], check=True, timeout=30)
    assert sorted(p.name for p in control.iterdir()) == [marker + "open", marker + "shell"]


def test_disk_filling_stops_at_the_quota():
    result = run(
        """
        import os
        written = 0
        for name in ("/tmp/a", "/tmp/b", "/tmp/c", "/dev/shm/d", "/e"):
            try:
                with open(name, "wb") as handle:
                    for _ in range(64):
                        handle.write(bytes(2**20))
                        written += 2**20
            except OSError:
                pass
        print(written // 2**20)
        """,
        disk_mb=16,
        file_size_mb=64,
    )
    assert result.status == "passed", result.stderr
    assert int(result.stdout) <= 16


def test_memory_spread_over_children_is_bounded_for_the_whole_tree():
    # Eight children each fill 100 MB and hold it for 1.5 s (all the holds overlap): a child that
    # gets through exits 0; one stopped by the limit dies of a signal or a MemoryError.
    result = run(
        """
        import os, time
        kids = []
        for _ in range(8):
            pid = os.fork()
            if pid == 0:
                block = bytearray(100 * 2**20)
                for i in range(0, len(block), 4096):
                    block[i] = 1
                time.sleep(1.5)
                os._exit(0)
            kids.append(pid)
        print(sum(os.waitpid(pid, 0)[1] == 0 for pid in kids))
        """,
        memory_mb=256,
        max_processes=16,
        wall_seconds=20,
    )
    assert result.status == "passed", result
    held = int(result.stdout)
    if cgroup.parents() is not None:  # the tree's total is bounded: memory_mb + disk_mb
        assert 1 <= held <= (256 + 32) // 100, result
    else:  # per process only: max_processes x memory_mb
        assert held * 100 <= 16 * 256


def test_fork_bomb_is_contained_and_leaves_no_process_behind():
    result = run(
        """
        import os, time
        print(os.getuid(), flush=True)
        while True:
            try:
                if os.fork() == 0:
                    os.setsid()
            except OSError:
                time.sleep(0.1)
        """,
        max_processes=16,
        wall_seconds=2,
    )
    assert result.status in ("timeout", "killed", "failed")
    uid = int(result.stdout.split()[0])
    time.sleep(0.5)
    assert uid == os.getuid() or not processes_of_uid(uid)


def live_processes():
    """(pid, uid, /proc status text) of every process that still exists."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            yield int(entry.name), int(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))), status


def processes_of_uid(uid: int) -> list[int]:
    return [pid for pid, owner, _ in live_processes() if owner == uid]


def sandbox_processes() -> set[int]:
    """Live processes of the sandbox uid ranges (datagen.steps.sandbox._UID_BASES)."""
    return {pid for pid, uid, status in live_processes() if uid >= 64_000 and uid != os.getuid() and "\nState:\tZ" not in status}


@pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox processes are recognised by their dedicated uid")
def test_killing_datagen_mid_run_leaves_no_process_and_no_files():
    before_files = {p.name for p in Path(tempfile.gettempdir()).iterdir()}
    before = sandbox_processes()
    driver = (
        "from datagen.steps.sandbox import SandboxLimits, run_python\n"
        "run_python('import os, time\\nopen(\"code-left.txt\", \"w\").write(\"x\")\\nos.fork(); os.fork()\\ntime.sleep(60)',"
        " SandboxLimits(wall_seconds=60, cpu_seconds=60))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", driver], cwd=REPO, start_new_session=True)
    deadline = time.monotonic() + 20
    started: set[int] = set()
    while time.monotonic() < deadline and len(started) < 4:
        time.sleep(0.1)
        started = sandbox_processes() - before
    assert len(started) >= 4, "the sandboxed program and its 3 children did not start"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and started & sandbox_processes():
        time.sleep(0.1)
    assert not started & sandbox_processes(), "sandbox processes outlived datagen"
    after_files = {p.name for p in Path(tempfile.gettempdir()).iterdir()}
    assert not {name for name in after_files - before_files if "datagen" in name or "code-left" in name}


def test_no_capabilities_and_no_network_interfaces():
    result = run(
        """
        import socket
        status = open("/proc/self/status").read()
        print([line.split()[1] for line in status.splitlines() if line.startswith(("CapEff", "CapPrm", "CapAmb"))])
        print(socket.if_nameindex())
        try:
            socket.create_connection(("1.1.1.1", 53), timeout=2)
            print("CONNECTED")
        except OSError as exc:
            print("no network:", exc.strerror)
        """
    )
    assert result.status == "passed", result.stderr
    caps, interfaces = result.stdout.splitlines()[:2]
    assert caps == "['0000000000000000', '0000000000000000', '0000000000000000']"
    assert interfaces == "[(1, 'lo')]" and "CONNECTED" not in result.stdout


def test_no_nested_namespace_or_mount_can_get_around_the_disk_quota():
    result = run(
        """
        import ctypes, os, threading
        libc = ctypes.CDLL(None, use_errno=True)
        attempts = {
            "unshare": lambda: libc.unshare(0x10000000 | 0x00020000),
            "clone": lambda: libc.syscall(56 if os.uname().machine == "x86_64" else 220, 0x10000000 | 17, 0, 0, 0, 0),
            "mount": lambda: libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, b"size=2g"),
        }
        for name, attempt in attempts.items():
            print(name, attempt(), os.strerror(ctypes.get_errno()))
        worker = threading.Thread(target=print, args=("threads still work",))
        worker.start(), worker.join()
        pid = os.fork()
        if pid == 0:
            os._exit(3)
        print("fork still works", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        """,
        max_processes=8,
    )
    assert result.status == "passed", result.stderr
    lines = result.stdout.splitlines()
    assert lines[:3] == ["unshare -1 Operation not permitted", "clone -1 Operation not permitted", "mount -1 Operation not permitted"]
    assert lines[3:] == ["threads still work", "fork still works 3"]
