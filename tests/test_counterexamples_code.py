"""Counterexamples from code failures: clusters by failure mode (not topic), a robust k, the plan
printed before anything is generated, code checked by unit tests in the sandbox, and optional
columns optional in every entry point.

tests/data/code_failures.jsonl: 40 failed code eval cases (prompt, output, expected, tests; no
severity or tag column) of three planted kinds, 18 hallucinated library APIs, 14 off-by-one loop
bounds and 8 missing error checks (45/35/20), each a different task in its own wording. The kinds
are hidden in tests/data/code_failures_kinds.json, which datagen never reads. Every expected
solution passes its tests and every failing output fails them (checked by the first test).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import datasets
import polars as pl
import pytest

from helpers import PIPELINES, assert_real_code_failures, train_dpo
from datagen.llm.base import Completion, Generation
from datagen.llm.scripted import ScriptedBackend
from datagen.cli import main
from datagen.counterexamples.config import InputConfig
from datagen.sources.failures import read_failures
from datagen.counterexamples.plan import make_plan, tag_agreement
from datagen.counterexamples.signals import changed_tokens, code_of, is_code_failure
from datagen.run.executor import expand_prompts, run_pipeline
from datagen.recipe import load_recipe
from datagen.rows import BackendConfig
from datagen.steps import StepContext
from datagen.steps.counterexample import CounterexampleConfig, parse_code_counterexample

DATA = Path(__file__).parent / "data"
CODE_FAILURES = DATA / "code_failures.jsonl"
KINDS = json.loads((DATA / "code_failures_kinds.json").read_text())
RECIPE = PIPELINES / "counterexamples.yaml"


def rows() -> list[dict]:
    return [json.loads(line) for line in CODE_FAILURES.read_text().splitlines()]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def purity(clusters: list[dict]) -> float:
    majority = sum(Counter(KINDS[i] for i in c["member_ids"]).most_common(1)[0][1] for c in clusters)
    return majority / sum(len(c["member_ids"]) for c in clusters)


@pytest.mark.slow  # > 4 s on 2 cores (sandbox runs / k-means / a killed child process)
def test_the_fixture_is_what_it_says():
    failures = rows()
    assert Counter(KINDS.values()) == {"api": 18, "off_by_one": 14, "error_handling": 8}
    assert {"severity", "tag"}.isdisjoint(failures[0]) and len({f["prompt"] for f in failures}) == 40
    assert_real_code_failures(failures)


def test_code_is_detected_and_the_difference_is_what_changed():
    assert is_code_failure("Sure! ```python\ndef f(x):\n    return x\n```", None)
    assert is_code_failure("oops", "def f(x):\n    return x + 1")
    assert not is_code_failure("The answer is 18.", "19")
    assert code_of("Here:\n```python\ndef f():\n    pass\n```\nDone.") == "def f():\n    pass\n"
    diff = changed_tokens("```python\nfor i in range(1, n):\n    t += i\n```", "for i in range(1, n + 1):\n    t += i")
    assert diff == "right: + 1"


# ---- the plan: clusters by failure mode, robust k, budget split ------------------------------


@pytest.mark.slow  # > 4 s on 2 cores (sandbox runs / k-means / a killed child process)
def test_plan_json_finds_the_three_failure_modes(monkeypatch, capsys, tmp_path):
    """The CLI's --plan --json for one seed; the other seeds' plans (same code below the CLI, one
    shared embedding) are in test_counterexamples_modes.py."""
    monkeypatch.chdir(tmp_path)
    code = main(["counterexamples", str(CODE_FAILURES), "--budget", "100", "--plan", "--json", "--set", "seed=0"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    plan = json.loads(printed.out)
    clusters = plan["clusters"]
    assert plan["k"] == 3 and len(clusters) == 3, plan["silhouette"]
    assert purity(clusters) >= 0.9
    # 45/35/20 is the split of the hidden kinds (18/14/8 of 40): each kind's cluster gets exactly its share.
    by_kind = {Counter(KINDS[i] for i in c["member_ids"]).most_common(1)[0][0]: c["budget"] for c in clusters}
    assert by_kind == {"api": 45, "off_by_one": 35, "error_handling": 20}
    assert sum(c["budget"] for c in clusters) == 100
    for c in clusters:
        assert c["kind"] == "code" and c["label"] and c["severity"] == 1.0
        assert len(c["central_examples"]) == 3 and c["nearest_training_examples"] == []
        assert set(c["corrected_failure_ids"]) <= set(c["member_ids"])
    assert plan["train"] is None, "no training set unless one is given"
    assert plan["corrected_failure_ids"] == [i for c in clusters for i in c["corrected_failure_ids"]]
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == [], "--plan writes nothing"


@pytest.mark.slow  # loads the sentence encoder: about 9 s
def test_plan_text_and_a_given_k(monkeypatch, capsys, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "Write `sum_list(xs)` returning the sum of a list."},
                                                    {"prompt": "Write `is_even(n)` returning whether n is even."}])
    code = main(["counterexamples", str(CODE_FAILURES), "--budget", "10", "--plan", "--k", "2", "--train", str(train)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert printed.out.startswith("40 failures (code=40), budget 10, 2 clusters\nk: given\n")
    assert printed.out.count("\ncluster ") == 2 and "nearest training train-" in printed.out
    assert "remove them from the held-out eval" in printed.out


def test_a_tag_column_is_reported_against_the_clusters():
    assert tag_agreement([0, 0, 1, 1, 1], ["a", "a", "b", "b", "a"]) == {
        "tagged": 5, "purity": 0.8, "confusion": {0: {"a": 2}, 1: {"a": 1, "b": 2}}}
    assert tag_agreement([0, 1], [None, None]) is None


def test_plan_reports_tags_and_checks_code_corrections(tmp_path):
    records = rows()[:12]
    for r in records:
        r["tag"] = KINDS[r["id"]]
    records[0]["output"] = records[0]["expected"]  # a "failure" whose output passes its own tests
    del records[1]["tests"]
    path = write_jsonl(tmp_path / "f.jsonl", records)
    plan = make_plan(InputConfig(failures=str(path), k=2, code_correction_template="corrections_code", correction_share=1.0), 12, 0)
    report = plan.report()
    assert report["tag_agreement"]["tagged"] == 12 and set(report["tag_agreement"]["confusion"]) == {0, 1}
    corrected = set(report["corrected_failure_ids"])
    assert records[0]["id"] not in corrected and records[1]["id"] not in corrected
    skipped = Counter()
    for c in report["clusters"]:
        skipped.update(c.get("not_corrected", {}))
    assert skipped == {"output_passes_tests": 1, "no_tests": 1} and len(corrected) == 10


# ---- optional columns: every entry point -----------------------------------------------------


def minimal_failures(tmp_path: Path) -> Path:
    """Only the required columns (prompt, output): no id, expected, tag, severity, kind or tests."""
    return write_jsonl(tmp_path / "minimal.jsonl", [{"prompt": r["prompt"], "output": r["output"]} for r in rows()[:9]])


def test_optional_columns_python_api(tmp_path):
    frame = read_failures(minimal_failures(tmp_path))
    assert frame["severity"].to_list() == [1.0] * 9 and frame["kind"].to_list() == ["code"] * 9
    plan = make_plan(InputConfig(failures=str(minimal_failures(tmp_path)), k=2), 6, 0)
    assert sum(c.budget for c in plan.clusters) == 6 and all(c.corrections == [] for c in plan.clusters)


def test_optional_columns_recipe(tmp_path):
    loaded = load_recipe(RECIPE, [f"input.failures={minimal_failures(tmp_path)}", "input.k=2", "budget=6"])
    assert loaded.recipe.input.severity_column == "severity" and loaded.recipe.input.train is None
    prompts = expand_prompts(loaded)
    assert prompts.height == 6 and set(prompts["template_id"]) == {"counterexamples_code"}


def test_optional_columns_cli(tmp_path, capsys):
    assert main(["counterexamples", str(minimal_failures(tmp_path)), "--budget", "6", "--k", "2", "--plan"]) == 0
    assert "budget 6, 2 clusters" in capsys.readouterr().out


def test_a_missing_required_column_is_one_line_exit_2(tmp_path, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"output": "x"}])
    assert main(["counterexamples", str(bad), "--budget", "6", "--plan"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"datagen: error: {bad}: prompt: missing column (the file has: output)"]
    named = write_jsonl(tmp_path / "named.jsonl", [{"prompt": "p", "output": "o"}])
    assert main(["counterexamples", str(named), "--budget", "6", "--plan", "--set", "input.severity_column=weight"]) == 2
    assert "weight: missing column" in capsys.readouterr().err, "a severity column the user named must exist"


def test_the_shipped_example_training_set_is_only_for_the_shipped_failures(tmp_path):
    assert load_recipe(RECIPE).recipe.input.train is not None
    mine = load_recipe(RECIPE, [f"input.failures={minimal_failures(tmp_path)}"]).recipe.input
    assert mine.train is None
    own = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "a task"}])
    assert load_recipe(RECIPE, [f"input.failures={minimal_failures(tmp_path)}", f"input.train={own}"]).recipe.input.train == str(own)


# ---- code counterexamples: parsed, and their solutions run against their own tests -------------

GOOD = ("Problem: Write `count_between(a, b)` returning how many integers lie from a to b, both included.\n"
        "Solution:\n```python\ndef count_between(a, b):\n    return b - a + 1\n```\n"
        "Tests:\n```python\nassert count_between(3, 7) == 5\nassert count_between(2, 2) == 1\n```")
WRONG = GOOD.replace("return b - a + 1", "return b - a").replace("count_between", "span_size")


def test_parse_code_counterexample():
    parsed = parse_code_counterexample(GOOD, min_words=4)
    assert parsed["reason"] is None and parsed["tests"] == "assert count_between(3, 7) == 5\nassert count_between(2, 2) == 1"
    assert parsed["solution"] == "```python\ndef count_between(a, b):\n    return b - a + 1\n```"
    assert parse_code_counterexample(GOOD.split("Tests:")[0], 4)["reason"] == "no_tests"
    assert parse_code_counterexample("def f(): pass", 4)["reason"] == "bad_format"


def test_code_counterexamples_are_kept_only_when_their_tests_pass(tmp_path):
    config = CounterexampleConfig()
    stage = config.build_step(StepContext(BackendConfig(), 0, "test", InputConfig(failures=str(CODE_FAILURES)), 10, 0))
    batch = pl.DataFrame({"candidate_id": ["a", "b", "c"], "completion": [GOOD, WRONG, GOOD], "kind": ["code"] * 3})
    out = stage(batch)
    assert out["counterexample_tests_passed"].to_list() == [True, False, True]
    assert out["counterexample_reason"].to_list() == [None, "tests_failed", "exact_duplicate"]
    assert "got 4" in out["counterexample_detail"][1]


def test_a_correction_row_passes_the_counterexample_step_untouched():
    """A correction asks a failure again: it is not a new problem, so its verdict is null (kept)
    even though its completion would be bad_format as a problem."""
    stage = CounterexampleConfig().build_step(StepContext(BackendConfig(), 0, "test", InputConfig(failures=str(CODE_FAILURES)), 10, 0))
    batch = pl.DataFrame({"candidate_id": ["a", "b"], "completion": [GOOD, "def f(): pass"], "kind": ["code"] * 2,
                          "role": ["counterexample", "correction"]})
    out = stage(batch)
    assert out["counterexample_keep"].to_list() == [True, None]
    assert out["counterexample_tests_passed"].to_list() == [True, None]
    bad = stage(batch.with_columns(role=pl.lit("counterexample")))
    assert bad["counterexample_reason"].to_list() == [None, "bad_format"]


TASK = "Write `count_between(a, b)` that returns how many integers lie from a to b, both included."
TESTS = "```python\nassert count_between(3, 7) == 5\nassert count_between(2, 2) == 1\n```"


def test_a_solution_written_from_the_task_alone_is_checked_by_the_tasks_tests():
    """Task and tests in columns (a parse step's), the completion a solution that never saw the
    tests: 3..7 holds 5 integers, so `b - a` fails and `b - a + 1` passes."""
    config = CounterexampleConfig(problem_column="problem", tests_column="tests")
    stage = config.build_step(StepContext(BackendConfig(), 0, "test", InputConfig(failures=str(CODE_FAILURES)), 10, 0))
    right = "Here it is:\n```python\ndef count_between(a, b):\n    return b - a + 1\n```"
    batch = pl.DataFrame({
        "candidate_id": ["a", "b", "c", "d"],
        "completion": [right, right.replace("b - a + 1", "b - a"), right, GOOD.replace("count_between", "span_of")],
        "kind": ["code"] * 4,
        "problem": [TASK, TASK.replace("count_between", "count_from"), TASK.replace("integers", "whole numbers"), None],
        "tests": [TESTS, TESTS.replace("count_between", "count_from"), "", None],
    })
    out = stage(batch)
    assert out["counterexample_reason"].to_list() == [None, "tests_failed", "no_tests", None], "d: no task column value, the one-step format"
    assert out["counterexample_problem"][0] == TASK and out["counterexample_tests"][0] == "assert count_between(3, 7) == 5\nassert count_between(2, 2) == 1"
    assert out["counterexample_solution"][0] == "```python\ndef count_between(a, b):\n    return b - a + 1\n```"
    assert out["counterexample_tests_passed"].to_list() == [True, False, None, True]
    assert config.reads() >= {"problem", "tests"}
    with pytest.raises(ValueError, match="give both"):
        CounterexampleConfig(problem_column="problem")


# ---- a whole run on code failures, scripted model ---------------------------------------------


THEMES = ["seats in one theatre row", "pages of a book chapter", "floors an elevator passes", "days of a hotel booking",
          "houses along a street", "years of a membership", "rungs of a ladder", "lockers in a school hallway"]
# What the solve step (which sees the task alone, never its tests) answers: right, or off by one.
SOLUTIONS = ["```python\ndef count_between(a, b):\n    return b - a + 1\n```", "```python\ndef count_between(a, b):\n    return b - a\n```"]


class CodeOracle(ScriptedBackend):
    """A failure asked again gets its expected code (sample 0) and its failing output (sample 1);
    a counterexample prompt gets a new task with its unit tests (Task / Unit tests), a theme each."""

    def __init__(self):
        super().__init__([])
        self.cases = {f["prompt"]: f for f in rows()}
        self.turn = 0

    def generate(self, requests, sampling):
        out = []
        for request in requests:
            case = self.cases.get(request.messages[-1]["content"])
            texts = []
            for i in range(sampling.n):
                if case is not None:
                    texts.append(f"```python\n{case['expected']}\n```" if i == 0 else case["output"])
                else:
                    theme = THEMES[self.turn % len(THEMES)]
                    texts.append(f"Task: Counting {theme} numbered from a to b ({self.turn}): write `count_between(a, b)` that returns "
                                 f"how many {theme} there are, both ends included.\nUnit tests:\n{TESTS}")
                    self.turn += 1
            out.append(Generation([Completion(t, "stop", len(t.split())) for t in texts], 50))
        return out


@pytest.fixture(scope="module")
def code_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("code")
    loaded = load_recipe(RECIPE, [f"input.failures={CODE_FAILURES}", "budget=12", "input.k=3", "input.correction_share=0.5",
                                  "backend.kind=scripted", "backend.sampling.n=2",
                                  "stages.3.backend=" + json.dumps({"kind": "scripted", "responses": SOLUTIONS})])
    out = root / "out"
    result = run_pipeline(loaded, out, progress=False, backend_factory=CodeOracle)
    return out, result


@pytest.mark.slow  # > 4 s on 2 cores (sandbox runs / k-means / a killed child process)
def test_code_run_keeps_tested_rows_and_writes_fix_failure_pairs(code_run, tmp_path):
    out, result = code_run
    ds = datasets.load_dataset(str(out), split="train")
    assert ds.num_rows > 0 and all(row["tests_passed"] is True and row["kind"] == "code" for row in ds)
    roles = Counter(ds["role"])
    assert roles["correction"] == 6 and roles["counterexample"] > 0
    stages = pl.read_parquet(out / "run" / "stages" / "05_counterexample" / "*.parquet")
    cx = stages.filter(pl.col("role") == "counterexample")
    assert set(cx["counterexample_tests_passed"].drop_nulls()) == {True, False}
    assert set(cx.filter(~pl.col("counterexample_tests_passed"))["counterexample_reason"]) == {"tests_failed"}
    fixes = stages.filter(pl.col("role") == "correction")
    assert set(fixes.filter(pl.col("sample_index") == 1)["verify_reason"]) == {"tests_failed"}, "the failing output fails"
    pairs = datasets.load_dataset(str(out / "pairs"), split="train")
    assert pairs.num_rows == 6 == result.pairs_written
    by_prompt = {f["prompt"]: f for f in rows()}
    for pair in pairs:
        failure = by_prompt[pair["prompt"][-1]["content"]]
        assert pair["rejected"][0]["content"] == failure["output"] and failure["expected"] in pair["chosen"][0]["content"]
        assert pair["chosen"] != pair["rejected"]
    card = (out / "README.md").read_text()
    assert "dropped:" in card and "tests_passed:" in card and "corrected_failure_ids:" in card
    train_dpo(pairs, tmp_path / "dpo")


def test_a_correction_equal_to_its_failing_output_never_becomes_a_pair(tmp_path):
    class Parrot(CodeOracle):
        def generate(self, requests, sampling):
            got = super().generate(requests, sampling)
            for request, generation in zip(requests, got):
                case = self.cases.get(request.messages[-1]["content"])
                if case is not None:
                    generation.completions[:] = [Completion(case["output"], "stop", 5) for _ in generation.completions]
            return got

    loaded = load_recipe(RECIPE, [f"input.failures={CODE_FAILURES}", "budget=6", "input.k=3", "input.correction_share=0.5",
                                  "backend.kind=scripted", "backend.sampling.n=1"])
    result = run_pipeline(loaded, tmp_path / "out", progress=False, backend_factory=Parrot)
    assert result.pairs_written == 0 and not (tmp_path / "out" / "pairs").exists()


# ---- the CPU default model -------------------------------------------------------------------


@pytest.mark.model
def test_cpu_default_run_on_code_failures(tmp_path, model_cli):
    out = tmp_path / "out"
    result = model_cli("counterexamples", CODE_FAILURES, "--budget", "6", "--k", "3", "--out", out, "--no-progress",
                       "--set", "input.correction_share=0.5", "--set", "backend.sampling.max_tokens=256",
                       "--set", "backend.sampling.n=2")
    assert result.returncode == 0, result.stderr[-3000:]
    stages = pl.read_parquet(out / "run" / "stages" / "05_counterexample" / "*.parquet")
    assert set(stages["kind"]) == {"code"} and set(stages["template_id"]) == {"counterexamples_code", "corrections_code"}
    checked = stages.filter(pl.col("verify_verifier").is_not_null())
    assert set(checked["role"]) == {"correction"} and set(checked["verify_verifier"]) == {"python_tests"}, "code corrections: tests"
    ran_in_sandbox = checked.filter(pl.col("verify_reason").is_null() | (pl.col("verify_reason") == "tests_failed")).height
    ran_in_sandbox += stages["counterexample_tests_passed"].drop_nulls().len()
    assert ran_in_sandbox > 0, "the fixed seed gives code whose tests ran in the sandbox on this model"
    ds = datasets.load_dataset(str(out), split="train")
    assert all(row["tests_passed"] is True and row["tests"] for row in ds), "every kept code row passed its tests"
    if (out / "pairs").exists():
        pairs = datasets.load_dataset(str(out / "pairs"), split="train")
        assert all(p["chosen"] != p["rejected"] for p in pairs)
        train_dpo(pairs, tmp_path / "dpo")


# ---- the optional diagnosis step -------------------------------------------------------------

DIAGNOSES = {
    "api": ["Hallucinated API: calls a library function that does not exist.", "Hallucinated method: no such attribute in the module.",
            "Uses a nonexistent library API."],
    "off_by_one": ["Off-by-one error: the loop bound stops one short.", "Off-by-one in the range end.", "Loop bound off by one."],
    "error_handling": ["Missing error handling for invalid input.", "No error handling: crashes on an empty or zero argument.",
                       "Missing exception handling for bad input."],
}


class Diagnostician(ScriptedBackend):
    """Stands in for a capable model: a one-line diagnosis of the failure's hidden kind, in varied words."""

    def __init__(self):
        super().__init__([])
        self.kinds = {f["prompt"]: KINDS[f["id"]] for f in rows()}
        self.seen: list[list[dict]] = []

    def generate(self, requests, sampling):
        out = []
        for n, request in enumerate(requests):
            self.seen.append(request.messages)
            user = request.messages[-1]["content"]
            prompt = user.split("Task:\n", 1)[1].split("\n\nThe model's answer:", 1)[0]
            options = DIAGNOSES[self.kinds[prompt]]
            function = prompt.split("`")[1].split("(")[0] if "`" in prompt else "the function"
            line = f"{options[n % len(options)][:-1]} in {function}."
            out.append(Generation([Completion(line + "\nMore detail.", "stop", 9)], 40))
        return out


def test_diagnoses_are_clustered_when_asked_for():
    backend = Diagnostician()
    # k given: three phrasings per kind are three sub-modes to the silhouette (it prefers k=7 here).
    config = InputConfig(failures=str(CODE_FAILURES), k=3, diagnose={"backend": {"kind": "scripted"}})
    plan = make_plan(config, 100, 3, diagnose_backend=lambda: backend)
    report = plan.report(details=True)
    assert len(backend.seen) == 40 and "A correct answer:" in backend.seen[0][-1]["content"]
    assert report["embedding_weights"] == {"diagnosis": 1.0} and report["k"] == 3 and report["k_chosen_by"] == "given"
    assert purity(report["clusters"]) == 1.0
    by_kind = {Counter(KINDS[i] for i in c["member_ids"]).most_common(1)[0][0]: c["budget"] for c in report["clusters"]}
    assert by_kind == {"api": 45, "off_by_one": 35, "error_handling": 20}
    assert report["clusters"][0]["central_examples"][0]["diagnosis"].endswith(".")
