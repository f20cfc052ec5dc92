"""Counterexamples: a generated practice problem, parsed, checked, and kept only when it is new.

Code clusters (rows whose `kind` is code) are written in two steps in the shipped recipe: the task
and its unit tests (parsed into the columns `problem_column` and `tests_column` name), then a
solution written from the task alone (the text this stage reads), so passing the tests checks it.
Without those columns (or where a row's task is null) the text is one "Problem: ... Solution:
```python``` Tests: ```python```" reply, parsed here. Either way the solution must
pass its own tests, run like the python_tests verifier runs a candidate (datagen.steps.sandbox: the
tests evaluated by datagen, the solution's calls in the bubblewrap sandbox). `<label>_tests` holds
the tests, `<label>_tests_passed` whether they passed (null for other kinds), `<label>_detail`
why not; drop reasons are the verifier's (`tests_failed`, `no_tests` where the tests block is
missing or empty, `verifier_error` for tests outside the supported format, `timeout`, ...).

The counterexample template asks for "Problem: ... Solution: ... Answer: \\boxed{...}". This stage
splits each completion into `<label>_problem`, `<label>_solution` (the worked solution with its
answer line, what the output's assistant turn holds) and `<label>_answer`, and drops it when a part
is missing or still the template's placeholder (`bad_format`), when the final answer is not a
parsable math answer (`no_answer`), or when its problem is the same as, or a near copy of, a failure
(`copies_failure`: training on it would leak the eval), a training example (`in_training_set`) or
a problem kept before it (`exact_duplicate`, `near_duplicate`). Sameness is word-shingle Jaccard
with MinHash LSH, as in the dedup stage; `<label>_match` names the failure, training example or
candidate a dropped problem matches.

Rows whose `role` is correction (a failure asked again) get null verdict columns: they pass untouched.
The stage is built with the recipe's input section, budget and seed from the run's StepContext.

Whether the new problem's own solution is right cannot be checked against the failures' answers;
a judge stage after this one can score it. The summary is the cluster report: each cluster's size,
severity, budget, and the counterexamples and corrections alive after this stage.
"""

from __future__ import annotations

import re
from typing import Any, Callable, ClassVar, Iterator, Literal

import polars as pl
from pydantic import Field, model_validator

from datagen.text.answers import final_answer
from datagen.counterexamples.config import InputConfig
from datagen.steps.base import COLUMN, FittedVerdicts, RunStep, StageConfigBase, StepContext
from datagen.steps.dedup import EXACT, NEAR, REFERENCE, DedupConfig, Deduplicator
from datagen.steps.verify import fenced_blocks

BAD_FORMAT, NO_ANSWER, COPIES_FAILURE, IN_TRAINING_SET = "bad_format", "no_answer", "copies_failure", "in_training_set"
# "Problem:", "**Solution:**", "### Answer:", "Problem 1:" at the start of a line.
SECTION = re.compile(r"^[ \t>#*_-]*(problem|solution|answer)(?:[ \t]+\d+)?[ \t*_]*:[ \t*_]*", re.I | re.M)
CODE_SECTION = re.compile(r"^[ \t>#*_-]*(problem|solution|tests?|unit tests)(?:[ \t]+\d+)?[ \t*_]*:[ \t*_]*", re.I | re.M)
CODE_PLACEHOLDERS = ("<the new task", "<the function>", "<function call>")
PLACEHOLDERS = ("<the new problem>", "<the correct step-by-step solution>", "<the final answer only>")


