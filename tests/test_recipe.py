from __future__ import annotations

import pytest

from conftest import PIPELINES, datagen_cli, write_yaml
from datagen.errors import DatagenError
from datagen.recipe import load_recipe


def test_shipped_recipes_validate():
    for path in PIPELINES.glob("*.yaml"):
        loaded = load_recipe(path)
        assert loaded.templates


def test_set_overrides_any_field_and_is_validated(project):
    path = project()
    loaded = load_recipe(path, ["backend.sampling.n=5", "templates.0.count=3", "stages.0.drop_truncated=false", "seed=11"])
    r = loaded.recipe
    assert (r.backend.sampling.n, r.templates[0].count, r.stages[0].drop_truncated, r.seed) == (5, 3, False, 11)
    with pytest.raises(DatagenError) as info:
        load_recipe(path, ["backend.sampling.n=-1"])
    assert str(info.value).startswith("--set backend.sampling.n=-1: backend.sampling.n:")
    with pytest.raises(DatagenError, match="no list item '4'"):
        load_recipe(path, ["templates.4.count=3"])


def test_fingerprint_tracks_recipe_and_template_text(project):
    path = project()
    base = load_recipe(path).fingerprint()
    assert load_recipe(path).fingerprint() == base
    assert load_recipe(path, ["backend.sampling.temperature=0.1"]).fingerprint() != base
    assert load_recipe(path, ["output.dir=elsewhere"]).fingerprint() == base
    # Filters do not change what generation produces; they have their own chained keys.
    changed_filter = load_recipe(path, ["stages.0.drop_truncated=false"])
    assert changed_filter.fingerprint() == base
    assert changed_filter.stage_keys() != load_recipe(path).stage_keys()
    tpl = project.root / "templates" / "tiny.yaml"
    tpl.write_text(tpl.read_text().replace("Tell me about", "Explain"))
    assert load_recipe(path).fingerprint() != base


# Each bad input: the CLI prints one line naming file and field, exits 2, no traceback.
BAD_RECIPES = [
    ("yaml_syntax", None, "name: x\ntemplates: [\n", "recipe.yaml:", "YAML syntax error"),
    ("unknown_field", {"colour": "red"}, None, "colour", "unknown field"),
    ("negative_n", {"backend": {"kind": "scripted", "sampling": {"n": -2}}}, None, "backend.sampling.n", "greater than or equal to 1"),
    ("temperature", {"backend": {"kind": "scripted", "sampling": {"temperature": 7}}}, None, "backend.sampling.temperature", "less than or equal to 2"),
    ("unknown_backend", {"backend": {"kind": "tgi-magic"}}, None, "backend.kind", "Input should be 'vllm' or 'scripted'"),
    ("unknown_stage", {"stages": [{"stage": "sparkle"}]}, None, "stages[0]", "does not match any of the expected tags"),
    ("stage_field", {"stages": [{"stage": "length", "min_charz": 3}]}, None, "stages[0].length.min_charz", "unknown field"),
    ("missing_template", {"templates": [{"name": "nope", "count": 1}]}, None, "templates[0].name", "template 'nope' not found"),
    ("zero_count", {"templates": [{"name": "tiny", "count": 0}]}, None, "templates[0].count", "greater than or equal to 1"),
    ("too_many", {"templates": [{"name": "tiny", "count": 1000}]}, None, "tiny.yaml: slots", "exceeds the 24 distinct"),
    ("label_clash", {"stages": [{"stage": "length", "name": "finish"}]}, None, "stages", "would overwrite the column 'finish_reason'"),
    ("duplicate_label", {"stages": [{"stage": "length"}, {"stage": "length"}]}, None, "stages", "two stages are labelled 'length'"),
    ("stage_templates", {"stages": [{"stage": "length", "templates": ["nope"]}]}, None, "recipe.yaml", "stages[0].templates: 'nope' is not one of"),
    ("not_mapping", None, "- just\n- a list\n", "recipe.yaml", "expected a mapping"),
    ("non_utf8", None, b"name: caf\xe9\n", "recipe.yaml", "not valid UTF-8"),
]


@pytest.mark.parametrize("case, fields, raw, where, message", BAD_RECIPES, ids=[c[0] for c in BAD_RECIPES])
def test_bad_recipe_one_line_exit_2(project, case, fields, raw, where, message):
    path = project(**(fields or {}))
    if raw is not None:
        path.write_bytes(raw if isinstance(raw, bytes) else raw.encode())
    result = datagen_cli("validate", path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert where in lines[0] and message in lines[0], lines[0]


def test_bad_template_via_cli(project):
    path = project()
    tpl = project.root / "templates" / "tiny.yaml"
    tpl.write_text(tpl.read_text().replace("{{ topic }}", "{{ topik }}"))
    result = datagen_cli("validate", path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"datagen: error: {tpl}: user: unknown slot 'topik' (declared: difficulty, persona, topic)"


def test_sandbox_escape_via_cli(project):
    path = project()
    tpl = project.root / "templates" / "tiny.yaml"
    tpl.write_text(tpl.read_text().replace("{{ topic }}", "{{ topic.__class__.__base__.__subclasses__() }}"))
    result = datagen_cli("preview", path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "tiny.yaml: user: refused by the template sandbox" in result.stderr and "unsafe" in result.stderr


def test_missing_recipe_file():
    result = datagen_cli("validate", "/nonexistent/recipe.yaml")
    assert result.returncode == 2
    assert result.stderr.strip() == "datagen: error: /nonexistent/recipe.yaml: recipe file not found"


def test_model_path_that_does_not_exist(project):
    path = project(backend={"kind": "vllm", "model": "/models/does-not-exist"})
    for command in ("validate", "run"):
        args = [command, path] + (["--out", project.root / "out"] if command == "run" else [])
        result = datagen_cli(*args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines()[-1] == f"datagen: error: {path}: backend.model: model path does not exist: /models/does-not-exist"


def test_preview_prints_prompts_without_a_model(project):
    result = datagen_cli("preview", project(), "-n", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("=== tiny") == 2 and "slots: {" in result.stdout and "[user]" in result.stdout
    assert "(2 of 6 prompts)" in result.stdout


def test_stage_key_tracks_files_the_stage_reads(project, tmp_path):
    import polars as pl

    reference = tmp_path / "evals.parquet"
    pl.DataFrame({"prompt": ["What is the capital of France?"]}).write_parquet(reference)
    path = project(stages=[{"stage": "finished"}, {"stage": "dedup", "reference": str(reference)}])
    before = load_recipe(path).stage_keys()
    pl.DataFrame({"prompt": ["Name the largest planet."]}).write_parquet(reference)
    after = load_recipe(path).stage_keys()
    assert before[0] == after[0] and before[1] != after[1]
