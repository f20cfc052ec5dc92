from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections import Counter

import datasets
import polars as pl
import pytest
import yaml
from pydantic import ValidationError

from datagen.errors import DatagenError
from datagen.run.executor import run_pipeline
from datagen.recipe import load_recipe
from datagen.steps.verify import VerifyConfig, extract_code

from helpers import REPO, TEMPLATES, write_yaml

COLUMNS = {"prompt_id": pl.String, "template_id": pl.String, "completion": pl.String, "reference": pl.String, "tests": pl.String}
PY_TASKS = {task["id"]: task for task in yaml.safe_load((TEMPLATES / "python_functions.yaml").read_text())["slots"]["task"]}
FAST = {"kind": "python_tests", "cpu_seconds": 2, "wall_seconds": 4, "memory_mb": 256}


def frame(rows: list[dict]) -> pl.DataFrame:
    full = [{"prompt_id": f"p{i}", "template_id": "t"} | row for i, row in enumerate(rows)]
    return pl.DataFrame(full, schema=COLUMNS)


def verify(verifiers: dict, rows: list[dict]) -> pl.DataFrame:
    stage = VerifyConfig(verifiers=verifiers).build()
    batch = frame(rows)
    out = stage(batch)
    assert out.height == batch.height and out["completion"].to_list() == batch["completion"].to_list()
    return out


def math_rows(pairs: list[tuple[str, str | None]]) -> list[dict]:
    return [{"completion": completion, "reference": reference} for completion, reference in pairs]


# ---------------------------------------------------------------- math


def test_math_equivalent_forms_pass():
    pairs = [
        ("Half of them, so \\boxed{1/2}.", "1/2"),
        ("The probability is \\boxed{0.5}.", "1/2"),
        ("So the answer is \\boxed{\\frac{1}{2}}", "1/2"),
        ("Each side is equally likely.\nAnswer: 0.5", "\\frac{1}{2}"),
        ("There are 10 * 9 / 2 = 45 handshakes.\n\\boxed{45}", "45"),
        ("3/8 + 1/4 = 5/8 eaten, so \\boxed{\\dfrac{3}{8}} is left.", "3/8"),
        ("1 - 5/8 leaves \\boxed{0.375} of the pizza.", "3/8"),
        ("Sam pays 7.5 + 5 = 12.5 dollars in total.", "12.5"),
    ]
    out = verify({"*": {"kind": "math"}}, math_rows(pairs))
    assert out["verify_keep"].to_list() == [True] * len(pairs), out.select("completion", "verify_detail").rows()
    assert out["verify_reason"].is_null().all() and (out["verify_verifier"] == "math").all()
    assert out["verify_answer"].to_list()[:3] == ["1/2", "0.5", "\\frac{1}{2}"], "as the completion writes it"


def test_math_wrong_empty_and_garbage_answers_fail():
    pairs = [
        ("Each of 10 people shakes 9 hands, so \\boxed{46}.", "45"),
        ("10 choose 2 is 45, so the answer is \\boxed{}", "45"),
        ("10 choose 2 = 45. Final: \\boxed{?}", "45"),
        ("I count 45 handshakes. \\boxed{banana}", "45"),
        ("Either \\boxed{45} or \\boxed{46}", "45"),
        ("I am not sure how to solve this.", "45"),
        ("Answer: 46", "45"),
        ("", "45"),
    ]
    out = verify({"*": {"kind": "math"}}, math_rows(pairs))
    assert not out["verify_keep"].any(), out.select("completion", "verify_answer").rows()
    reasons = out["verify_reason"].to_list()
    assert reasons == ["wrong_answer", "no_answer", "no_answer", "wrong_answer", "wrong_answer", "no_answer", "wrong_answer", "no_answer"]
    assert out["verify_answer"][0] == "46" and out["verify_detail"][0] == "expected 45, got 46"
    assert out["verify_detail"][1] == "empty \\boxed{}" and out["verify_answer"][1] is None
    assert out["verify_answer"][3] == "banana"


