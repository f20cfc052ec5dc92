"""Hostile input through the CLI.

Every case must end with exit status 2 and exactly one line, `datagen: error: FILE: FIELD: what`
(or the cause), no traceback, and nothing in the output directory that looks like a finished run.
The cases run in one module fixture, each then checked by its own test. Most call
`datagen.cli.main` in this process (the same code as the console script, without two CPU-seconds
of interpreter start each); `CLI` cases go through the installed console script as a user runs
it, and `BOUNDED` cases (inputs built to exhaust time or memory) run as a console-script process
under an address-space limit and must finish within BOUNDED_SECONDS.
"""

from __future__ import annotations

import copy
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import polars as pl
import pytest

from helpers import BASE_RECIPE, TINY_TEMPLATE, datagen_cli, datagen_in_process, write_yaml

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
    runner: str = "in_process"  # "cli": the console script; "bounded": the console script under time and memory limits


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
    from datagen.run.executor import run_pipeline
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


def input_and_a_link_to_it(root: Path) -> None:
    (root / "data").mkdir()
    (root / "in.jsonl").write_text('{"text": "a"}\n')
    (root / "link.jsonl").symlink_to(root / "in.jsonl")


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Billion laughs: nine aliases of nine aliases ... of nine strings, 9**9 values once expanded.
ALIAS_BOMB = b"name: x\na: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + b"".join(
    b"%c: &%c [" % (98 + i, 98 + i) + b", ".join([b"*%c" % (97 + i)] * 9) + b"]\n" for i in range(8)
)
# 4 slots of 470 values: 4.9e10 combinations, far past what can be enumerated.
HUGE_TEMPLATE = ("id: tiny\nuser: '{{ a }} {{ b }} {{ c }} {{ d }}'\nslots:\n" + "".join(
    f"  {name}: [{', '.join(f'{name}{j}' for j in range(470))}]\n" for name in "abcd"
)).encode()
BOUNDED_SECONDS = 30  # every case ends within this (the template limit: 5 s of CPU, 22 s of wall time)
BOUNDED_MEMORY = 4 << 30  # address space of the whole datagen process

ref_missing_column, ref_missing_column_setup = dedup_reference("evals.jsonl", b'{"question": "What is 2+2?"}\n')
ref_empty, ref_empty_setup = dedup_reference("evals.jsonl", b"")
ref_latin1, ref_latin1_setup = dedup_reference("evals.jsonl", b'{"prompt": "caf\xe9"}\n')
ref_giant, ref_giant_setup = dedup_reference("evals.jsonl", b'{"prompt": "' + b"x" * 5_000_000 + b"\n")

