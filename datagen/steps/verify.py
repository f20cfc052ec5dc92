"""Rejection sampling: each candidate is checked by the verifier chosen for its template.

Verifiers: `math` (final answer vs reference, by math-verify equivalence), `regex`, `json_schema`,
`exact` / `contains`, `python_tests` (the template's tests, evaluated by datagen on the plain-data
results of the candidate's functions, which run in the bubblewrap sandbox) and
`none`. A verifier that breaks on one row fails that row with `verifier_error`; the run goes on.
"""

from __future__ import annotations

import ast
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Iterator, Literal, Union

import jsonschema
import polars as pl
import regex
import yaml
from pydantic import ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from datagen.text import strict_json
from datagen.text.answers import equivalent, final_answer, parse_reference
from datagen.paths import InputFile
from datagen.steps.sandbox import MAXIMA, SandboxLimits, bwrap_path, call_functions
from datagen.steps.sandbox.suite import Suite, TestsError
from datagen.rows import StrictModel
from datagen.steps.base import COLUMN, StageConfigBase, Step
from datagen.text.normalize import normalize as normalize_text
from datagen.text.python_syntax import parse_python


@dataclass(frozen=True)
class Verdict:
    keep: bool
    reason: str | None = None  # null when kept, else a fixed snake_case token
    answer: str | None = None  # what the verifier extracted from the completion, if anything
    detail: str | None = None  # one line for humans: why it failed

    @classmethod
    def fail(cls, reason: str, detail: str | None = None, answer: str | None = None) -> "Verdict":
        return cls(False, reason, answer, one_line(detail) if detail else None)


def one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class MathVerifier(StrictModel):
    kind: Literal["math"] = "math"
    require_box: bool = Field(False, description="fail completions without a \\boxed{} answer")

    def check(self, row: dict[str, Any]) -> Verdict:
        completion = row["completion"] or ""
        answer, shown, problem = final_answer(completion, self.require_box)
        # A missing reference is the template's fault, not the candidate's: say so first.
        reference_text = (row.get("reference") or "").strip()
        if not reference_text:
            return Verdict.fail("no_reference", "the row has no reference answer", shown)
        reference = parse_reference(reference_text)
        if reference is None:
            return Verdict.fail("bad_reference", f"cannot parse the reference {reference_text!r}", shown)
        if answer is None:
            return Verdict.fail("no_answer", problem, shown)
        if not equivalent(reference, answer):
            return Verdict.fail("wrong_answer", f"expected {reference_text}, got {shown}", shown)
        return Verdict(True, answer=shown)


RegexFlag = Literal["ignorecase", "multiline", "dotall", "ascii", "verbose"]


class RegexVerifier(StrictModel):
    """Matched with the `regex` package rather than `re`: a pattern that backtracks catastrophically on
    some output, like (a|aa)+$, gives up after `timeout_seconds` instead of hanging the run."""

    kind: Literal["regex"] = "regex"
    pattern: str
    mode: Literal["search", "fullmatch"] = Field("search", description="fullmatch is against the completion stripped of outer whitespace")
    flags: list[RegexFlag] = Field(default_factory=list)
    timeout_seconds: float = Field(1.0, gt=0, le=60, description="per match; a match that takes longer fails with verifier_timeout")
    _compiled: regex.Pattern[str] = PrivateAttr()

    @model_validator(mode="after")
    def _compile(self) -> "RegexVerifier":
        value = 0
        for flag in self.flags:
            value |= getattr(regex, flag.upper())
        try:
            self._compiled = regex.compile(self.pattern, value)
        except regex.error as err:
            raise ValueError(f"invalid regular expression {self.pattern!r}: {err}") from None
        return self

    def check(self, row: dict[str, Any]) -> Verdict:
        text = row["completion"] or ""
        try:
            if self.mode == "fullmatch":
                match = self._compiled.fullmatch(text.strip(), timeout=self.timeout_seconds)
            else:
                match = self._compiled.search(text, timeout=self.timeout_seconds)
        except TimeoutError:
            return Verdict.fail("verifier_timeout", f"{self.mode} of /{self.pattern}/ gave up after {self.timeout_seconds:g} s")
        if match is None:
            return Verdict.fail("no_match", f"{self.mode} of /{self.pattern}/ failed")
        # A group named `answer` marks the part worth recording; else the whole match.
        return Verdict(True, answer=match.group("answer") if "answer" in self._compiled.groupindex else match.group(0))


