"""Python source parsed on several threads at once: CPython 3.11's AST constructor shares one depth
counter between threads (gh-106905), so an unguarded `ast.parse` on worker threads raises
SystemError now and then (it failed the python_tests verifier in CI). Every parse in datagen goes
through datagen.text.python_syntax.parse_python."""

from __future__ import annotations

import ast
import gc
import threading
import time
from pathlib import Path

import pytest

from datagen.counterexamples.signals import looks_like_code
from datagen.outputs.formula import parse_formula
from datagen.steps.sandbox.suite import Suite
from datagen.steps.verify import extract_code
from datagen.text.python_syntax import parse_python

from helpers import REPO

TESTS = "\n".join(f"assert f{i}('x' * {i}) == [{i}, {{'a': ({i}, None)}}]" for i in range(40)) + "\n"
SOLUTION = "```python\n" + "\n".join(f"def f{i}(s):\n    return [{i}, {{'a': ({i}, None)}}]\n" for i in range(40)) + "```"
FORMULA = " + ".join(f"min(judge_score, {i}) * 2" for i in range(25))

ENTRY_POINTS = {
    "parse_python": lambda: parse_python(TESTS),
    "python_tests verifier: extract_code": lambda: extract_code(SOLUTION, TESTS),
    "python_tests verifier: Suite": lambda: Suite(TESTS),
    "counterexample signals: looks_like_code": lambda: looks_like_code(SOLUTION),
    "score formula": lambda: parse_formula(FORMULA),
}


def parse_on_threads(call, threads: int = 4, rounds: int = 3) -> list[BaseException]:
    """Run `call` `rounds` times on each of `threads` threads while every garbage collection (forced
    often: threshold 5) yields the GIL from a gc callback, the way a finalizer does. Returns the
    exceptions raised (a thread stops at its first)."""
    errors: list[BaseException] = []

    def work():
        for _ in range(rounds):
            try:
                call()
            except Exception as err:  # noqa: BLE001 - every exception is a finding here
                errors.append(err)
                return

    def yield_the_gil(phase, info):
        time.sleep(0)

    threshold = gc.get_threshold()
    gc.set_threshold(5)
    gc.callbacks.append(yield_the_gil)
    try:
        workers = [threading.Thread(target=work) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        gc.callbacks.remove(yield_the_gil)
        gc.set_threshold(*threshold)
    return errors


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_parsing_on_many_threads_at_once_never_raises(entry):
    call = ENTRY_POINTS[entry]
    call()  # each parses its input on one thread
    assert parse_on_threads(call) == []


def test_every_parse_in_datagen_goes_through_parse_python():
    unguarded = []
    for path in sorted((REPO / "datagen").rglob("*.py")):
        if path.name == "python_syntax.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            called = node.func if isinstance(node, ast.Call) else None
            if isinstance(called, ast.Attribute) and called.attr == "parse" and getattr(called.value, "id", None) == "ast":
                unguarded.append(f"{Path(path).relative_to(REPO)}:{node.lineno}")
            if isinstance(called, ast.Name) and called.id == "compile" and any("PyCF_ONLY_AST" in ast.unparse(a) for a in node.args):
                unguarded.append(f"{Path(path).relative_to(REPO)}:{node.lineno}")
    assert unguarded == []
