"""Hostile input through the real CLI.

Every case must end with exit status 2 and exactly one line, `datagen: error: FILE: FIELD: what`
(or the cause), no traceback, and nothing in the output directory that looks like a finished run.
The cases run in one module fixture, each then checked by its own test. Most go through the
installed console script, several at a time (each start costs about two CPU-seconds); the many
variants of one validation error call `datagen.cli.main` in this process, which is the same code
without the interpreter start.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import polars as pl
import pytest

from conftest import BASE_RECIPE, TINY_TEMPLATE, datagen_cli, write_yaml

KEY_LOOKALIKE = "sk-live-DO-NOT-ECHO-1234567890"


@dataclass
class Case:
    """One hostile input. `expect` is the error line without its 'datagen: error: ' prefix, with
    {recipe}, {template}, {root}, {out} and {port} standing for the case's values; `exact` compares the
    whole line, otherwise each '|'-separated part must appear in it."""

    name: str
    expect: str
    command: str = "validate"
    recipe: dict[str, Any] | None = None  # merged into BASE_RECIPE
    raw_recipe: bytes | None = None
    template: Callable[[dict], None] | None = None  # edits a copy of TINY_TEMPLATE
    raw_template: bytes | None = None
    setup: Callable[[Path], None] | None = None  # writes more files under the case's root
    args: Callable[[Path], list] | None = None  # replaces the usual arguments
    exact: bool = False


def edit(**fields) -> Callable[[dict], None]:
    return lambda template: template.update(fields)


def slots(**values) -> Callable[[dict], None]:
    return lambda template: template["slots"].update(values)


def user(text: str) -> Callable[[dict], None]:
    """A user message that also uses every declared slot, so that only `text` is at fault."""
    return edit(user=text + " {{ persona }} {{ difficulty }} {{ topic }}")


def dedup_reference(name: str, content: bytes) -> tuple[dict, Callable[[Path], None]]:
    """A dedup stage whose reference file, {root}/data/`name` (relative to the recipe file), holds `content`."""
    recipe = {"stages": [{"stage": "dedup", "reference": f"../data/{name}"}]}
    return recipe, lambda root: (root / "data").mkdir() or (root / "data" / name).write_bytes(content)


def finished_run_of_another_recipe(root: Path) -> None:
    from datagen.executor import run_pipeline
    from datagen.recipe import load_recipe

    other = write_yaml(root / "other" / "recipe.yaml", BASE_RECIPE | {"name": "other", "seed": 99, "template_dirs": ["../templates"]})
    run_pipeline(load_recipe(other), root / "out", progress=False)


def immutable_out(root: Path) -> None:
    """A directory that really refuses writes. Root ignores permission bits, so as root the
    directory is made immutable (chattr +i, which binds root too); otherwise it is made 0555."""
    out = root / "out"
    out.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not supported here, and root writes through permission bits")
    else:
        out.chmod(0o555)


def release_immutable(root: Path) -> None:
    out = root / "out"
    if out.exists():
        subprocess.run(["chattr", "-i", str(out)], capture_output=True) if os.geteuid() == 0 else out.chmod(0o755)


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ref_missing_column, ref_missing_column_setup = dedup_reference("evals.jsonl", b'{"question": "What is 2+2?"}\n')
ref_empty, ref_empty_setup = dedup_reference("evals.jsonl", b"")
ref_latin1, ref_latin1_setup = dedup_reference("evals.jsonl", b'{"prompt": "caf\xe9"}\n')
ref_giant, ref_giant_setup = dedup_reference("evals.jsonl", b'{"prompt": "' + b"x" * 5_000_000 + b"\n")

CASES = [
    # --- the recipe file -------------------------------------------------------------------
    Case("yaml_syntax", "{recipe}:3:1: YAML syntax error", raw_recipe=b"name: x\ntemplates: [\n"),
    Case("yaml_tab_indent", "{recipe}:2:1: YAML syntax error: found character '\\t'", raw_recipe=b"name: x\n\ttemplates: []\n"),
    Case("yaml_python_tag", "{recipe}:1:7: YAML syntax error: could not determine a constructor", raw_recipe=b"name: !!python/object/apply:os.system ['true']\n"),
    Case("not_mapping", "{recipe}: expected a mapping at the top level, found list", raw_recipe=b"- just\n- a list\n", exact=True),
    Case("empty_recipe", "{recipe}: expected a mapping at the top level, found empty", raw_recipe=b"", exact=True),
    Case("non_utf8_recipe", "{recipe}: not valid UTF-8 (byte 9)", raw_recipe=b"name: caf\xe9\n", exact=True),
    Case("missing_recipe", "/nonexistent/recipe.yaml: recipe file not found", args=lambda root: ["validate", "/nonexistent/recipe.yaml"], exact=True),
    Case("recipe_is_a_directory", "{root}/pipelines: recipe file is not a regular file", args=lambda root: ["validate", root / "pipelines"], exact=True),
    Case("unknown_field", "{recipe}: colour: unknown field", recipe={"colour": "red"}, exact=True),
    Case("wrong_type", "{recipe}: backend.sampling.n: Input should be a valid integer|(got 'many')", recipe={"backend": {"kind": "scripted", "sampling": {"n": "many"}}}),
    Case("negative_n", "{recipe}: backend.sampling.n: Input should be greater than or equal to 1", recipe={"backend": {"kind": "scripted", "sampling": {"n": -2}}}),
    Case("temperature", "{recipe}: backend.sampling.temperature: Input should be less than or equal to 2", recipe={"backend": {"kind": "scripted", "sampling": {"temperature": 7}}}),
    Case("min_above_max_tokens", "{recipe}: backend.sampling: min_tokens (100) is larger than max_tokens (10)", recipe={"backend": {"kind": "scripted", "sampling": {"min_tokens": 100, "max_tokens": 10}}}),
    Case("unknown_backend", "{recipe}: backend.kind: Input should be 'vllm', 'scripted' or 'openai'", recipe={"backend": {"kind": "tgi-magic"}}),
    Case("unknown_stage", "{recipe}: stages[0]: |does not match any of the expected tags", recipe={"stages": [{"stage": "sparkle"}]}),
    Case("unknown_stage_field", "{recipe}: stages[0].length.min_charz: unknown field", recipe={"stages": [{"stage": "length", "min_charz": 3}]}, exact=True),
    Case("label_clash", "{recipe}: stages: |would overwrite the column 'finish_reason'", recipe={"stages": [{"stage": "length", "name": "finish"}]}),
    Case("duplicate_label", "{recipe}: stages: |two stages are labelled 'length'", recipe={"stages": [{"stage": "length"}, {"stage": "length"}]}),
    Case("stage_templates", "{recipe}: |stages[0].templates: 'nope' is not one of", recipe={"stages": [{"stage": "length", "templates": ["nope"]}]}),
    Case("missing_template", "{recipe}: templates[0].name: template 'nope' not found", recipe={"templates": [{"name": "nope", "count": 1}]}),
    Case("zero_count", "{recipe}: templates[0].count: Input should be greater than or equal to 1", recipe={"templates": [{"name": "tiny", "count": 0}]}),
    Case("count_beyond_combinations", "{template}: slots: count 1000 exceeds the 24 distinct slot combinations", recipe={"templates": [{"name": "tiny", "count": 1000}]}, exact=True),
    Case("set_without_value", "--set seed: expected key.path=value", args=lambda root: ["validate", root / "pipelines" / "recipe.yaml", "--set", "seed"], exact=True),
    Case("set_below_a_scalar", "--set seed.x=1: seed is not a mapping", args=lambda root: ["validate", root / "pipelines" / "recipe.yaml", "--set", "seed.x=1"], exact=True),
    # --- templates -------------------------------------------------------------------------
    Case("unknown_slot", "{template}: user: unknown slot 'topik' (declared: difficulty, persona, topic)", template=edit(user="Tell me about {{ topik }} at a {{ difficulty }} level, {{ persona }}."), exact=True),
    Case("jinja_syntax", "{template}: user: template syntax error at line 1: unexpected '}}'", template=user("{{ topic } and"), exact=True),
    Case("jinja_unclosed_block", "{template}: user: template syntax error at line 1: Unexpected end of template", template=user("{% for x in topic %}")),
    Case("sandbox_escape_attribute", "{template}: user: refused by the template sandbox: |unsafe", command="preview", template=edit(user="Tell me about {{ topic.__class__.__base__.__subclasses__() }}, {{ persona }}, {{ difficulty }}.")),
    Case("sandbox_escape_format", "{template}: user: refused by the template sandbox: access to attribute '__class__'", command="preview", template=user("{{ '{0.__class__}'.format(topic) }}")),
    Case("sandbox_memory_bomb", "{template}: user: refused by the template sandbox: repetition to |is more than the template sandbox allows", command="preview", template=user("{{ topic * 10**8 }}")),
    Case("sandbox_recursion", "{template}: user: cannot render: maximum recursion depth exceeded", command="preview", template=user("{% macro f(x) %}{{ f(x) }}{% endmacro %}{{ f(1) }}")),
    Case("empty_vocabulary", "{template}: slots.topic: empty vocabulary", template=slots(topic=[]), exact=True),
    Case("where_matches_nothing", "{template}: where: no slot combination satisfies this expression", template=edit(where="topic == 'lava'"), exact=True),
    Case("non_utf8_template", "{template}: not valid UTF-8 (byte 18)", raw_template=b"id: tiny\nuser: caf\xe9\n", exact=True),
    Case("unused_slot", "{template}: slots.mood: slot is declared but never used", template=slots(mood=["calm"])),
    # --- files the stages read -------------------------------------------------------------
    Case("reference_missing", "{recipe}: stages[0].dedup.reference: file not found: {root}/pipelines/missing.parquet (got 'missing.parquet')", recipe={"stages": [{"stage": "dedup", "reference": "missing.parquet"}]}, exact=True),
    Case("reference_empty", "{root}/data/evals.jsonl: reference file is empty", command="run", recipe=ref_empty, setup=ref_empty_setup, exact=True),
    Case("reference_without_column", "{root}/data/evals.jsonl: dedup.reference_column: no column 'prompt' (columns: question)", command="run", recipe=ref_missing_column, setup=ref_missing_column_setup, exact=True),
    Case("reference_not_utf8", "{root}/data/evals.jsonl: cannot read the reference file: |UTF-8", recipe=ref_latin1, setup=ref_latin1_setup),
    Case("reference_giant_broken_line", "{root}/data/evals.jsonl: cannot read the reference file", recipe=ref_giant, setup=ref_giant_setup),
    # --- the output directory --------------------------------------------------------------
    Case("out_holds_another_run", "{out}: holds a run of a different recipe (or changed templates); use --force to replace it, or another --out", command="run", setup=finished_run_of_another_recipe, exact=True),
    Case("out_holds_foreign_files", "{out}: output directory is not empty and holds no datagen run; choose another --out", command="run", setup=lambda root: (root / "out").mkdir() or (root / "out" / "notes.txt").write_text("mine"), exact=True),
    Case("out_is_a_file", "{out}: output path exists and is not a directory", command="run", setup=lambda root: (root / "out").write_text("x"), exact=True),
    Case("out_run_dir_is_a_file", "{out}: output directory is not empty and holds no datagen run; choose another --out", command="run", exact=True, setup=lambda root: (root / "out").mkdir() or (root / "out" / "run").write_text("x")),
    Case("out_read_only", "{out}: cannot write to the output directory (", command="run", setup=immutable_out),
    Case("out_cannot_exist", "/proc/datagen-out: cannot write to the output directory (No such file or directory)", args=lambda root: ["run", root / "pipelines" / "recipe.yaml", "--out", "/proc/datagen-out"], exact=True),
    Case("out_manifest_corrupt", "{out}/run/manifest.json: not a datagen run manifest; use --force to start over", command="run", setup=lambda root: (root / "out" / "run").mkdir(parents=True) or (root / "out" / "run" / "manifest.json").write_text("[1, 2]"), exact=True),
    # --- models and servers ----------------------------------------------------------------
    Case("model_path_missing", "{recipe}: backend.model: model path does not exist: /models/does-not-exist", recipe={"backend": {"kind": "vllm", "model": "/models/does-not-exist"}}, exact=True),
    Case("model_path_missing_run", "{recipe}: backend.model: model path does not exist: /models/does-not-exist", command="run", recipe={"backend": {"kind": "vllm", "model": "/models/does-not-exist"}}, exact=True),
    Case("openai_without_base_url", "{recipe}: backend: base_url: required for kind openai", recipe={"backend": {"kind": "openai", "model": "m"}}),
    # A stage's own model is checked like the generator's; its relative path starts from the recipe's folder.
    Case("judge_model_path_missing", "{recipe}: stages[0].judge.backend.model: model path does not exist: {root}/models/judge", recipe={"stages": [{"stage": "judge", "rubric": "helpfulness", "backend": {"kind": "vllm", "model": "../models/judge"}}]}, exact=True),
    Case("collapse_model_missing", "{recipe}: stages[0].collapse.model: embedding model folder not found: {root}/models/minilm", recipe={"stages": [{"stage": "collapse", "model": "../models/minilm"}]}, exact=True),
    Case("judge_model_path_missing_run", "{recipe}: stages[0].judge.backend.model: model path does not exist: {root}/models/judge", command="run", recipe={"stages": [{"stage": "judge", "rubric": "helpfulness", "backend": {"kind": "vllm", "model": "../models/judge"}}]}, exact=True),
    Case("judge_openai_without_base_url", "{recipe}: stages[0].judge.backend: base_url: required for kind openai", recipe={"stages": [{"stage": "judge", "rubric": "helpfulness", "backend": {"kind": "openai", "model": "m"}}]}),
    Case("api_key_in_recipe", "{recipe}: backend: api_key: an API key does not belong in a recipe; export it and name the variable in api_key_env", recipe={"backend": {"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:1/v1", "api_key": KEY_LOOKALIKE}}, exact=True),
    Case("key_in_api_key_env", "{recipe}: backend: api_key_env: must name an environment variable (letters, digits, _), not hold the key itself", recipe={"backend": {"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:1/v1", "api_key_env": KEY_LOOKALIKE}}, exact=True),
    Case("api_key_env_unset", "{recipe}: backend.api_key_env: environment variable DATAGEN_TEST_NO_SUCH_KEY is not set or empty", command="run", recipe={"backend": {"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:1/v1", "api_key_env": "DATAGEN_TEST_NO_SUCH_KEY"}}, exact=True),
    Case("server_unreachable", "http://127.0.0.1:{port}/v1: backend.base_url: cannot reach the server: Connection error.", command="run", recipe={"backend": {"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:{port}/v1", "max_retries": 0}}, exact=True),
]
PORT = closed_port()
# Variants of errors that other cases already take through the console script.
IN_PROCESS = {
    "yaml_tab_indent", "yaml_python_tag", "empty_recipe", "recipe_is_a_directory", "wrong_type", "negative_n",
    "temperature", "min_above_max_tokens", "unknown_backend", "unknown_stage_field", "label_clash", "duplicate_label",
    "stage_templates", "zero_count", "set_below_a_scalar", "jinja_unclosed_block", "sandbox_escape_format",
    "unused_slot", "where_matches_nothing", "non_utf8_template", "openai_without_base_url", "key_in_api_key_env",
    "judge_model_path_missing_run", "judge_openai_without_base_url", "collapse_model_missing",
}  # fmt: skip


def materialize(case: Case, root: Path) -> list:
    template = copy.deepcopy(TINY_TEMPLATE)
    if case.template:
        case.template(template)
    write_yaml(root / "templates" / "tiny.yaml", template)
    if case.raw_template is not None:
        (root / "templates" / "tiny.yaml").write_bytes(case.raw_template)
    recipe = json.loads(json.dumps(BASE_RECIPE | (case.recipe or {})).replace("{port}", str(PORT)))
    path = write_yaml(root / "pipelines" / "recipe.yaml", recipe)
    if case.raw_recipe is not None:
        path.write_bytes(case.raw_recipe)
    if case.setup:
        case.setup(root)
    if case.args:
        return case.args(root)
    if case.command == "run":
        return ["run", path, "--out", root / "out", "--no-progress"]
    return [case.command, path]


def snapshot(out: Path) -> dict[str, bytes]:
    if not out.is_dir():
        return {}
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def in_process(args: list, cwd: Path) -> subprocess.CompletedProcess:
    from datagen.cli import main

    out, err = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
    finally:
        os.chdir(previous)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    # Directories are made here, in one thread: the factory creates its base directory lazily and
    # two threads making it at once get two different bases.
    roots = {case.name: tmp_path_factory.mktemp(case.name) for case in CASES}

    def run(case: Case, cli: Callable = datagen_cli):
        root = roots[case.name]
        try:
            args = materialize(case, root)
            before = snapshot(root / "out")
            return root, cli(*args, cwd=root) if cli is datagen_cli else cli(args, root), before, snapshot(root / "out")
        except BaseException as err:  # e.g. pytest.skip from a setup: reported by the case's test
            return root, err, None, None
        finally:
            if case.setup is immutable_out:
                release_immutable(root)

    with ThreadPoolExecutor(max_workers=3) as pool:
        scripted = [c for c in CASES if c.name not in IN_PROCESS]
        results = pool.map(run, scripted)  # meanwhile, the in-process cases one after another here
        found = {c.name: run(c, in_process) for c in CASES if c.name in IN_PROCESS}
        found |= dict(zip((c.name for c in scripted), results))
    return found


def test_most_cases_go_through_the_console_script():
    assert len(CASES) - len(IN_PROCESS) >= 30 and IN_PROCESS <= {c.name for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_is_one_line_exit_2(case: Case, outcomes):
    root, result, before, after = outcomes[case.name]
    if isinstance(result, BaseException):
        raise result
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("datagen: error: ")
    line = lines[0].removeprefix("datagen: error: ")
    paths = {"recipe": root / "pipelines" / "recipe.yaml", "template": root / "templates" / "tiny.yaml", "root": root, "out": root / "out", "port": PORT}
    expected = case.expect.format(**paths)
    if case.exact:
        assert line == expected
    else:
        assert all(part in line for part in expected.split("|")), line
    assert len(line) < 400, "an error line stays short whatever the input"

    # Nothing that was there before is touched, and nothing looks like a finished run.
    assert {name: after.get(name) for name in before} == before, "what the output directory held is as it was"
    if case.name != "out_holds_another_run":
        assert not (root / "out" / "data").exists() and not (root / "out" / "README.md").exists()
        manifest = root / "out" / "run" / "manifest.json"
        if case.name != "out_manifest_corrupt" and manifest.exists():
            assert json.loads(manifest.read_text())["complete"] is False


def test_secrets_are_never_echoed(outcomes):
    for name in ("api_key_in_recipe", "key_in_api_key_env"):
        _, result, _, _ = outcomes[name]
        assert KEY_LOOKALIKE not in result.stderr + result.stdout


def test_the_other_run_survives_and_force_replaces_it(outcomes):
    root, result, before, after = outcomes["out_holds_another_run"]
    assert json.loads((root / "out" / "run" / "manifest.json").read_text())["complete"]
    replaced = in_process(["run", root / "pipelines" / "recipe.yaml", "--out", root / "out", "--no-progress", "--force"], root)
    assert replaced.returncode == 0, replaced.stderr
    manifest = json.loads((root / "out" / "run" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["recipe"] == "test"
    assert pl.read_parquet(root / "out" / "data" / "*.parquet")["seed"].unique().to_list() == [7]


def test_a_failed_start_does_not_block_the_next_attempt(tmp_path):
    """A run that stopped before finishing any shard (here: no server at base_url) leaves nothing
    that makes the corrected recipe look like 'a different recipe'."""
    write_yaml(tmp_path / "templates" / "tiny.yaml", TINY_TEMPLATE)
    backend = {"kind": "openai", "model": "m", "base_url": f"http://127.0.0.1:{closed_port()}/v1", "max_retries": 0}
    broken = write_yaml(tmp_path / "pipelines" / "broken.yaml", BASE_RECIPE | {"backend": backend})
    assert in_process(["run", broken, "--out", tmp_path / "out", "--no-progress"], tmp_path).returncode == 2
    assert not manifest_of(tmp_path / "out")["complete"]
    fixed = write_yaml(tmp_path / "pipelines" / "fixed.yaml", BASE_RECIPE)
    result = in_process(["run", fixed, "--out", tmp_path / "out", "--no-progress"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert manifest_of(tmp_path / "out")["complete"]


def test_resume_and_force_exclude_each_other(tmp_path, capsys):
    from datagen.cli import main

    with pytest.raises(SystemExit) as info:
        main(["run", str(tmp_path / "recipe.yaml"), "--resume", "--force"])
    assert info.value.code == 2 and "argument --force: not allowed with argument --resume" in capsys.readouterr().err


def manifest_of(out: Path) -> dict:
    return json.loads((out / "run" / "manifest.json").read_text())


if sys.platform != "linux":  # /proc and chattr are Linux's
    pytestmark = pytest.mark.skip("Linux only")
