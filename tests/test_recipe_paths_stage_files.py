"""Files that stages read (a judge's rubric, a revise stage's constitution, a verifier's JSON schema)
are recipe paths: relative to the recipe file, or to the working directory when given with --set."""

from __future__ import annotations

import pytest

from helpers import write_yaml
from datagen.errors import DatagenError
from datagen.recipe import load_recipe

RUBRIC = {"id": "mine", "criteria": [{"name": "clear", "description": "Is the answer clear?", "anchors": {i: f"clarity level {i}" for i in range(1, 6)}}]}
CONSTITUTION = {"id": "mine", "principles": [{"id": "brief", "critique": "Is the answer longer than it needs to be?", "revision": "Make it shorter."}]}


def test_stage_files_are_relative_to_the_recipe(project, monkeypatch):
    root = project.root
    write_yaml(root / "filters" / "rubric.yaml", RUBRIC)
    write_yaml(root / "filters" / "constitution.yaml", CONSTITUTION)
    schema = root / "filters" / "schema.json"
    schema.write_text('{"type": "object", "required": ["answer"]}')
    recipe = project(stages=[
        {"stage": "judge", "rubric": "../filters/rubric.yaml", "backend": {"kind": "scripted"}},
        {"stage": "revise", "constitution": "../filters/constitution.yaml"},
        {"stage": "verify", "verifiers": {"*": {"kind": "json_schema", "schema_file": "../filters/schema.json"}}},
    ])
    monkeypatch.chdir("/")
    loaded = load_recipe(recipe)
    judge, revise, verify = loaded.recipe.stages
    assert (judge.rubric_spec.id, revise.constitution_spec.id) == ("mine", "mine")
    assert verify.verifiers["*"].schema_file == str(schema)
    keys = loaded.stage_keys()
    schema.write_text('{"type": "object", "required": ["result"]}')
    assert load_recipe(recipe).stage_keys()[2] != keys[2], "the verify key reads the schema file it resolved"


def test_shipped_names_stay_names_and_set_paths_start_from_the_working_directory(project, monkeypatch):
    root = project.root
    write_yaml(root / "cwd" / "rubric.yaml", RUBRIC)
    recipe = project(stages=[{"stage": "judge", "rubric": "helpfulness"}])
    monkeypatch.chdir(root / "cwd")
    assert load_recipe(recipe).recipe.stages[0].rubric_spec.id == "helpfulness"
    assert load_recipe(recipe, ["stages.0.rubric=rubric.yaml"]).recipe.stages[0].rubric_spec.id == "mine"


def test_a_missing_stage_file_names_the_recipe_and_field(project):
    root = project.root
    recipe = project(stages=[{"stage": "revise", "constitution": "../filters/nope.yaml"}])
    with pytest.raises(DatagenError) as caught:
        load_recipe(recipe)
    assert str(caught.value) == f"{recipe}: stages[0].revise.constitution: file not found: {root / 'filters' / 'nope.yaml'} (got '../filters/nope.yaml')"