def test_math_without_a_usable_reference_fails_loudly():
    out = verify({"*": {"kind": "math"}}, math_rows([("\\boxed{45}", None), ("\\boxed{45}", "  "), ("\\boxed{45}", "{{")]))
    assert out["verify_keep"].to_list() == [False, False, False]
    assert out["verify_reason"].to_list() == ["no_reference", "no_reference", "bad_reference"]
    assert out["verify_answer"].to_list() == ["45", "45", "45"], "the extracted answer is recorded anyway"


def test_math_require_box():
    rows = math_rows([("The answer is 45.", "45"), ("So \\boxed{45}.", "45")])
    assert verify({"*": {"kind": "math"}}, rows)["verify_keep"].to_list() == [True, True]
    strict = verify({"*": {"kind": "math", "require_box": True}}, rows)
    assert strict["verify_keep"].to_list() == [False, True] and strict["verify_detail"][0] == "no \\boxed{} answer"


def test_regex_search_and_fullmatch():
    rows = [{"completion": "Final verdict: APPROVED (score 9)"}, {"completion": "final verdict: rejected"}, {"completion": "  42 \n"}]
    out = verify({"*": {"kind": "regex", "pattern": r"verdict: (?P<answer>approved|rejected)", "flags": ["ignorecase"]}}, rows)
    assert out["verify_keep"].to_list() == [True, True, False]
    assert out["verify_answer"].to_list() == ["APPROVED", "rejected", None] and out["verify_reason"][2] == "no_match"
    full = verify({"*": {"kind": "regex", "pattern": r"\d+", "mode": "fullmatch"}}, rows)
    assert full["verify_keep"].to_list() == [False, False, True] and full["verify_answer"][2] == "42"


# Run in a child process: were the match to backtrack without a time limit (Python's `re` takes
# minutes on these 41 characters), the test fails on its timeout instead of hanging the suite.
CATASTROPHIC = """
import json, sys, polars as pl
from datagen.steps.verify import VerifyConfig
rows = pl.DataFrame({"template_id": ["t", "t"], "completion": ["a" * 40 + "b", "aaaa"]})
out = {}
for pattern, mode in [("(a+)+$", "search"), ("(a|aa)+$", "search"), ("(a|aa)+$", "fullmatch")]:
    stage = VerifyConfig(verifiers={"*": {"kind": "regex", "pattern": pattern, "mode": mode, "timeout_seconds": 0.2}}).build()
    out[pattern + " " + mode] = stage(rows).select("verify_keep", "verify_reason", "verify_detail").to_dicts()
json.dump(out, sys.stdout)
"""


