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

from datagen.sandbox import SandboxLimits, run_python

from helpers import datagen_cli


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
        cpu_seconds=2,
        wall_seconds=3,
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

    from datagen.stages.verify import VerifyConfig

    with pytest.raises(ValidationError) as info:
        VerifyConfig(verifiers={"tiny": {"kind": "python_tests", field: yaml.safe_load(value)}})
    assert [error["loc"][-1] for error in info.value.errors()] == [field]


@pytest.mark.parametrize("field, value", [BAD_LIMITS[0], BAD_LIMITS[3]])
def test_a_bad_limit_in_a_recipe_is_one_line_naming_the_field_and_exit_2(project, field, value):
    recipe = project(stages=[{"stage": "verify", "verifiers": {"tiny": {"kind": "python_tests"}}}])
    result = datagen_cli("validate", recipe, "--set", f"stages.0.verifiers.tiny.{field}={value}", timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(rf"verifiers\.tiny\.(python_tests\.)?{field}: ", lines[0]), result.stderr


def test_the_largest_documented_limits_are_accepted(project):
    from datagen.sandbox import MAXIMA
    from datagen.stages.verify import PythonTestsVerifier

    PythonTestsVerifier(**{name: MAXIMA[name] for name in ("cpu_seconds", "wall_seconds", "memory_mb", "disk_mb", "max_processes", "file_size_mb", "output_chars")})
    with pytest.raises(ValueError, match="finite"):
        SandboxLimits(cpu_seconds=float("inf"))
    with pytest.raises(ValueError, match="memory_mb"):
        SandboxLimits(memory_mb=MAXIMA["memory_mb"] + 1)