def _base_dir(info: ValidationInfo) -> Path:
    """Relative files resolve against a `base_dir` validation context (the recipe's folder) when
    the loader passes one, else against the working directory, like command-line paths."""
    context = info.context or {}
    return Path(context.get("base_dir", "."))


JSON_FENCE = re.compile(r"```[ \t]*json[^\n]*\n(.*?)```", re.S | re.I)


class JsonSchemaVerifier(StrictModel):
    # Users write `schema:`; the field name is accepted too, so that a dumped recipe loads again.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    kind: Literal["json_schema"] = "json_schema"
    json_schema: dict[str, Any] | None = Field(None, alias="schema", description="the schema inline")
    schema_file: InputFile | None = Field(None, description="a JSON or YAML file holding the schema")
    _validator: Any = PrivateAttr()

    @model_validator(mode="after")
    def _load(self, info: ValidationInfo) -> "JsonSchemaVerifier":
        if (self.json_schema is None) == (self.schema_file is None):
            raise ValueError("give exactly one of 'schema' and 'schema_file'")
        schema = self.json_schema
        if self.schema_file is not None:
            path = Path(self.schema_file)
            path = path if path.is_absolute() else _base_dir(info) / path
            if not path.is_file():
                raise ValueError(f"schema_file {str(path)!r} not found")
            try:
                schema = yaml.safe_load(path.read_text(encoding="utf-8"))  # YAML is a superset of JSON
            except (yaml.YAMLError, UnicodeDecodeError) as err:
                raise ValueError(f"schema_file {str(path)!r} is not valid JSON or YAML: {one_line(str(err), 120)}") from None
            if not isinstance(schema, dict):
                raise ValueError(f"schema_file {str(path)!r} does not hold a JSON object")
        cls = jsonschema.validators.validator_for(schema)
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError as err:
            where = "/".join(map(str, err.absolute_path)) or "top level"
            raise ValueError(f"invalid JSON schema at {where}: {one_line(err.message, 160)}") from None
        self._validator = cls(schema)
        _check_references(self._validator)
        return self

    def check(self, row: dict[str, Any]) -> Verdict:
        """The completion (or its last ```json block) parsed by `datagen.text.strict_json` (NaN,
        Infinity and duplicate keys are invalid JSON), then validated against the schema."""
        text = (row["completion"] or "").strip()
        try:
            instance = strict_json.loads(text)
        except ValueError as err:
            fenced = JSON_FENCE.findall(text)
            if not fenced:
                return Verdict.fail("invalid_json", str(err))
            try:
                instance = strict_json.loads(fenced[-1])
            except ValueError as err2:
                return Verdict.fail("invalid_json", f"in the ```json block: {err2}")
        error = jsonschema.exceptions.best_match(self._validator.iter_errors(instance))
        if error is not None:
            where = "/".join(map(str, error.absolute_path)) or "(root)"
            return Verdict.fail("schema_mismatch", f"{where}: {error.message}")
        return Verdict(True)


# Instances every $ref-bearing subschema is tried on when the verifier is built: a reference
# cycle that consumes no input ({"$ref": "#"}) recurses on any of them, an unresolvable
# reference fails on any of them.
_PROBES: tuple[Any, ...] = (None, {}, [], 0, "", True)
_NOT_SCHEMAS = {"enum", "const", "default", "examples"}  # keywords whose values are data


