"""The sandbox for model-generated code: each test runs hostile code against one limit."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import tempfile
import textwrap
from pathlib import Path

import pytest
import yaml

from datagen.steps.sandbox import SandboxLimits, run_python

from helpers import TEMPLATES, datagen_in_process


def run(code: str, **limits):
    return run_python(textwrap.dedent(code), SandboxLimits(**limits))


def processes_of_uid(uid: int) -> list[int]:
    """Live or zombie processes whose real uid is `uid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:  # exited meanwhile
            continue
        real_uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
        if int(real_uid) == uid:
            found.append(int(entry.name))
    return found


def test_correct_code_passes():
    result = run(
        """
        def add(a, b):
            return a + b

        assert add(1, 2) == 3
        print("ok")
        """
    )
    assert result.passed and result.status == "passed"
    assert (result.returncode, result.stdout, result.detail) == (0, "ok\n", "")


def test_failing_assert_fails_with_the_assertion_in_the_detail():
    result = run(
        """
        def add(a, b):
            return a - b

        assert add(1, 2) == 3
        """
    )
    assert not result.passed
    assert (result.status, result.returncode) == ("failed", 1)
    assert result.detail == "AssertionError: assert add(1, 2) == 3"
    assert "main.py" in result.stderr and "boot.py" not in result.stderr


def test_syntax_error_fails():
    result = run("def broken(:\n    pass\n")
    assert result.status == "failed" and result.detail.startswith("SyntaxError")


def test_infinite_loop_is_stopped_by_the_cpu_limit():
    result = run("while True: pass", cpu_seconds=1, wall_seconds=30)
    assert result.status == "timeout"
    assert result.detail == "cpu time limit 1 s"
    assert result.returncode in (-signal.SIGXCPU, -signal.SIGKILL)
    assert result.seconds < 15  # the CPU limit, not the wall limit, ended it


def test_sleep_is_stopped_by_the_wall_limit():
    result = run(
        """
        import os, time
        print(os.getcwd(), flush=True)
        time.sleep(100)
        """,
        wall_seconds=1,
    )
    assert result.status == "timeout" and result.detail == "wall time limit 1 s"
    assert result.seconds < 5
    assert result.stdout.strip() == "/tmp", "the working dir is the sandbox's own tmpfs"


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "no pidfd"])
def test_the_end_of_a_run_is_seen_with_or_without_a_pidfd(monkeypatch, pidfd):
    # Without pidfds (an old kernel, a seccomp policy) the sandbox polls for the exit instead.
    if not pidfd:
        def refused(pid, flags=0):
            raise PermissionError(1, "Operation not permitted")
        monkeypatch.setattr(os, "pidfd_open", refused)
    quick = run("print(6 * 7)")
    assert (quick.status, quick.stdout.strip()) == ("passed", "42")
    slow = run("import time\ntime.sleep(100)", wall_seconds=2)  # on a loaded machine the start alone may take a second
    assert slow.status == "timeout" and 2 <= slow.seconds < 8, slow


@pytest.mark.parametrize(
    "code",
    [
        "x = bytearray(10**10)",
        """
        chunks = []
        while True:
            chunks.append(" " * 10**6)
        """,
    ],
    ids=["one-huge-allocation", "growing-list"],
)
def test_huge_allocations_hit_the_memory_limit(code):
    result = run(code, memory_mb=256)
    assert result.status == "memory"
    assert result.detail.startswith("memory limit 256 MB") and "MemoryError" in result.detail


def test_writing_a_100_mb_file_stops_at_the_file_size_limit():
    result = run(
        """
        import os
        try:
            with open("big.bin", "wb") as handle:
                for _ in range(100):
                    handle.write(bytes(2**20))
        finally:
            print(os.path.getsize("big.bin"))
        """,
        file_size_mb=4,
    )
    assert result.status == "failed" and "File too large" in result.detail
    assert int(result.stdout) == 4 * 2**20


def test_tcp_connection_to_a_local_listener_fails_and_never_arrives():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        result = run(
            f"""
            import socket
            with socket.create_connection(("127.0.0.1", {port}), timeout=2) as conn:
                conn.sendall(b"leaked")
            """
        )
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert result.status == "failed"


def test_udp_datagram_to_a_local_socket_never_arrives():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        port = receiver.getsockname()[1]
        result = run(
            f"""
            import socket
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"leaked", ("127.0.0.1", {port}))
            """
        )
        receiver.setblocking(False)
        with pytest.raises(BlockingIOError):
            receiver.recvfrom(100)
    # The send itself may succeed: it goes to the sandbox's own loopback, not the host's.
    assert result.status in ("passed", "failed")


def test_files_outside_the_work_dir_are_untouched(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("original")
    outside.chmod(0o777)  # so plain file permissions alone would not protect it
    victim.chmod(0o666)
    result = run(
        f"""
        import os, pathlib, shutil
        victim, outside = {str(victim)!r}, {str(outside)!r}
        attempts = {{
            "remove": lambda: os.remove(victim),
            "overwrite": lambda: open(victim, "w").write("pwned"),
            "append": lambda: pathlib.Path(victim).open("a").write("pwned"),
            "low-level": lambda: os.write(os.open(victim, os.O_WRONLY | os.O_TRUNC), b"pwned"),
            "truncate": lambda: os.truncate(victim, 0),
            "rename": lambda: os.rename(victim, "stolen.txt"),
            "chmod": lambda: os.chmod(victim, 0),
            "rmtree": lambda: shutil.rmtree(outside),
            "new file": lambda: open(os.path.join(outside, "new.txt"), "w").write("x"),
            "via symlink": lambda: (os.symlink(victim, "link"), open("link", "w").write("pwned")),
            "via dir_fd": lambda: os.open("victim.txt", os.O_WRONLY | os.O_TRUNC, dir_fd=os.open(outside, os.O_RDONLY)),
            "inside": lambda: open("mine.txt", "w").write("fine"),
        }}
        for name, attempt in attempts.items():
            try:
                attempt()
                print(name, "DONE")
            except OSError as exc:
                print(name, "refused:", exc)
        """
    )
    assert result.status == "passed", result.stderr
    assert victim.read_text() == "original"
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
    done = [line for line in result.stdout.splitlines() if line.endswith("DONE")]
    assert done == ["inside DONE"], result.stdout


def test_fork_bomb_is_contained_and_leaves_no_process_behind():
    result = run(
        """
        import os, time
        print(os.getuid(), flush=True)
        # Every child forks on too, doubling: 64 processes at most even if the limit failed.
        for _ in range(6):
            try:
                os.fork()
            except OSError:
                print("fork refused", flush=True)
                break
        time.sleep(60)
        """,
        max_processes=8,
        cpu_seconds=1,
        wall_seconds=2,
    )
    sandbox_uid = int(result.stdout.split()[0])
    if sandbox_uid != os.getuid():  # a dedicated uid: forks are allowed up to RLIMIT_NPROC
        assert result.status == "timeout"
        assert "fork refused" in result.stdout  # the process limit (8) stopped the doubling
        assert processes_of_uid(sandbox_uid) == []
    else:  # no uid of its own to count processes by, so forking is refused outright
        assert result.status == "failed" and "os.fork is not allowed" in result.detail


def test_parent_environment_is_not_visible(monkeypatch):
    monkeypatch.setenv("DATAGEN_TEST_SECRET", "s3cr3t-value")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    result = run("import json, os\nprint(json.dumps(dict(os.environ)))")
    env = json.loads(result.stdout)
    assert "s3cr3t-value" not in result.stdout and "hf_not_a_real_token" not in result.stdout
    assert set(env) <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "PWD"}
    assert env["HOME"] != os.environ.get("HOME")


def test_output_beyond_output_chars_is_truncated():
    result = run('print("a" * 50_000)\nprint("END")', output_chars=1000)
    assert result.passed
    assert len(result.stdout) < 1100
    assert result.stdout.startswith("a" * 400) and result.stdout.endswith("END\n")
    assert "truncated" in result.stdout


def test_a_signal_death_is_reported_as_killed():
    result = run("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
    assert (result.status, result.returncode, result.detail) == ("killed", -signal.SIGSEGV, "killed by SIGSEGV")


def test_a_signal_death_is_not_blamed_on_memory_when_datagen_itself_is_large():
    # A forked child's peak RSS includes the parent's pages until exec: with datagen holding more
    # than the sandbox's memory limit (a loaded model, a long test session), that figure must not
    # turn a signal death into "memory".
    ballast = bytearray(600 << 20)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    result = run("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
    del ballast
    assert (result.status, result.detail) == ("killed", "killed by SIGSEGV")


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid drop and namespaces are set up when datagen runs as root")
def test_as_root_the_code_runs_unprivileged_in_private_namespaces():
    result = run("import json, os, socket\nprint(json.dumps([os.getuid(), os.getpid(), socket.if_nameindex()]))")
    uid, pid, interfaces = json.loads(result.stdout)
    assert uid not in (0, 65534)  # a dedicated uid, not root and not the shared nobody
    assert pid == 2  # pid 1 of its namespace is the sandbox's init
    assert interfaces == [[1, "lo"]]  # a network namespace of its own: nothing to reach


def test_invalid_limits_are_refused():
    with pytest.raises(ValueError, match="cpu_seconds"):
        SandboxLimits(cpu_seconds=0)


def host_temp_entries() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).iterdir() if p.name != "datagen-sandbox-uids"}


@pytest.mark.parametrize("code, status", [("print('ok')", "passed"), ("raise SystemExit(3)", "failed")], ids=["passed", "failed"])
def test_nothing_is_left_in_the_host_temp_dir_whatever_the_outcome(code, status):
    before = host_temp_entries()
    result = run(f"import os\nopen('left.txt', 'w').write('x')\nprint(os.getcwd(), flush=True)\n{code}")
    assert result.status == status
    assert result.stdout.split()[0] == "/tmp"
    assert not {name for name in host_temp_entries() - before if "datagen" in name or name == "left.txt"}


@pytest.mark.skipif(os.geteuid() != 0, reason="forking is refused outright without a dedicated uid and pid namespace")
def test_a_background_child_does_not_outlive_the_run():
    result = run(
        """
        import os, time
        if os.fork() == 0:
            os.setsid()  # a daemon of its own session, out of the process group
            time.sleep(60)
            os._exit(0)
        print(os.getuid(), flush=True)
        """,
        wall_seconds=30,
    )
    assert result.status == "passed" and result.seconds < 10, "the run ends with its main process"
    assert processes_of_uid(int(result.stdout)) == []


BAD_LIMITS = [
    ("cpu_seconds", ".inf"), ("cpu_seconds", "1e30"), ("wall_seconds", ".nan"), ("memory_mb", "1e30"), ("disk_mb", "999999"),
    ("max_processes", "-1"), ("file_size_mb", "0"), ("output_chars", "1e300"), ("workers", "1e9"),
]  # fmt: skip


@pytest.mark.parametrize("field, value", BAD_LIMITS)
def test_verifier_limits_that_are_not_finite_or_past_the_maxima_are_refused(field, value):
    from pydantic import ValidationError

    from datagen.steps.verify import VerifyConfig

    with pytest.raises(ValidationError) as info:
        VerifyConfig(verifiers={"tiny": {"kind": "python_tests", field: yaml.safe_load(value)}})
    assert [error["loc"][-1] for error in info.value.errors()] == [field]


@pytest.mark.parametrize("field, value", [BAD_LIMITS[0], BAD_LIMITS[3]])
def test_a_bad_limit_in_a_recipe_is_one_line_naming_the_field_and_exit_2(project, field, value):
    recipe = project(stages=[{"stage": "verify", "verifiers": {"tiny": {"kind": "python_tests"}}}])
    result = datagen_in_process("validate", recipe, "--set", f"stages.0.verifiers.tiny.{field}={value}")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(rf"verifiers\.tiny\.(python_tests\.)?{field}: ", lines[0]), result.stderr


def test_the_largest_documented_limits_are_accepted(project):
    from datagen.steps.sandbox import MAXIMA
    from datagen.steps.verify import PythonTestsVerifier

    PythonTestsVerifier(**{name: MAXIMA[name] for name in ("cpu_seconds", "wall_seconds", "memory_mb", "disk_mb", "max_processes", "file_size_mb", "output_chars")})
    with pytest.raises(ValueError, match="finite"):
        SandboxLimits(cpu_seconds=float("inf"))
    with pytest.raises(ValueError, match="memory_mb"):
        SandboxLimits(memory_mb=MAXIMA["memory_mb"] + 1)


# ---------------------------------------------------------------- the tests' evaluator (no sandbox)

from datagen.steps.sandbox import CallOutcome  # noqa: E402
from datagen.steps.sandbox import values  # noqa: E402
from datagen.steps.sandbox.suite import Suite  # noqa: E402
from datagen.steps.sandbox.suite import TestsError as UnsupportedTests  # noqa: E402 - a Test* name pytest would collect


def answer(suite: Suite, functions: dict) -> tuple[str, str, int]:
    """Run `suite` to the end, answering its calls with plain Python `functions` (what the sandbox
    does, minus the sandbox): (status, detail, rounds)."""
    answers: dict = {}
    for rounds in range(1, 6):
        outcome = suite.run(answers)
        if outcome.status != "pending":
            return outcome.status, outcome.detail, rounds
        for key, call in outcome.pending.items():
            try:
                answers[key] = CallOutcome(functions[call.name](*call.args, **call.kwargs))
            except Exception as exc:  # noqa: BLE001
                answers[key] = CallOutcome(error=f"{type(exc).__name__}: {exc}")
    raise AssertionError("never finished")


def test_the_shipped_tests_parse_and_their_reference_solutions_pass_in_the_evaluator():
    tasks = yaml.safe_load((TEMPLATES / "python_functions.yaml").read_text())["slots"]["task"]
    for task in tasks:
        namespace: dict = {}
        exec(task["solution"], namespace)  # shipped reference solutions, not model output
        assert answer(Suite(task["tests"]), namespace)[0] == "passed", task["id"]


def test_a_failed_assert_names_the_line_and_what_came_back():
    suite = Suite("assert add(1, 2) == 3\nassert add(2, 2) == 4\n")
    status, detail, rounds = answer(suite, {"add": lambda a, b: a * b})
    assert (status, rounds) == ("failed", 2)
    assert detail == "line 1: assert add(1, 2) == 3 (got 2)"


def test_every_independent_call_is_asked_in_one_round_and_nested_calls_in_the_next():
    suite = Suite("x = [3, 1]\nassert decode(encode(x)) == x\nassert encode([]) == ''\nassert all(sq(i) == i * i for i in range(4))\n")
    first = suite.run({})
    names = sorted((call.name, call.args) for call in first.pending.values())
    assert names == [("encode", ([],)), ("encode", ([3, 1],))] + [("sq", (i,)) for i in range(4)]
    honest = {"encode": lambda xs: ",".join(map(str, xs)), "decode": lambda s: [int(v) for v in s.split(",") if v], "sq": lambda i: i * i}
    assert answer(suite, honest) == ("passed", "", 3)
    assert answer(suite, honest | {"sq": lambda i: i + i})[0] == "failed"


def test_builtins_math_methods_and_exceptions_are_evaluated_here():
    suite = Suite(
        "import math\nassert math.isclose(mean([1, 2]), 1.5)\nassert sorted(uniq('aab')) == ['a', 'b']\n"
        "assert len(uniq('')) == 0 and isinstance(uniq('x'), set)\nassert name().strip().lower() == 'ada'\nassert div(1, 0) is None\n"
    )
    honest = {"mean": lambda xs: sum(xs) / len(xs), "uniq": set, "name": lambda: " Ada ", "div": lambda a, b: None if b == 0 else a / b}
    assert answer(suite, honest)[0] == "passed"
    status, detail, _ = answer(suite, honest | {"div": lambda a, b: a / b})
    assert status == "failed" and detail == "line 6: calling div(1, 0): ZeroDivisionError: division by zero"


@pytest.mark.parametrize(
    "tests, message",
    [
        ("for i in range(3):\n    assert f(i)\n", "For statements are not supported"),
        ("def helper():\n    pass\nassert f(1)\n", "FunctionDef statements"),
        ("assert f(lambda x: x)\n", "Lambda is not supported"),
        ("from os import system\nassert f(1)\n", "ImportFrom statements"),
        ("import os\nassert f(1)\n", "Import statements"),
        ("assert f(1).__class__\n", "attribute '__class__'"),
        ("assert f(*[1])\n", "without * or **"),
        ("assert f(1).format(2)\n", "method 'format'"),
        ("x = 1\n", "no assert statement"),
        ("assert f(\n", "not valid Python"),
    ],
)
def test_tests_the_evaluator_cannot_run_are_refused_with_the_reason(tests, message):
    with pytest.raises(UnsupportedTests, match=re.escape(message)):
        Suite(tests)


def test_test_sizes_are_bounded():
    assert answer(Suite("assert f() * 10**9 == 0\n"), {"f": lambda: "ab"})[1].endswith("repetition to more than 1000000 items")
    assert "a power of more than" in answer(Suite("assert 10 ** f() > 0\n"), {"f": lambda: 10**9})[1]
    assert "a set of more than" in answer(Suite("assert set(f()) == set()\n"), {"f": lambda: list(range(20_000))})[1]


@pytest.mark.parametrize(
    "value",
    [None, True, 0, -(2**80), 1.5, float("inf"), 1j, "é\udc80", b"\x00", [1, [2]], (1,), {1, 2}, frozenset({3}), {"a": (1, None)}, {(1, 2): {}}],
    ids=repr,
)
def test_plain_values_survive_the_boundary_with_their_exact_types(value):
    import json

    back = values.decode(json.loads(json.dumps(values.encode(value))))
    assert back == value and type(back) is type(value)


@pytest.mark.parametrize(
    "data",
    [{"object": []}, {"list": [], "tuple": []}, {"int": 5}, {"float": "1.5"}, {"set": [{"list": []}]}, {"dict": [[1]]},
     [1, 2], {"set": list(range(10_001))}, {"complex": ["a", 1]}],
    ids=repr,
)  # fmt: skip
def test_anything_outside_the_encoding_is_refused_by_the_decoder(data):
    with pytest.raises(ValueError):
        values.decode(data)


def test_subclasses_and_objects_are_not_plain_data():
    class Forged(int):
        def __eq__(self, other):
            return True

    for value in (Forged(1), object(), [Forged(2)], (x for x in ())):
        with pytest.raises(TypeError):
            values.encode(value)


# ---------------------------------------------------------------- fail closed


def test_the_sandbox_runs_here():
    from datagen.steps.sandbox import unavailable

    assert unavailable() is None  # CI installs bubblewrap (install.sh); a machine without it fails closed


def test_without_bubblewrap_nothing_runs_and_the_recipe_is_refused(monkeypatch):
    import datagen.steps.sandbox as sandbox
    import datagen.steps.verify as verify
    from pydantic import ValidationError

    monkeypatch.setattr(sandbox, "bwrap_path", lambda: None)
    monkeypatch.setattr(verify, "bwrap_path", lambda: None)
    result = run("print('ran')")
    assert (result.status, result.stdout) == ("error", "") and "bubblewrap" in result.detail
    assert "bubblewrap" in sandbox.unavailable()
    with pytest.raises(ValidationError, match="python_tests needs bubblewrap"):
        verify.VerifyConfig(verifiers={"*": {"kind": "python_tests"}})


def test_a_bwrap_that_cannot_create_namespaces_fails_every_candidate_closed(tmp_path, monkeypatch):
    import datagen.steps.sandbox as sandbox
    from datagen.steps.verify import PythonTestsVerifier

    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sandbox, "bwrap_path", lambda: str(fake))
    assert sandbox.unavailable() == "the bubblewrap sandbox cannot run here: sandbox setup failed: bwrap: No permissions to create new namespace"
    verdict = PythonTestsVerifier().check({"completion": "def f():\n    return 1\n", "tests": "assert f() == 1\n"})
    assert (verdict.keep, verdict.reason) == (False, "sandbox_error")


@pytest.mark.parametrize(
    "tests",
    [
        "assert len([i for i in range(10**6) for j in range(10**6)]) > f()\n",
        "a = [f(), f()]\nb = [a, a, a, a, a, a, a, a, a, a]\nc = [b, b, b, b, b, b, b, b, b, b]\nd = [c, c, c, c, c, c, c, c, c, c]\n"
        "e = [d, d, d, d, d, d, d, d, d, d]\ng = [e, e, e, e, e, e, e, e, e, e]\nh = [g, g, g, g, g, g, g, g, g, g]\nassert str(h) == str(list(h))\n",
        "assert [[f()] * 1000] * 1000 == []\n",
    ],
    ids=["nested-loops", "shared-parts", "repeated-containers"],
)
def test_tests_that_would_take_unbounded_time_or_memory_here_are_stopped(tests):
    import time

    started = time.monotonic()
    try:
        status, detail, _ = answer(Suite(tests), {"f": lambda: 1})
    except UnsupportedTests as err:
        status, detail = "unsupported", str(err)
    assert time.monotonic() - started < 10
    assert status in ("failed", "unsupported") and ("more than" in detail or "not supported" in detail), detail


def test_the_seccomp_filter_exists_for_both_architectures_and_fails_closed_elsewhere():
    from datagen.steps.sandbox import seccomp

    for machine in ("x86_64", "aarch64"):
        program = seccomp.program(machine)
        assert len(program) % 8 == 0 and 10 < len(program) // 8 < 64  # struct sock_filter entries
    with pytest.raises(OSError, match="no seccomp table"):
        seccomp.program("sparc64")


def test_an_assert_message_is_never_evaluated_and_math_needs_no_import():
    suite = Suite('assert math.isclose(half(1), 0.5), f"half(1) gave {half(1)!r}"\n')
    assert answer(suite, {"half": lambda x: x / 2})[0] == "passed"
    assert answer(suite, {"half": lambda x: x // 2})[1] == "line 1: assert math.isclose(half(1), 0.5)"
