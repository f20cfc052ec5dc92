"""How a recipe finds what it names: shipped templates from a recipe outside the repository, and a
data source name given with --set that the recipe does not read (a misspelt name)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from helpers import PIPELINES, datagen_in_process


def _recipe(folder: Path, **fields) -> Path:
    body = {"name": "lookup", "templates": [{"name": "math_word_problems", "count": 3}], "backend": {"kind": "scripted", "responses": ["42"]}}
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(body | fields), encoding="utf-8")
    return path


def test_a_recipe_outside_the_repository_finds_the_shipped_templates(tmp_path):
    result = datagen_in_process("validate", _recipe(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1 template(s), 3 prompts" in result.stdout


def test_a_template_of_the_recipes_own_folders_comes_before_the_shipped_one(tmp_path):
    own = tmp_path / "templates"
    own.mkdir()
    shipped = yaml.safe_load((PIPELINES.parent / "templates" / "math_word_problems.yaml").read_text(encoding="utf-8"))
    shipped["user"] = "MINE: " + shipped["user"]
    (own / "math_word_problems.yaml").write_text(yaml.safe_dump(shipped), encoding="utf-8")
    result = datagen_in_process("preview", _recipe(tmp_path, template_dirs=["templates"]), "-n", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "MINE: " in result.stdout


def test_an_unknown_template_lists_every_folder_searched(tmp_path):
    recipe = _recipe(tmp_path, templates=[{"name": "no_such_template", "count": 1}])
    result = datagen_in_process("validate", recipe, cwd=tmp_path)
    assert result.returncode == 2
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1
    assert "templates[0].name" in line and "no_such_template" in line and "resources/templates" in line


def test_a_misspelt_data_source_in_set_is_refused_with_the_closest_name(tmp_path):
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text('{"id": "a", "prompt": "Say hi."}\n', encoding="utf-8")
    for typo in ("promts", "prompt", "Prompts"):
        result = datagen_in_process("validate", PIPELINES / "ultrafeedback.yaml", "--set", f"data.{typo}.path={prompts}", cwd=tmp_path)
        assert result.returncode == 2, (typo, result.stdout)
        line = result.stderr.strip()
        assert len(line.splitlines()) == 1
        assert f"--set data.{typo}.path=" in line and "did you mean 'prompts'?" in line


def test_the_right_data_source_name_in_set_swaps_the_file(tmp_path):
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text("".join(f'{{"id": "p{i}", "prompt": "Question {i}?"}}\n' for i in range(3)), encoding="utf-8")
    result = datagen_in_process("validate", PIPELINES / "ultrafeedback.yaml", "--set", f"data.prompts.path={prompts}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1 template(s), 3 prompts" in result.stdout  # a `from:` entry counts as a template



@pytest.mark.parametrize(
    "recipe, override, message",
    [
        ("ultrafeedback", "data.prompts.path=/nonexistent/prompts.jsonl", "file not found"),
        ("quickstart", "backend.model=/nonexistent/model", "model path does not exist"),
        ("quickstart", "stages.judge.backend.model=/nonexistent/judge", "model path does not exist"),
        ("quickstart", "stages.judge.rubric=helpfulnes", "no shipped rubric 'helpfulnes'"),
        ("quickstart", "stages.dedup.reference=/nonexistent/reference.jsonl", "/nonexistent/reference.jsonl"),
    ],
)
def test_a_bad_value_given_with_set_is_blamed_on_that_set(tmp_path, recipe, override, message):
    """Values checked after the recipe's schema (files opened, models looked up, rubrics loaded)
    name the `--set` that gave them, not the recipe file the user did not edit."""
    result = datagen_in_process("validate", recipe, "--set", override, cwd=tmp_path)
    assert result.returncode == 2, result.stdout
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert line.startswith(f"datagen: error: --set {override}: "), line
    assert message in line and "quickstart.yaml" not in line and "ultrafeedback.yaml" not in line