class CounterexampleConfig(StageConfigBase):
    stage: Literal["counterexample"] = "counterexample"
    threshold: float = Field(0.5, gt=0.0, le=1.0, description="word-shingle Jaccard at which two problems are the same problem")
    shingle_size: int = Field(3, ge=1, le=16, description="words per shingle; problems are short, so shorter than dedup's default")
    num_perm: int = Field(128, ge=16, le=1024)
    min_problem_words: int = Field(8, ge=1, description="a shorter problem is bad_format")
    require_box: bool = Field(True, description="the final answer must be in \\boxed{} (as the template asks)")
    problem_column: str | None = Field(
        None, pattern=COLUMN, description="code rows: the new task as an earlier step wrote it (a parse step); the text is then the solution alone"
    )
    tests_column: str | None = Field(None, pattern=COLUMN, description="code rows: the unit tests as an earlier step wrote them (with problem_column)")

    @model_validator(mode="after")
    def _columns_together(self) -> "CounterexampleConfig":
        if (self.problem_column is None) != (self.tests_column is None):
            raise ValueError("problem_column and tests_column: give both (the task and its tests, written before the solution) or neither")
        return self

    def reads(self) -> set[str]:
        return super().reads() | {c for c in (self.problem_column, self.tests_column) if c}
    # Built with the recipe's input section, budget and seed (the run's StepContext), never bound
    # into the config: the failures and training set it checks against, the plan it reports.
    needs_context: ClassVar[bool] = True

    def build(self) -> "CounterexampleStage":
        raise ValueError(f"the {self.label!r} stage is built with the recipe's input section (build_step with its StepContext)")

    def build_step(self, context: StepContext) -> "CounterexampleStage":
        """The step for a run: `context.input` is the recipe's input section (ValueError without one)."""
        if context.input is None:
            raise ValueError(f"stages: the {self.label!r} stage needs the recipe's input section (the failures it checks against)")
        return CounterexampleStage(self, context.input, context.budget or 0, context.seed, context.plan)


def parse_counterexample(text: str | None, require_box: bool = True, min_words: int = 1) -> dict[str, Any]:
    """problem, solution, answer (None where missing) and reason (None when the format is fine)."""
    parsed: dict[str, Any] = {"problem": None, "solution": None, "answer": None, "reason": BAD_FORMAT}
    text = text or ""
    marks = list(SECTION.finditer(text))
    problem_at = next((i for i, m in enumerate(marks) if m.group(1).lower() == "problem"), None)
    if problem_at is None:
        return parsed
    solution_at = next((i for i in range(problem_at + 1, len(marks)) if marks[i].group(1).lower() == "solution"), None)
    if solution_at is None:
        return parsed
    problem = text[marks[problem_at].end() : marks[problem_at + 1].start()].strip()
    solution = text[marks[solution_at].end() :].strip()
    if len(problem.split()) < min_words or not solution or any(p in problem.lower() or p in solution.lower() for p in PLACEHOLDERS):
        return parsed
    answer, shown, _ = final_answer(solution, require_box)
    parsed.update(problem=problem, solution=solution, answer=shown, reason=None if answer is not None else NO_ANSWER)
    return parsed


def _section(text: str, marks: list[re.Match], name: str) -> str | None:
    for i, m in enumerate(marks):
        if m.group(1).lower().rstrip("s").endswith(name):
            end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
            return text[m.end() : end].strip()
    return None


def first_code(text: str | None) -> str:
    """A section's code: its first non-empty fenced block (fenced_blocks), stripped, else its
    stripped text ("" for None)."""
    text = (text or "").strip()
    blocks = [body.strip() for _, body in fenced_blocks(text) if body.strip()]
    return blocks[0] if blocks else text


def parse_code_counterexample(text: str | None, min_words: int = 1) -> dict[str, Any]:
    """problem, solution (its code, fenced), tests (their code) and reason (bad_format, no_tests, or
    None when the format is fine). A section's code is its first fenced block, else its text."""
    parsed: dict[str, Any] = {"problem": None, "solution": None, "tests": None, "reason": BAD_FORMAT}
    text = text or ""
    marks = list(CODE_SECTION.finditer(text))
    problem, solution, tests = (_section(text, marks, name) for name in ("problem", "solution", "test"))
    if not problem or not solution or len(problem.split()) < min_words:
        return parsed
    if any(p in text.lower() for p in CODE_PLACEHOLDERS):
        return parsed
    test_code = first_code(tests)
    parsed.update(problem=problem, solution=f"```python\n{first_code(solution)}\n```", tests=test_code or None, reason=None if test_code else "no_tests")
    return parsed