def _ref_subschemas(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if "$ref" in node:
            yield node
        for key, value in node.items():
            if key not in _NOT_SCHEMAS:
                yield from _ref_subschemas(value)
    elif isinstance(node, list):
        for item in node:
            yield from _ref_subschemas(item)


def _check_references(validator: Any) -> None:
    """Raise ValueError (one line) when a $ref of the schema cannot be resolved or leads to a cycle
    that never reaches a constraint, so the schema is refused when the recipe loads rather than
    failing every row."""
    for sub in _ref_subschemas(validator.schema):
        checker = validator.evolve(schema=sub)
        try:
            for probe in _PROBES:
                for _ in checker.iter_errors(probe):
                    pass
        except RecursionError:
            raise ValueError(f"invalid JSON schema: $ref {sub['$ref']!r} refers back to itself without end (a reference cycle)") from None
        except Exception as err:  # noqa: BLE001 - referencing.Unresolvable, or any other reason the schema cannot be applied
            raise ValueError(f"invalid JSON schema: cannot resolve $ref {sub['$ref']!r} ({one_line(str(err), 120)})") from None


class _TextMatchVerifier(StrictModel):
    value: str | None = Field(None, description="a fixed target; the row's reference when unset")
    ignore_case: bool = False
    whitespace: Literal["collapse", "strip", "keep"] = "collapse"

    @field_validator("value")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("value is blank; leave it unset to compare against the row's reference")
        return value

    def normalize(self, text: str) -> str:
        """`datagen.text.normalize.normalize`: NFKC, whitespace as configured, lowercase with ignore_case."""
        return normalize_text(text, casefold=self.ignore_case, whitespace=self.whitespace)

    def target(self, row: dict[str, Any]) -> str | None:
        target = self.value if self.value is not None else row.get("reference")
        return self.normalize(target) if target and target.strip() else None


class ExactVerifier(_TextMatchVerifier):
    kind: Literal["exact"] = "exact"

    def check(self, row: dict[str, Any]) -> Verdict:
        target = self.target(row)
        if target is None:
            return Verdict.fail("no_reference", "the row has no reference and no fixed value is set")
        if self.normalize(row["completion"] or "") != target:
            return Verdict.fail("mismatch", f"completion is not {target!r}")
        return Verdict(True)


class ContainsVerifier(_TextMatchVerifier):
    kind: Literal["contains"] = "contains"

    def check(self, row: dict[str, Any]) -> Verdict:
        target = self.target(row)
        if target is None:
            return Verdict.fail("no_reference", "the row has no reference and no fixed value is set")
        if target not in self.normalize(row["completion"] or ""):
            return Verdict.fail("not_found", f"completion does not contain {target!r}")
        return Verdict(True)


PYTHON_FENCE_TAGS = {"", "python", "python3", "py"}
SANDBOX_REASONS = {"failed": "tests_failed", "timeout": "timeout", "memory": "memory", "killed": "killed", "error": "sandbox_error"}


def _syntax_tree(code: str) -> ast.Module | None:
    try:
        return parse_python(code)
    except (SyntaxError, ValueError):
        return None


def _defined_names(code: str) -> set[str]:
    tree = _syntax_tree(code)
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return {node.name for node in tree.body if isinstance(node, kinds)} if tree else set()


def _used_names(code: str) -> set[str]:
    tree = _syntax_tree(code)
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)} if tree else set()