def test_catastrophic_backtracking_is_a_recorded_verdict_not_a_hung_run():
    child = subprocess.run([sys.executable, "-c", CATASTROPHIC], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert child.returncode == 0, child.stderr
    out = json.loads(child.stdout)
    nested = out["(a+)+$ search"]  # the regex engine needs no time limit for this one: a plain miss
    assert [r["verify_keep"] for r in nested] == [False, True] and nested[0]["verify_reason"] == "no_match"
    for key in ("(a|aa)+$ search", "(a|aa)+$ fullmatch"):
        evil, fine = out[key]
        assert not evil["verify_keep"] and evil["verify_reason"] == "verifier_timeout", key
        assert "gave up after 0.2 s" in evil["verify_detail"]
        assert fine["verify_keep"] and fine["verify_reason"] is None, "a row the pattern matches quickly still passes"
    with pytest.raises(ValidationError, match="timeout_seconds"):
        VerifyConfig(verifiers={"*": {"kind": "regex", "pattern": "x", "timeout_seconds": 0}})


def test_json_schema_inline_and_from_file(tmp_path):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    rows = [
        {"completion": '{"name": "Ada", "age": 36}'},
        {"completion": 'Sure! Here it is:\n```json\n{"name": "Alan", "age": 41}\n```'},
        {"completion": '{"name": "Ada", "age": -1}'},
        {"completion": '{"name": "Ada"}'},
        {"completion": "{'name': 'Ada', 'age': 36}"},
        {"completion": '{"name": "Ada", "age": 36, "admin": true}'},
    ]
    expected_keep = [True, True, False, False, False, False]
    expected_reasons = [None, None, "schema_mismatch", "schema_mismatch", "invalid_json", "schema_mismatch"]
    out = verify({"*": {"kind": "json_schema", "schema": schema}}, rows)
    assert out["verify_keep"].to_list() == expected_keep and out["verify_reason"].to_list() == expected_reasons
    assert out["verify_detail"][2].startswith("age:") and "'age' is a required property" in out["verify_detail"][3]

    path = tmp_path / "person.schema.json"
    path.write_text(json.dumps(schema))
    from_file = verify({"*": {"kind": "json_schema", "schema_file": str(path)}}, rows)
    assert from_file["verify_keep"].to_list() == expected_keep
    dumped = VerifyConfig(verifiers={"*": {"kind": "json_schema", "schema": schema}}).model_dump()
    assert VerifyConfig.model_validate(dumped).verifiers["*"].json_schema == schema, "a dumped recipe loads again"


def test_exact_and_contains_with_normalization():
    rows = [
        {"completion": "Paris", "reference": "Paris"},
        {"completion": "  paris\n", "reference": "Paris"},
        {"completion": "The capital is Paris.", "reference": "Paris"},
        {"completion": "Lyon", "reference": "Paris"},
        {"completion": "Paris", "reference": None},
    ]
    exact = verify({"*": {"kind": "exact"}}, rows)
    assert exact["verify_keep"].to_list() == [True, False, False, False, False]
    assert exact["verify_reason"].to_list() == [None, "mismatch", "mismatch", "mismatch", "no_reference"]
    loose = verify({"*": {"kind": "exact", "ignore_case": True}}, rows)
    assert loose["verify_keep"].to_list() == [True, True, False, False, False]
    contains = verify({"*": {"kind": "contains", "ignore_case": True}}, rows)
    assert contains["verify_keep"].to_list() == [True, True, True, False, False]
    assert contains["verify_reason"][3] == "not_found"
    fixed = verify({"*": {"kind": "contains", "value": "capital  is"}}, rows)
    assert fixed["verify_keep"].to_list() == [False, False, True, False, False], "whitespace collapses on both sides"
    kept_spacing = verify({"*": {"kind": "contains", "value": "capital  is", "whitespace": "keep", "ignore_case": True}}, rows)
    assert not kept_spacing["verify_keep"].any()


def test_bad_verifier_configs_are_validation_errors():
    bad = [
        ({"kind": "regex", "pattern": "(unclosed"}, "invalid regular expression"),
        ({"kind": "json_schema", "schema": {"type": "frobnicate"}}, "invalid JSON schema"),
        ({"kind": "json_schema"}, "exactly one of"),
        ({"kind": "json_schema", "schema_file": "no/such/schema.json"}, "not found"),
        ({"kind": "python_tests", "cpu_seconds": 10, "wall_seconds": 5}, "shorter than cpu_seconds"),
        ({"kind": "contains", "value": "  "}, "blank"),
        ({"kind": "regex", "pattern": "x", "flags": ["sticky"]}, "ignorecase"),
        ({"kind": "maths"}, "math"),
        ({"kind": "math", "tolerance": 0.1}, "Extra inputs"),
    ]
    for config, message in bad:
        with pytest.raises(ValidationError, match=message):
            VerifyConfig(verifiers={"*": config})
    with pytest.raises(ValidationError, match="not a template id"):
        VerifyConfig(verifiers={"math word problems": {"kind": "math"}})
    with pytest.raises(ValidationError):
        VerifyConfig(verifiers={})


def test_bad_regex_in_a_recipe_names_the_field(project):
    path = project(stages=[{"stage": "verify", "verifiers": {"tiny": {"kind": "regex", "pattern": "[a-"}}}])
    with pytest.raises(DatagenError, match=r"stages\[0\]\.verify\.verifiers\.tiny.*invalid regular expression"):
        load_recipe(path)


# ---------------------------------------------------------------- python_tests


def fenced(code: str) -> str:
    return f"Here is my solution.\n\n```python\n{code}```\n\nIt handles the edge cases."


def py_row(task_id: str, completion: str) -> dict:
    return {"template_id": "python_functions", "completion": completion, "tests": PY_TASKS[task_id]["tests"]}


def test_extract_code_picks_the_block_that_defines_the_tested_function():
    tests = PY_TASKS["is_palindrome"]["tests"]
    solution = PY_TASKS["is_palindrome"]["solution"]
    text = f"Usage:\n```python\nprint(is_palindrome('aba'))\n```\nCode:\n```python\n{solution}```\nShell:\n```bash\nls\n```"
    assert extract_code(text, tests) == solution
    assert extract_code(solution, tests) == solution, "a bare completion that is Python is the code"
    assert extract_code("I would use two pointers, comparing both ends.", tests) is None
    assert extract_code("```js\nfunction f() {}\n```", tests) is None


def test_python_tests_real_solutions_pass_and_wrong_ones_fail():
    rows = [
        py_row("is_palindrome", fenced(PY_TASKS["is_palindrome"]["solution"])),
        py_row("roman_to_int", fenced(PY_TASKS["roman_to_int"]["solution"])),
        py_row("is_palindrome", fenced("def is_palindrome(s: str) -> bool:\n    return s == s[::-1]\n")),
        py_row("count_vowels", "I think you should count the vowels in a loop."),
        py_row("count_vowels", fenced("def count_vowels(s: str) -> int:\n    return len(s\n")),
        {"template_id": "python_functions", "completion": fenced(PY_TASKS["clamp"]["solution"]), "tests": None},
    ]
    out = verify({"python_functions": FAST}, rows)
    assert out["verify_keep"].to_list() == [True, True, False, False, False, False], out.select("verify_reason", "verify_detail").rows()
    assert out["verify_reason"].to_list() == [None, None, "tests_failed", "no_code", "tests_failed", "no_tests"]
    assert "AssertionError" in out["verify_detail"][2] or "assert" in out["verify_detail"][2], out["verify_detail"][2]
    assert "SyntaxError" in out["verify_detail"][4], out["verify_detail"][4]
    assert (out["verify_verifier"] == "python_tests").all()


def test_code_that_exits_before_the_tests_does_not_pass():
    wrong = "def is_palindrome(s: str) -> bool:\n    return s == s[::-1]\n"
    own_suite = (
        "import unittest\n\n\nclass Check(unittest.TestCase):\n    def test_simple(self):\n"
        "        self.assertTrue(is_palindrome('racecar'))\n\n\nif __name__ == '__main__':\n    unittest.main()\n"
    )
    rows = [
        py_row("is_palindrome", fenced(wrong + "\n\n" + own_suite)),
        py_row("is_palindrome", fenced(wrong + "\n\nimport sys\nsys.exit(0)\n")),
        py_row("is_palindrome", fenced(PY_TASKS["is_palindrome"]["solution"] + "\n\nprint('done')\n")),
    ]
    out = verify({"python_functions": FAST}, rows)
    assert out["verify_reason"].to_list() == ["tests_not_run", "tests_not_run", None], out["verify_detail"].to_list()


def test_hostile_candidates_are_failed_verdicts_and_the_batch_goes_on(tmp_path):
    solution = PY_TASKS["is_palindrome"]["solution"]
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    port = listener.getsockname()[1]
    # Each hostile candidate is the correct solution plus an attack in its body: it passes the
    # tests only if the attack succeeds, so a pass would mean the sandbox let it through.
    attacks = {
        "loop": "while True:\n        pass",
        "allocation": "blob = bytearray(2 * 1024 ** 3)\n    blob[-1] = 1",
        "network": f"import socket\n    socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'leak')",
        "delete": f"import os\n    os.remove({str(victim)!r})",
        "fork_bomb": "import os\n    while True:\n        os.fork()",
    }
    body = solution.split(":\n", 1)[1]
    rows = [py_row("is_palindrome", fenced(f"def is_palindrome(s: str) -> bool:\n    {attack}\n{body}")) for attack in attacks.values()]
    rows.append(py_row("is_palindrome", fenced(solution)))
    try:
        out = verify({"python_functions": FAST | {"max_processes": 16}}, rows)
        try:
            connection, _ = listener.accept()
            leaked = connection.recv(16)
        except TimeoutError:
            leaked = b""
    finally:
        listener.close()
    verdicts = dict(zip(list(attacks) + ["honest"], out.select("verify_keep", "verify_reason", "verify_detail").rows()))
    assert verdicts["honest"][0] is True, verdicts["honest"]
    for name in attacks:
        assert verdicts[name][0] is False and verdicts[name][1], (name, verdicts[name])
    assert verdicts["loop"][1] == "timeout"
    assert verdicts["allocation"][1] in ("memory", "tests_failed"), verdicts["allocation"]
    assert leaked == b"", "the candidate reached the network"
    assert victim.read_text() == "keep me", "the candidate deleted a file outside its directory"


# ---------------------------------------------------------------- selection, errors, summary


def test_per_template_selection_and_default():
    rows = [
        {"template_id": "math_word_problems", "completion": "\\boxed{45}", "reference": "45"},
        {"template_id": "math_word_problems", "completion": "\\boxed{46}", "reference": "45"},
        {"template_id": "assistant_requests", "completion": "A poem about rivers.", "reference": None},
        {"template_id": "python_functions", "completion": fenced(PY_TASKS["clamp"]["solution"]), "tests": PY_TASKS["clamp"]["tests"]},
    ]
    verifiers = {"math_word_problems": {"kind": "math"}, "python_functions": FAST, "*": {"kind": "none"}}
    out = verify(verifiers, rows)
    assert out["verify_verifier"].to_list() == ["math", "math", "none", "python_tests"]
    assert out["verify_keep"].to_list() == [True, False, True, True]
    strict = verify({"math_word_problems": {"kind": "math"}}, rows[:3])
    assert strict["verify_keep"].to_list() == [True, False, False]
    assert strict["verify_reason"][2] == "no_verifier" and strict["verify_verifier"][2] is None


def test_a_verifier_that_breaks_fails_only_its_row():
    # json.loads raises RecursionError (not a decoding error) on JSON nested this deep.
    rows = [{"completion": '{"a": 1}'}, {"completion": "[" * 100_000 + "]" * 100_000}, {"completion": '{"a": "x"}'}]
    out = verify({"*": {"kind": "json_schema", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}}, rows)
    assert out["verify_keep"].to_list() == [True, False, False]
    assert out["verify_reason"].to_list() == [None, "verifier_error", "schema_mismatch"]
    assert out["verify_detail"][1].startswith("RecursionError:")
    nulls = [{"completion": "\\boxed{45}", "reference": "45"}, {"completion": None, "reference": "45"}]
    assert verify({"*": {"kind": "math"}}, nulls)["verify_reason"].to_list() == [None, "no_answer"], "a null completion is no answer"


def test_empty_batch_keeps_the_schema():
    out = VerifyConfig(verifiers={"*": {"kind": "math"}}).build()(frame([]))
    assert out.height == 0 and out.schema["verify_keep"] == pl.Boolean and out.schema["verify_answer"] == pl.String


# ---------------------------------------------------------------- full pipeline

ARITH_TEMPLATE = {
    "id": "arith",
    "description": "tiny math problems with known answers",
    "user": "{{ problem.question }} Put the final answer in \\boxed{}.",
    "slots": {
        "problem": [
            {"id": "half", "question": "What is 1 divided by 2?", "answer": "1/2"},
            {"id": "handshakes", "question": "How many handshakes do 10 people make?", "answer": "45"},
            {"id": "pizza", "question": "What fraction is left after eating 5/8 of a pizza?", "answer": "3/8"},
        ]
    },
    "reference": "{{ problem.answer }}",
    "expansion": {"mode": "product"},
}
# Completion -> the verdict it deserves for each reference (None = kept), written by hand.
MATH_RESPONSES = {
    "Dividing gives \\boxed{0.5}.": {"1/2": None, "45": "wrong_answer", "3/8": "wrong_answer"},
    "So the answer is \\boxed{\\frac{1}{2}}": {"1/2": None, "45": "wrong_answer", "3/8": "wrong_answer"},
    "Each pair shakes once: 10*9/2 = 45, so \\boxed{45}": {"1/2": "wrong_answer", "45": None, "3/8": "wrong_answer"},
    "1 - 5/8 = 3/8 remains.\nAnswer: 0.375": {"1/2": "wrong_answer", "45": "wrong_answer", "3/8": None},
    "I get \\boxed{46}": {"1/2": "wrong_answer", "45": "wrong_answer", "3/8": "wrong_answer"},
    "The answer is 45 or 0.5 or 0.375, \\boxed{}": {"1/2": "no_answer", "45": "no_answer", "3/8": "no_answer"},
}


def test_pipeline_keeps_exactly_the_correct_answers(project):
    write_yaml(project.root / "templates" / "arith.yaml", ARITH_TEMPLATE)
    path = project(
        templates=[{"name": "arith"}, {"name": "tiny", "count": 2}],
        backend={"kind": "scripted", "responses": list(MATH_RESPONSES), "sampling": {"n": 6, "max_tokens": 100}},
        stages=[{"stage": "verify", "verifiers": {"arith": {"kind": "math"}, "*": {"kind": "none"}}}],
    )
    out = project.root / "out"
    result = run_pipeline(load_recipe(path), out, progress=False)
    rows = pl.read_parquet(out / "run" / "stages" / "01_verify" / "*.parquet")
    math = rows.filter(pl.col("template_id") == "arith")
    expected = [MATH_RESPONSES[c][r] for c, r in math.select("completion", "reference").rows()]
    assert math.height == 18 and None in expected and set(expected) - {None}, "the scripted draw covers both verdicts"
    assert math["verify_reason"].to_list() == expected
    assert math["keep"].to_list() == [e is None for e in expected]
    tiny = rows.filter(pl.col("template_id") == "tiny")
    assert tiny["keep"].all() and (tiny["verify_verifier"] == "none").all()

    stats = {s["stage"]: s for s in result.stage_stats}["verify"]
    assert stats["dropped"] == dict(Counter(e for e in expected if e is not None))
    assert stats["kept"] == result.rows_written == expected.count(None) + tiny.height
    summary = stats["summary"]
    assert summary["by_template"]["arith"]["passed"] == expected.count(None)
    assert summary["by_template"]["arith"]["keep_rate"] == round(expected.count(None) / 18, 4)
    assert summary["by_template"]["tiny"]["keep_rate"] == 1.0 and summary["by_template"]["tiny"]["verifier"] == "none"
    assert summary["by_verifier"]["math"]["verified"] == 18 and summary["by_verifier"]["none"]["passed"] == tiny.height
    assert summary["by_template"]["arith"]["reasons"] == stats["dropped"]
    # the overall figures are over the checked rows: the tiny rows passed unchecked
    assert (summary["verified"], summary["passed"], summary["unchecked"]) == (18, expected.count(None), tiny.height)
    assert summary["keep_rate"] == round(expected.count(None) / 18, 4)
    assert (summary["prompts"], summary["prompts_with_a_pass"]) == (math["prompt_id"].n_unique(), math.filter(pl.col("keep"))["prompt_id"].n_unique())
    assert f"pass rate {expected.count(None) / 18:.1%} of 18 checked rows" in (out / "README.md").read_text()
    assert f"{tiny.height} rows of templates with verifier `none` passed unchecked" in (out / "README.md").read_text()
    json.dumps(summary)

    kept = datasets.load_dataset(str(out), split="train").filter(lambda r: r["template_id"] == "arith")
    assert sorted(r["messages"][-1]["content"] for r in kept) == sorted(c for c, e in zip(math["completion"], expected) if e is None)