CASES = [
    # --- the recipe file -------------------------------------------------------------------
    Case("yaml_syntax", "{recipe}:3:1: YAML syntax error", raw_recipe=b"name: x\ntemplates: [\n", runner="cli"),
    Case("yaml_tab_indent", "{recipe}:2:1: YAML syntax error: found character '\\t'", raw_recipe=b"name: x\n\ttemplates: []\n"),
    Case("yaml_python_tag", "{recipe}:1:7: YAML syntax error: could not determine a constructor", raw_recipe=b"name: !!python/object/apply:os.system ['true']\n"),
    Case("not_mapping", "{recipe}: expected a mapping at the top level, found list", raw_recipe=b"- just\n- a list\n", exact=True),
    Case("empty_recipe", "{recipe}: expected a mapping at the top level, found empty", raw_recipe=b"", exact=True),
    Case("non_utf8_recipe", "{recipe}: not valid UTF-8 (byte 9)", raw_recipe=b"name: caf\xe9\n", exact=True),
    Case("missing_recipe", "/nonexistent/recipe.yaml: recipe file not found", args=lambda root: ["validate", "/nonexistent/recipe.yaml"], exact=True, runner="cli"),
    Case("recipe_is_a_directory", "{root}/pipelines: recipe file is not a regular file", args=lambda root: ["validate", root / "pipelines"], exact=True),
    Case("unknown_field", "{recipe}: colour: unknown field", recipe={"colour": "red"}, exact=True),
    Case("wrong_type", "{recipe}: backend.sampling.n: Input should be a valid integer|(got 'many')", recipe={"backend": {"kind": "scripted", "sampling": {"n": "many"}}}),
    Case("negative_n", "{recipe}: backend.sampling.n: Input should be greater than or equal to 1", recipe={"backend": {"kind": "scripted", "sampling": {"n": -2}}}),
    Case("temperature", "{recipe}: backend.sampling.temperature: Input should be less than or equal to 2", recipe={"backend": {"kind": "scripted", "sampling": {"temperature": 7}}}),
    Case("min_above_max_tokens", "{recipe}: backend.sampling: min_tokens (100) is larger than max_tokens (10)", recipe={"backend": {"kind": "scripted", "sampling": {"min_tokens": 100, "max_tokens": 10}}}),
    Case("unknown_backend", "{recipe}: backend.kind: Input should be 'vllm', 'scripted' or 'openai'", recipe={"backend": {"kind": "tgi-magic"}}),
    Case("unknown_stage", "{recipe}: stages[0]: unknown stage 'sparkle' (one of collapse, converse, |, verify, vote)", recipe={"stages": [{"stage": "sparkle"}]}),
    Case("misspelled_stage", "{recipe}: stages[0]: unknown stage 'dedupe' (|); did you mean 'dedup'?", recipe={"stages": [{"stage": "dedupe"}]}),
    Case("misspelled_verifier_kind", "{recipe}: stages[0].verify.verifiers.*: unknown kind 'maths' (one of math, regex, |); did you mean 'math'?",
         recipe={"stages": [{"stage": "verify", "verifiers": {"*": {"kind": "maths"}}}]}),
    Case("lengths_out_of_order", "{recipe}: stages[0].length: min_chars (40) is larger than max_chars (10)", recipe={"stages": [{"stage": "length", "min_chars": 40, "max_chars": 10}]}),
    Case("unknown_stage_field", "{recipe}: stages[0].length.min_charz: unknown field; did you mean 'min_chars'?", recipe={"stages": [{"stage": "length", "min_charz": 3}]}, exact=True),
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
    Case("out_holds_another_run", "{out}: holds a run of a different recipe (seed: 99 -> 7); use --force to replace it, or another --out", command="run", setup=finished_run_of_another_recipe, exact=True),
    Case("out_holds_foreign_files", "{out}: output directory is not empty and holds no datagen run; choose another --out", command="run", setup=lambda root: (root / "out").mkdir() or (root / "out" / "notes.txt").write_text("mine"), exact=True),
    Case("out_is_a_file", "{out}: output path exists and is not a directory", command="run", setup=lambda root: (root / "out").write_text("x"), exact=True),
    Case("out_run_dir_is_a_file", "{out}: output directory is not empty and holds no datagen run; choose another --out", command="run", exact=True, setup=lambda root: (root / "out").mkdir() or (root / "out" / "run").write_text("x")),
    Case("out_read_only", "{out}: cannot write to the output directory (", command="run", setup=immutable_out, runner="cli"),
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
    Case("api_key_in_recipe", "{recipe}: backend.api_key: looks like an OpenAI/Anthropic-style key: a recipe carries no credentials; export the key and name the variable in backend.api_key_env", runner="cli", recipe={"backend": {"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:1/v1", "api_key": KEY_LOOKALIKE}}, exact=True),
    Case("key_in_api_key_env", "{recipe}: backend.api_key_env: holds what looks like a key, not the name of an environment variable: a recipe carries no credentials; export the key and name the variable in backend.api_key_env", recipe={"backend": {"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:1/v1", "api_key_env": KEY_LOOKALIKE}}, exact=True),
    Case("api_key_env_unset", "{recipe}: backend.api_key_env: environment variable DATAGEN_TEST_NO_SUCH_KEY is not set or empty", command="run", recipe={"backend": {"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:1/v1", "api_key_env": "DATAGEN_TEST_NO_SUCH_KEY"}}, exact=True),
    Case("server_unreachable", "http://127.0.0.1:{port}/v1: backend.base_url: cannot reach the server: Connection error.", command="run", recipe={"backend": {"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:{port}/v1", "max_retries": 0}}, exact=True, runner="cli"),
    # --- resource bounds: each of these was built to hang or exhaust memory ---------------
    Case("yaml_alias_bomb", "{recipe}: YAML error: more than 1000000 values once its aliases (*name) are expanded", raw_recipe=ALIAS_BOMB, exact=True, runner="bounded"),
    Case("yaml_alias_bomb_in_template", "{template}: YAML error: more than 1000000 values once its aliases (*name) are expanded", raw_template=ALIAS_BOMB, exact=True),
    Case("yaml_too_many_aliases", "{recipe}: YAML error: more than 100 aliases (*name) in one document", raw_recipe=b"name: &n x\nd: [" + b", ".join([b"*n"] * 101) + b"]\n", exact=True),
    Case("yaml_recursive_alias", "{recipe}: YAML error: an alias (*name) refers to a node that holds it", raw_recipe=b"name: x\nd: &a [1, *a]\n", exact=True),
    Case("yaml_deep_flow_nesting", "{recipe}: YAML error: nested deeper than 64 levels", raw_recipe=b"name: x\nd: " + b"[" * 100_000 + b"]" * 100_000 + b"\n", exact=True),
    Case("yaml_deep_block_nesting", "{template}: YAML error: nested deeper than 64 levels", raw_template=b"".join(b" " * i + b"k%d:\n" % i for i in range(3000)), exact=True),
    Case("yaml_deep_set_value", "--set description: YAML error: nested deeper than 64 levels", args=lambda root: ["validate", root / "pipelines" / "recipe.yaml", "--set", "description=" + "[" * 100_000], exact=True),
    Case("yaml_huge_file", "{recipe}: recipe file is larger than 16 MiB", raw_recipe=b"name: x\n#" + b"x" * (17 << 20) + b"\n", exact=True),
    Case("unquoted_octal_slot", "{template}: slots.topic[0]: the unquoted value 012 reads as the number 12; quote it ('012') to keep the text as written", raw_template=b"id: tiny\nuser: '{{ topic }}'\nslots:\n  topic: [012, 13]\n", exact=True),
    Case("unquoted_exponent_slot", "{template}: slots.topic[1].id: the unquoted value 1e3 reads as the number 1000.0|quote it ('1e3')", raw_template=b"id: tiny\nuser: '{{ topic.id }}'\nslots:\n  topic: [{id: a}, {id: 1e3}]\n"),
    Case("jinja_center_bomb", "{template}: user: rendering needs more than 1024 MiB of memory", command="preview", template=user("{{ topic|center(2000000000) }}")),
    Case("jinja_constant_center_bomb", "{template}: user: rendering needs more than 1024 MiB of memory", command="preview", template=user("{{ 'x'|center(2000000000) }}")),
    Case("jinja_percent_width_bomb", "{template}: user: rendering needs more than 1024 MiB of memory", command="preview", template=user("{{ '%02000000000d' % 1 }}"), runner="bounded"),
    Case("jinja_format_width_bomb", "{template}: user: rendering needs more than 1024 MiB of memory", command="preview", template=user("{{ '{:2000000000}'.format(topic) }}")),
    Case("jinja_method_ljust_bomb", "{template}: system: rendering needs more than 1024 MiB of memory", command="preview", template=edit(system="{{ persona.ljust(3000000000) }}")),
    Case("jinja_replace_growth", "{template}: user: rendering needs more than 1024 MiB of memory", command="preview", template=user("{{ ('x' * 1000000)|replace('', 'y' * 100000) }}")),
    Case("jinja_nested_range_loops", "{template}: user: rendering takes longer than the template time limit", command="preview", template=user("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"), runner="bounded"),
    Case("jinja_where_bomb", "{template}: where: rendering needs more than 1024 MiB of memory", template=edit(where="(topic|center(2000000000))|length > 0")),
    Case("jinja_too_long_output", "{template}: user: renders to |characters, more than the 1000000 allowed", command="preview", template=user("{{ 'x' * 1000000 }}")),
    Case("count_1e9", "{recipe}: templates[0].count: Input should be less than or equal to 1000000", recipe={"templates": [{"name": "tiny", "count": 1e9}]}),
    Case("count_1e9_over_huge_space", "{recipe}: templates[0].count: Input should be less than or equal to 1000000", recipe={"templates": [{"name": "tiny", "count": 1e9}]}, raw_template=HUGE_TEMPLATE, runner="bounded"),
    Case("seed_10_to_30", "{recipe}: seed: Input should be less than or equal to 9223372036854775807", recipe={"seed": 10**30}),
    Case("sampling_seed_huge", "{recipe}: backend.sampling.seed: Input should be less than or equal to 9223372036854775807", recipe={"backend": {"kind": "scripted", "sampling": {"seed": 2**64}}}),
    Case("seed_as_expression", "{recipe}: seed: Input should be a valid integer|(got '10**30')", raw_recipe=b"name: x\nseed: 10**30\ntemplates: [{name: tiny, count: 1}]\n"),
    Case("max_tokens_huge", "{recipe}: backend.sampling.max_tokens: Input should be less than or equal to 1048576", recipe={"backend": {"kind": "scripted", "sampling": {"max_tokens": 10**12}}}),
    Case("timeout_inf", "{recipe}: backend.timeout_s: Input should be a finite number", raw_recipe=b"name: x\ntemplates: [{name: tiny, count: 1}]\nbackend: {kind: openai, model: m, base_url: 'http://127.0.0.1:1/v1', timeout_s: .inf}\n"),
    Case("budget_1e12", "--budget: must be between 1 and 1000000 (got 1000000000000)", args=lambda root: ["counterexamples", root / "failures.jsonl", "--budget", "1000000000000", "--out", root / "out"], exact=True),
    Case("k_huge", "--k: must be between 1 and 1000 (got 99999999999999999999)", args=lambda root: ["counterexamples", root / "failures.jsonl", "--budget", "10", "--k", "99999999999999999999", "--out", root / "out"], exact=True),
    Case("k_range_huge", "{recipe}: input.k_range: k_range: hi (100000000) is more than 1000 clusters", recipe={"input": {"failures": "f.jsonl", "k_range": [2, 10**8]}, "budget": 10}),
    Case("recipe_budget_huge", "{recipe}: budget: Input should be less than or equal to 1000000", recipe={"budget": 10**12}),
    # --- files of the user's ---------------------------------------------------------------
    Case("dedup_out_is_a_directory", "{root}/outdir: --out: is a directory; name the output file (.parquet or .jsonl)", args=lambda root: ["dedup", root / "in.jsonl", "--column", "text", "--out", root / "outdir"], setup=lambda root: (root / "outdir").mkdir() or (root / "in.jsonl").write_text('{"text": "a"}\n'), exact=True),
    Case("dedup_out_is_the_input", "{root}/in.jsonl: --out: is the input file ({root}/in.jsonl); write the deduplicated table to another file", args=lambda root: ["dedup", root / "in.jsonl", "--column", "text", "--out", root / "in.jsonl"], setup=lambda root: (root / "in.jsonl").write_text('{"text": "a"}\n'), exact=True),
    Case("dedup_out_is_the_input_by_a_link", "{root}/link.jsonl: --out: is the input file ({root}/data/../in.jsonl)", args=lambda root: ["dedup", root / "data" / ".." / "in.jsonl", "--column", "text", "--out", root / "link.jsonl"], setup=input_and_a_link_to_it),
    Case("force_on_a_folder_that_is_no_run", "{out}: output directory is not empty and holds no datagen run; --force only replaces a datagen run; choose another --out", args=lambda root: ["run", root / "pipelines" / "recipe.yaml", "--out", root / "out", "--force", "--no-progress"], setup=lambda root: (root / "out" / "sub").mkdir(parents=True) or (root / "out" / "thesis.tex").write_text("chapter 1") or (root / "out" / "sub" / "data.csv").write_text("a,b"), exact=True),
    Case("secret_in_extra_body", "{recipe}: backend.extra_body.auth: looks like an OpenAI/Anthropic-style key: a recipe carries no credentials", recipe={"backend": {"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:1/v1", "extra_body": {"auth": KEY_LOOKALIKE}}}),
]
PORT = closed_port()


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
    """`datagen ARGS` run by `datagen.cli.main` in this process (helpers.datagen_in_process)."""
    return datagen_in_process(*args, cwd=cwd)


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (BOUNDED_MEMORY, BOUNDED_MEMORY))


