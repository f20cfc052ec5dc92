"""The program that runs inside the sandbox: `python -I -S -B -c <this file's text>`.

It is given, on stdin, one JSON object: {"code": the candidate's program, "calls": null or a
list of [name, args, kwargs] (arguments in the plain-data encoding below), "limits": rlimits,
"uid": the uid/gid to drop to, or null, "results_fd": where the outcomes go, "ready_fd": a
pipe told "ready" once the limits are set, then closed}. It then, in this order:

1. sets the rlimits (CPU, address space, file size, process count, no core files) and, when a
   uid is given (datagen runs as root), drops to it: the candidate never holds a capability;
2. writes the code to `main.py` in the working directory (the sandbox's private tmpfs) and runs
   it as `__main__`, like `python main.py` would;
3. in calls mode, calls each named function of that module with the decoded arguments and writes
   one JSON line per call to the results fd: {"call": i, "value": ENCODED} or {"call": i, "raised": "..."}.

Nothing here is trusted once step 2 has started: the candidate's code can patch this module,
json, builtins, or write its own lines to the results fd. That is by design: what reaches the parent is
plain data, decoded there into exact builtin types (datagen.steps.sandbox.values), and compared there
with expected values this process never sees. Forging a line is no more than choosing a return
value, which the candidate does anyway.

The encoding (shared with datagen.steps.sandbox.values, which decodes it): None, bool, str and ints of
magnitude below 2**53 as themselves; finite floats as JSON numbers with a fraction or exponent;
everything else as a one-key object: {"int": hex}, {"float": "nan" | "inf" | "-inf"},
{"list" | "tuple" | "set" | "frozenset": [items]}, {"dict": [[key, value], ...]},
{"bytes": hex}, {"complex": [real, imag]}. Only objects whose type is exactly one of these
builtins are encoded; a subclass (an int with a forged __eq__) or any other object is refused.
"""

import json
import math
import os
import resource
import sys
import traceback

MAX_DEPTH = 100


def encode(value, depth=0):
    if depth > MAX_DEPTH:
        raise ValueError(f"the value is nested more than {MAX_DEPTH} levels deep")
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return value
    if kind is int:
        return value if -(2**53) < value < 2**53 else {"int": hex(value)}
    if kind is float:
        return value if math.isfinite(value) else {"float": repr(value)}
    if kind in (list, tuple, set, frozenset):
        return {kind.__name__: [encode(item, depth + 1) for item in value]}
    if kind is dict:
        return {"dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if kind is bytes:
        return {"bytes": value.hex()}
    if kind is complex:
        return {"complex": [encode(value.real, depth + 1), encode(value.imag, depth + 1)]}
    raise TypeError(f"{kind.__module__}.{kind.__qualname__} is not plain data (only exact builtin types are compared)")


def decode(value):
    """Arguments from the parent: the same encoding, which the parent produced itself."""
    if not isinstance(value, dict):
        return value
    (tag, body), = value.items()
    if tag == "int":
        return int(body, 16)
    if tag == "float":
        return float(body)
    if tag == "bytes":
        return bytes.fromhex(body)
    if tag == "complex":
        return complex(decode(body[0]), decode(body[1]))
    if tag == "dict":
        return {decode(k): decode(v) for k, v in body}
    return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[tag](decode(item) for item in body)


def apply_limits(limits, uid):
    cpu = math.ceil(limits["cpu_seconds"])
    wanted = {
        resource.RLIMIT_CPU: (cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL a second later
        resource.RLIMIT_AS: (limits["memory_mb"] * 2**20,) * 2,
        resource.RLIMIT_FSIZE: (limits["file_size_mb"] * 2**20,) * 2,
        resource.RLIMIT_NPROC: (limits["max_processes"],) * 2,
        resource.RLIMIT_CORE: (0, 0),
    }
    for which, (soft, hard) in wanted.items():
        _, current = resource.getrlimit(which)
        if current != resource.RLIM_INFINITY:
            soft, hard = min(soft, current), min(hard, current)
        resource.setrlimit(which, (soft, hard))
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise SystemExit("sandbox: privileges were not dropped")


def run_main(code, namespace):
    """Run the candidate's program as __main__; False if it raised (the traceback is on stderr)."""
    with open("main.py", "w", encoding="utf-8", errors="surrogatepass") as handle:
        handle.write(code)
    try:
        compiled = compile(code, os.path.abspath("main.py"), "exec")
    except (SyntaxError, ValueError) as exc:
        traceback.print_exception(type(exc), exc, None)
        return False
    module = type(sys)("__main__")
    module.__file__ = os.path.abspath("main.py")
    module.__builtins__ = __builtins__
    sys.modules["__main__"] = module
    namespace["module"] = module
    try:
        exec(compiled, module.__dict__)
    except SystemExit:
        raise
    except BaseException as exc:  # the traceback without this harness's frame
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        return False
    return True


def call_all(module, calls, out):
    for index, (name, args, kwargs) in enumerate(calls):
        try:
            if name.startswith("."):  # a module-level value, not a call
                value = getattr(module, name[1:])
            else:
                function = getattr(module, name)
                value = function(*decode(args), **decode(kwargs))
            line = {"call": index, "value": encode(value)}
        except BaseException as exc:  # noqa: BLE001 - SystemExit too: it is the call's outcome
            message = " ".join(str(exc).split())[:200]
            line = {"call": index, "raised": f"{type(exc).__name__}: {message}" if message else type(exc).__name__}
        out.write(json.dumps(line) + "\n")
        out.flush()


def main():
    request = json.loads(sys.stdin.buffer.read())
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    apply_limits(request["limits"], request["uid"])
    os.write(request["ready_fd"], b"ready\n")  # before any candidate code: it cannot be faked
    os.close(request["ready_fd"])
    out = os.fdopen(request["results_fd"], "w", encoding="utf-8") if request["calls"] is not None else None
    sys.argv = ["main.py"]
    sys.path.insert(0, os.getcwd())
    namespace = {}
    if not run_main(request["code"], namespace):
        sys.exit(1)
    if out is not None:
        call_all(namespace["module"], request["calls"], out)


main()