def code_from_columns(problem: str | None, tests: str | None, solution: str | None, min_words: int = 1) -> dict[str, Any]:
    """A code counterexample written in two steps: the task and its tests (parsed from one
    completion), then a solution written from the task alone, so passing the tests checks it.
    Same keys and reasons as parse_code_counterexample; a block's code is its first fenced block,
    else its text."""
    parsed: dict[str, Any] = {"problem": None, "solution": None, "tests": None, "reason": BAD_FORMAT}
    problem, tests, solution = (problem or "").strip(), (tests or "").strip(), (solution or "").strip()
    if not problem or not solution or len(problem.split()) < min_words:
        return parsed
    if any(p in f"{problem}\n{tests}\n{solution}".lower() for p in CODE_PLACEHOLDERS):
        return parsed
    test_code = first_code(tests)
    parsed.update(problem=problem, solution=f"```python\n{first_code(solution)}\n```", tests=test_code or None, reason=None if test_code else "no_tests")
    return parsed


class CounterexampleStage(RunStep):
    def __init__(self, config: CounterexampleConfig, input: InputConfig, budget: int, seed: int, plan: Any = None):
        self.config = config
        self.label = config.label
        self.input, self.budget, self.seed = input, budget, seed
        self._plan = plan  # the run's plan (the prompts were expanded from it); made on first use without one
        self._reference: tuple[Deduplicator, list[str], int] | None = None
        self._verdicts: FittedVerdicts | None = None

    def _references(self) -> tuple[Deduplicator, list[str], int]:
        """A deduplicator holding every failure prompt and training prompt, their ids, and how many are failures."""
        if self._reference is None:
            from datagen.sources.failures import read_train
            from datagen.counterexamples.plan import load_failures

            source = self.input
            failures = load_failures(source)
            texts, ids = [failures["prompt"]], failures["failure_id"].to_list()
            if source.train is not None:
                train = read_train(source.train, source.text_column)
                texts.append(train["prompt"])
                ids += train["train_id"].to_list()
            c = self.config
            settings = DedupConfig(threshold=c.threshold, shingle_size=c.shingle_size, num_perm=c.num_perm)
            self._reference = (Deduplicator(settings, pl.concat(texts)), ids, failures.height)
        return self._reference

    def _run_tests(self, parsed: list[dict[str, Any]], code_rows: list[int]) -> dict[int, Any]:
        """Each parsed code counterexample's solution against its own tests, in the sandbox."""
        from concurrent.futures import ThreadPoolExecutor

        from datagen.steps.verify import PythonTestsVerifier, usable_cores

        todo = [i for i in code_rows if parsed[i]["reason"] is None]
        if not todo:
            return {}
        checker = PythonTestsVerifier()
        with ThreadPoolExecutor(max_workers=min(len(todo), usable_cores())) as pool:
            verdicts = pool.map(lambda i: checker.check({"completion": parsed[i]["solution"], "tests": parsed[i]["tests"]}), todo)
            return dict(zip(todo, verdicts))

    def _decide(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Verdict columns for every row of `frame`; a row whose `role` is not counterexample (a
        correction: a failure asked again, not a new problem) gets nulls, i.e. passes untouched."""
        from datagen.counterexamples.expand import COUNTEREXAMPLE

        if "role" not in frame.columns:
            return self._decide_problems(frame)
        problems = frame.filter(pl.col("role") == COUNTEREXAMPLE)
        if problems.height == frame.height:
            return self._decide_problems(frame)
        return frame.select("candidate_id").join(self._decide_problems(problems), on="candidate_id", how="left", maintain_order="left")

    def _decide_problems(self, frame: pl.DataFrame) -> pl.DataFrame:
        c, label = self.config, self.label
        completions = frame["completion"].to_list()
        kinds = frame["kind"].to_list() if "kind" in frame.columns else [None] * frame.height
        code_rows = [i for i, k in enumerate(kinds) if k == "code"]
        n = frame.height
        problems = frame[c.problem_column].to_list() if c.problem_column and c.problem_column in frame.columns else [None] * n
        tests = frame[c.tests_column].to_list() if c.tests_column and c.tests_column in frame.columns else [None] * n
        parsed = [
            (code_from_columns(problem, test, text, c.min_problem_words) if problem is not None else parse_code_counterexample(text, c.min_problem_words))
            if kind == "code" else parse_counterexample(text, c.require_box, c.min_problem_words)
            for text, kind, problem, test in zip(completions, kinds, problems, tests)
        ]
        passed: list[bool | None] = [None] * len(parsed)
        details: list[str | None] = [None] * len(parsed)
        for i, verdict in self._run_tests(parsed, code_rows).items():
            passed[i], details[i] = verdict.keep, verdict.detail
            if not verdict.keep:
                parsed[i]["reason"] = verdict.reason
        for i in code_rows:
            if passed[i] is None:
                passed[i] = False if parsed[i]["tests"] else None
        reasons: list[str | None] = [p["reason"] for p in parsed]
        matches: list[str | None] = [None] * len(parsed)
        ok = [i for i, p in enumerate(parsed) if p["reason"] is None]
        if ok:
            deduplicator, ids, n_failures = self._references()
            candidate_ids = frame["candidate_id"].to_list()
            v = deduplicator.verdicts(pl.Series([parsed[i]["problem"] for i in ok], dtype=pl.String))
            for i, reason, kept_row, reference_row in zip(ok, v["reason"], v["kept_row"], v["reference_row"]):
                if reason == REFERENCE:
                    reasons[i] = COPIES_FAILURE if reference_row < n_failures else IN_TRAINING_SET
                    matches[i] = ids[reference_row]
                elif reason in (EXACT, NEAR):
                    reasons[i] = reason
                    matches[i] = candidate_ids[ok[kept_row]]
        return pl.DataFrame(
            {
                "candidate_id": frame["candidate_id"],
                f"{label}_keep": pl.Series([r is None for r in reasons], dtype=pl.Boolean),
                f"{label}_reason": pl.Series(reasons, dtype=pl.String),
                f"{label}_problem": pl.Series([p["problem"] for p in parsed], dtype=pl.String),
                f"{label}_solution": pl.Series([p["solution"] for p in parsed], dtype=pl.String),
                f"{label}_answer": pl.Series([p.get("answer") for p in parsed], dtype=pl.String),
                f"{label}_tests": pl.Series([p.get("tests") for p in parsed], dtype=pl.String),
                f"{label}_tests_passed": pl.Series(passed, dtype=pl.Boolean),
                f"{label}_detail": pl.Series(details, dtype=pl.String),
                f"{label}_match": pl.Series(matches, dtype=pl.String),
            }
        )

    def fit(self, shards: Callable[[], Iterator[pl.DataFrame]]) -> None:
        # Duplicates are global: every verdict is decided once over all alive rows, in run order.
        extra = dict.fromkeys(["kind", "role", *(c for c in (self.config.problem_column, self.config.tests_column) if c)])
        frames = [frame.select("candidate_id", "completion", *(c for c in extra if c in frame.columns)) for frame in shards()]
        self._verdicts = FittedVerdicts(self._decide(pl.concat(frames))) if frames else None

    def __call__(self, batch: pl.DataFrame) -> pl.DataFrame:
        if self._verdicts is None:  # without fit, the batch is the whole set
            return batch.join(self._decide(batch), on="candidate_id", how="left", maintain_order="left")
        return batch.hstack(self._verdicts.require(batch, self.label))

    def summarize(self, outputs: pl.LazyFrame) -> dict[str, Any]:
        """The cluster report: the plan's figures per cluster plus what is alive after this stage."""
        if self._plan is None:
            from datagen.counterexamples.plan import make_plan

            self._plan = make_plan(self.input, self.budget, self.seed)
        report = self._plan.report()
        from datagen.counterexamples.funnel import add_cluster_funnel

        return add_cluster_funnel(report, outputs)