FENCE_RUN = re.compile(r"`{3,}|~{3,}")


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language tag, body) of every fenced code block in `text`, in order.

    A fence is a run of 3 or more backticks or tildes (CommonMark). Unlike CommonMark, it may open
    after other text on the same line ("Sure! ```python"), as chat models write: on a line with an
    odd number of runs of one fence character, the last run opens a block (an even number are
    inline pairs, "use ```x``` here"). The tag is the first word after the opening run, lower-cased.
    A block closes at a line holding only a run of the same character at least as long, else at
    such a run ending a line of code ("    return x```"), else at the end of the text (a cut-off
    answer keeps its code)."""
    blocks: list[tuple[str, str]] = []
    lines = (text or "").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        opening = None
        for char in "`~":
            runs = [m for m in FENCE_RUN.finditer(line) if m.group()[0] == char]
            if len(runs) % 2 == 1 and (opening is None or runs[-1].start() > opening.start()):
                opening = runs[-1]
        i += 1
        if opening is None:
            continue
        fence = opening.group()
        info = line[opening.end() :].strip().split()
        tag = info[0].lower() if info else ""
        body: list[str] = []
        while i < len(lines):
            current = lines[i]
            i += 1
            stripped = current.strip()
            if stripped and set(stripped) == {fence[0]} and len(stripped) >= len(fence):
                break
            trailing = re.search(re.escape(fence[0]) + "{%d,}[ \t]*$" % len(fence), current)
            if trailing is not None and current[: trailing.start()].strip():
                body.append(current[: trailing.start()])
                break
            body.append(current)
        blocks.append((tag, "\n".join(body) + ("\n" if body else "")))
    return blocks


def extract_code(completion: str, tests: str) -> str | None:
    """The candidate's program, or None when there is no code.

    Its Python code blocks (fenced_blocks tagged python, python3, py, or untagged; a block tagged
    with another language, say bash or text, is not the program) are considered. When there are
    several, the last one that defines a name the tests use: an answer that revises its code
    shows the final version last, and a usage example after the program defines nothing the
    tests call. If none defines such a name, the last Python block. Without any fenced Python
    block, the whole completion if it parses as Python."""
    blocks = [body for tag, body in fenced_blocks(completion) if tag in PYTHON_FENCE_TAGS and body.strip()]
    if not blocks:
        return completion if completion.strip() and _syntax_tree(completion) is not None else None
    wanted = _used_names(tests)
    defining = [block for block in blocks if _defined_names(block) & wanted]
    return (defining or blocks)[-1]


MAX_CALL_ROUNDS = 4  # sandbox runs per candidate: one, plus one per nesting level of candidate calls


def _limit(default: float, name: str, description: str, ge: float | None = None):
    """A sandbox limit: finite, positive (or >= ge), at most datagen.steps.sandbox.MAXIMA[name]."""
    bounds = {"ge": ge} if ge is not None else {"gt": 0}
    return Field(default, le=MAXIMA[name], allow_inf_nan=False, description=f"{description} (at most {MAXIMA[name]})", **bounds)


class PythonTestsVerifier(StrictModel):
    """The template's tests against the candidate's code, decided outside the candidate's reach.

    The tests are parsed and evaluated by datagen (datagen.steps.sandbox.suite); only the calls of the
    candidate's functions run, with plain-data arguments, in the bubblewrap sandbox, which
    returns plain data. Nothing the candidate prints, exits with or patches can turn a failure
    into a pass. Reasons: tests_failed (a failed assert, an exception, a syntax error, a value
    that is not plain data), tests_not_run (the program ended before answering), timeout,
    memory, killed, sandbox_error, and verifier_error for tests this verifier cannot evaluate.
    """

    kind: Literal["python_tests"] = "python_tests"
    cpu_seconds: float = _limit(5, "cpu_seconds", "CPU seconds per process")
    wall_seconds: float = _limit(10, "wall_seconds", "per sandbox run")
    memory_mb: int = _limit(512, "memory_mb", "memory of the whole process tree; the interpreter alone needs tens of MB", ge=64)
    file_size_mb: int = _limit(16, "file_size_mb", "largest file, stdout included", ge=1)
    disk_mb: int = _limit(32, "disk_mb", "size of the sandbox's writable tmpfs", ge=1)
    max_processes: int = _limit(32, "max_processes", "processes of the tree", ge=1)
    output_chars: int = _limit(20000, "output_chars", "stdout/stderr kept", ge=200)
    workers: int | None = Field(None, ge=1, le=256, description="candidates run at once; the usable cores when unset (at most 256)")

    @model_validator(mode="after")
    def _wall_covers_cpu(self) -> "PythonTestsVerifier":
        if self.wall_seconds < self.cpu_seconds:
            raise ValueError(f"wall_seconds ({self.wall_seconds}) is shorter than cpu_seconds ({self.cpu_seconds})")
        self.limits  # noqa: B018 - runs the sandbox's own checks now rather than on the first row
        if bwrap_path() is None:  # fail closed, before anything runs
            raise ValueError("python_tests needs bubblewrap (bwrap), which is not installed: run install.sh, or apt-get install bubblewrap")
        return self

    @property
    def limits(self) -> SandboxLimits:
        fields = ("cpu_seconds", "wall_seconds", "memory_mb", "file_size_mb", "disk_mb", "max_processes", "output_chars")
        return SandboxLimits(**{name: getattr(self, name) for name in fields})

    def check(self, row: dict[str, Any]) -> Verdict:
        tests = row.get("tests") or ""
        if not tests.strip():
            return Verdict.fail("no_tests", "the row has no tests")
        try:
            suite = Suite(tests)
        except TestsError as err:
            return Verdict.fail("verifier_error", f"tests: {err}")
        code = extract_code(row["completion"] or "", tests)
        if code is None:
            return Verdict.fail("no_code", "no Python code block and the completion is not Python")
        answers: dict = {}
        for _ in range(MAX_CALL_ROUNDS):
            try:
                outcome = suite.run(answers)
            except TestsError as err:
                return Verdict.fail("verifier_error", f"tests: {err}")
            if outcome.status == "passed":
                return Verdict(True)
            if outcome.status == "failed":
                return Verdict.fail("tests_failed", outcome.detail)
            calls = list(outcome.pending.items())
            result = call_functions(code, [(c.name, c.args, c.kwargs) for _, c in calls], self.limits)
            if result.status == "error":
                return Verdict.fail("sandbox_error", result.detail)
            answered = {key: got for (key, _), got in zip(calls, result.calls or []) if got is not None}
            answers.update(answered)
            if len(answered) < len(calls):  # the program ended (or was stopped) before answering
                again = suite.run(answers)
                if again.status == "failed":
                    return Verdict.fail("tests_failed", again.detail)
                if result.status == "passed":
                    return Verdict.fail("tests_not_run", "the program ended before the tests' calls were answered")
                return Verdict.fail(SANDBOX_REASONS.get(result.status, "sandbox_error"), result.detail or f"exit code {result.returncode}")
        return Verdict.fail("verifier_error", f"tests: candidate calls nested more than {MAX_CALL_ROUNDS - 1} deep")


class NoVerifier(StrictModel):
    """Passes everything: for open-ended text that has nothing to check against."""

    kind: Literal["none"] = "none"

    def check(self, row: dict[str, Any]) -> Verdict:
        return Verdict(True)


VerifierConfig = Annotated[
    Union[MathVerifier, RegexVerifier, JsonSchemaVerifier, ExactVerifier, ContainsVerifier, PythonTestsVerifier, NoVerifier],
    Field(discriminator="kind"),
]
# Verifiers that run a subprocess each: run concurrently. The others are cheap (and math-verify's
# parse timeout only works on the main thread).
CONCURRENT_KINDS = {"python_tests"}
ANY_TEMPLATE = "*"


class VerifyConfig(StageConfigBase):
    stage: Literal["verify"] = "verify"
    verifiers: dict[str, VerifierConfig] = Field(min_length=1, description="template id -> verifier; '*' for any other template")
    reference_column: str = Field(
        "reference", pattern=COLUMN, description="the column holding the expected answer (e.g. an earlier vote's `vote_majority`)"
    )
    NEW_FIELDS: ClassVar[dict[str, Any]] = StageConfigBase.NEW_FIELDS | {"reference_column": "reference"}

    @field_validator("verifiers")
    @classmethod
    def _template_ids(cls, verifiers: dict[str, Any]) -> dict[str, Any]:
        for key in verifiers:
            if key != ANY_TEMPLATE and not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
                raise ValueError(f"{key!r} is not a template id (or '*' for any other template)")
        return verifiers

    def views(self) -> dict[str, str]:
        return super().views() | {"reference": self.reference_column}

    def input_files(self) -> list[Path]:
        return [Path(v.schema_file) for v in self.verifiers.values() if getattr(v, "schema_file", None)]

    def build(self) -> "VerifyStage":
        return VerifyStage(self)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class VerifyStage(Step):
    def __init__(self, config: VerifyConfig):
        self.config = config
        self.label = config.label

    def verifier_for(self, template_id: str | None):
        verifiers = self.config.verifiers
        return verifiers.get(template_id or "", verifiers.get(ANY_TEMPLATE))

    def __call__(self, batch: pl.DataFrame) -> pl.DataFrame:
        columns = [c for c in ("template_id", "completion", "reference", "tests") if c in batch.columns]
        rows = batch.select(columns).to_dicts()
        chosen = [self.verifier_for(row.get("template_id")) for row in rows]
        verdicts: list[Verdict | None] = [None] * len(rows)
        pooled = [i for i, v in enumerate(chosen) if v is not None and v.kind in CONCURRENT_KINDS]
        if pooled:
            workers = min(len(pooled), max(v.workers or usable_cores() for v in (chosen[i] for i in pooled)))
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = {i: pool.submit(_checked, chosen[i], rows[i]) for i in pooled}
                for i, future in futures.items():
                    verdicts[i] = future.result()
        for i, verifier in enumerate(chosen):
            if verifier is None:
                verdicts[i] = Verdict.fail("no_verifier", f"no verifier for template {rows[i].get('template_id')!r} and no '*' entry")
            elif verdicts[i] is None:
                verdicts[i] = _checked(verifier, rows[i])
        label = self.label
        done = [v for v in verdicts if v is not None]
        return batch.with_columns(
            pl.Series(f"{label}_keep", [v.keep for v in done], dtype=pl.Boolean),
            pl.Series(f"{label}_reason", [None if v.keep else v.reason for v in done], dtype=pl.String),
            pl.Series(f"{label}_verifier", [v.kind if v is not None else None for v in chosen], dtype=pl.String),
            pl.Series(f"{label}_answer", [v.answer for v in done], dtype=pl.String),
            pl.Series(f"{label}_detail", [v.detail for v in done], dtype=pl.String),
        )

    def summarize(self, outputs: pl.LazyFrame) -> dict[str, Any]:
        """Keep-rate per template and per verifier kind, over the rows this stage verified. The
        overall figures count only rows a verifier checked: rows of templates whose verifier is
        `none` pass unchecked and are counted apart (`unchecked`), never as passes."""
        label = self.label
        verified = outputs.filter(pl.col(f"{label}_keep").is_not_null()).select(
            "template_id", "prompt_id", pl.col(f"{label}_keep").alias("passed"), pl.col(f"{label}_verifier").alias("verifier"), pl.col(f"{label}_reason").alias("reason")
        ).collect()

        def figures(frame: pl.DataFrame) -> dict[str, Any]:
            passed = int(frame["passed"].sum())
            solved = frame.group_by("prompt_id").agg(pl.col("passed").any())["passed"]
            reasons = frame.filter(~pl.col("passed")).group_by("reason").len().sort("reason").rows()
            return {
                "verified": frame.height,
                "passed": passed,
                "keep_rate": round(passed / frame.height, 4) if frame.height else None,
                "prompts": solved.len(),
                "prompts_with_a_pass": int(solved.sum()),
                "reasons": {str(reason): int(n) for reason, n in reasons},
            }

        by_template = {}
        for (template,), frame in sorted(verified.group_by("template_id"), key=lambda item: str(item[0][0])):
            by_template[str(template)] = {"verifier": frame["verifier"][0]} | figures(frame)
        by_verifier = {str(kind): figures(frame) for (kind,), frame in sorted(verified.group_by("verifier"), key=lambda item: str(item[0][0]))}
        checked = verified.filter(pl.col("verifier") != NoVerifier.model_fields["kind"].default)
        return figures(checked) | {"unchecked": verified.height - checked.height, "by_template": by_template, "by_verifier": by_verifier}


def _checked(verifier, row: dict[str, Any]) -> Verdict:
    try:
        return verifier.check(row)
    except Exception as err:  # noqa: BLE001 - one broken row must not end the run
        return Verdict.fail("verifier_error", f"{type(err).__name__}: {err}")