def bounded_cli(args: list, cwd: Path) -> subprocess.CompletedProcess:
    """The console script under an address-space limit of BOUNDED_MEMORY; `seconds` on the result
    is its wall time (killed past twice BOUNDED_SECONDS)."""
    exe = Path(sys.executable).with_name("datagen")
    start = time.monotonic()
    result = subprocess.run([str(exe), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                            timeout=2 * BOUNDED_SECONDS, preexec_fn=_limit_memory)
    result.seconds = time.monotonic() - start
    return result


RUNNERS: dict[str, Callable] = {"in_process": in_process, "cli": lambda args, cwd: datagen_cli(*args, cwd=cwd), "bounded": bounded_cli}


IN_PROCESS = [c for c in CASES if c.runner == "in_process"]
PROCESSES = [c for c in CASES if c.runner != "in_process"]


def run_case(case: Case, root: Path) -> tuple:
    """(root, result or the exception raised, OUT's files before, OUT's files after)."""
    try:
        args = materialize(case, root)
        before = snapshot(root / "out")
        return root, RUNNERS[case.runner](args, root), before, snapshot(root / "out")
    except BaseException as err:  # e.g. pytest.skip from a setup: reported by the case's test
        return root, err, None, None
    finally:
        if case.setup is immutable_out:
            release_immutable(root)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """The in-process cases, one after another."""
    return {case.name: run_case(case, tmp_path_factory.mktemp(case.name)) for case in IN_PROCESS}


@pytest.fixture(scope="module")
def process_outcomes(tmp_path_factory):
    """The console-script cases, two at a time."""
    # Directories are made here, in one thread: the factory creates its base directory lazily and
    # two threads making it at once get two different bases.
    roots = {case.name: tmp_path_factory.mktemp(case.name) for case in PROCESSES}
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = pool.map(lambda case: run_case(case, roots[case.name]), PROCESSES)
        return dict(zip((c.name for c in PROCESSES), results))


def check(case: Case, outcome: tuple) -> None:
    root, result, before, after = outcome
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
    if case.runner != "cli":
        assert result.seconds < BOUNDED_SECONDS, f"took {result.seconds:.1f} s"
    assert KEY_LOOKALIKE not in result.stderr + result.stdout, "a secret in the input is never echoed"

    # Nothing that was there before is touched, and nothing looks like a finished run.
    assert {name: after.get(name) for name in before} == before, "what the output directory held is as it was"
    if case.name != "out_holds_another_run":
        assert not (root / "out" / "data").exists() and not (root / "out" / "README.md").exists()
        manifest = root / "out" / "run" / "manifest.json"
        if case.name != "out_manifest_corrupt" and manifest.exists():
            assert json.loads(manifest.read_text())["complete"] is False


@pytest.mark.parametrize("case", IN_PROCESS, ids=[c.name for c in IN_PROCESS])
def test_hostile_input_is_one_line_exit_2(case: Case, outcomes):
    check(case, outcomes[case.name])


@pytest.mark.slow  # a console-script process each: interpreter start, and inputs built to exhaust time or memory
@pytest.mark.parametrize("case", PROCESSES, ids=[c.name for c in PROCESSES])
def test_hostile_input_to_the_console_script_is_one_line_exit_2(case: Case, process_outcomes):
    check(case, process_outcomes[case.name])


def test_secrets_are_never_echoed(outcomes):
    """check() asserts the same for every case, api_key_in_recipe (a console-script case) included."""
    for name in ("key_in_api_key_env", "secret_in_extra_body"):
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


def test_row_counts_past_any_table_show_it_all(tmp_path):
    """`inspect --rows` and `preview -n` with a number larger than any table (larger than 64 bits)."""
    write_yaml(tmp_path / "templates" / "tiny.yaml", TINY_TEMPLATE)
    recipe = write_yaml(tmp_path / "pipelines" / "recipe.yaml", BASE_RECIPE)
    huge = "99999999999999999999"
    preview = in_process(["preview", recipe, "-n", huge], tmp_path)
    assert preview.returncode == 0 and preview.stdout.count("=== tiny") == 6 and "(6 of 6 prompts)" in preview.stdout, preview.stderr
    assert in_process(["run", recipe, "--out", tmp_path / "out", "--no-progress"], tmp_path).returncode == 0
    shown = in_process(["inspect", tmp_path / "out", "--rows", huge], tmp_path)
    assert shown.returncode == 0 and shown.seconds < BOUNDED_SECONDS, shown.stderr
    few = in_process(["inspect", tmp_path / "out", "--rows", "2"], tmp_path)
    assert len(shown.stdout) > len(few.stdout) and few.returncode == 0


def test_resume_and_force_exclude_each_other(tmp_path, capsys):
    from datagen.cli import main

    with pytest.raises(SystemExit) as info:
        main(["run", str(tmp_path / "recipe.yaml"), "--resume", "--force"])
    assert info.value.code == 2 and "argument --force: not allowed with argument --resume" in capsys.readouterr().err


def manifest_of(out: Path) -> dict:
    return json.loads((out / "run" / "manifest.json").read_text())


if sys.platform != "linux":  # /proc and chattr are Linux's
    pytestmark = pytest.mark.skip("Linux only")
