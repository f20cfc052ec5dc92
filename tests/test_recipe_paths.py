"""Paths in a recipe start from the recipe file's folder, paths given with --set from the working
directory, whichever directory the command runs in; `validate` checks every model the recipe names."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from helpers import datagen_cli
from datagen.cli import main
from datagen.errors import DatagenError
from datagen.recipe import load_recipe

# The tiny template's prompts about rivers: a reference set that the run's prompts run into.
RIVER_PROMPTS = [f"Tell me about rivers at a {level} level." for level in ("easy", "hard")]


def reference_file(path: Path, prompts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"prompt": prompts}).write_parquet(path)
    return path


def dedup_against(reference: str) -> list[dict]:
    return [{"stage": "finished"}, {"stage": "dedup", "column": "prompt", "reference": reference}]


def test_run_from_another_directory_finds_the_recipes_files(project):
    root = project.root
    reference_file(root / "data" / "evals.parquet", RIVER_PROMPTS)
    recipe = project(templates=[{"name": "tiny", "count": 24}], stages=dedup_against("../data/evals.parquet"), output={"dir": "../out"})
    elsewhere = root / "work" / "deep"
    elsewhere.mkdir(parents=True)
    run = datagen_cli("run", recipe, "--no-progress", cwd=elsewhere)
    assert run.returncode == 0, run.stderr
    # All 24 slot combinations are drawn; the 6 about rivers (x n=2) match the reference.
    assert "reference_match=12" in run.stdout, run.stdout
    assert (root / "out" / "run").is_dir() and not (root / "work" / "out").exists(), "output.dir is relative to the recipe too"


def test_paths_resolve_the_same_from_any_working_directory(project, monkeypatch):
    root = project.root
    evals = reference_file(root / "data" / "evals.parquet", RIVER_PROMPTS)
    recipe = project(stages=dedup_against("../data/evals.parquet"), output={"dir": "../out"})
    loaded = []
    for cwd in (root, root / "pipelines", Path("/")):
        monkeypatch.chdir(cwd)
        loaded.append(load_recipe(recipe))
    first = loaded[0].recipe
    assert first.stages[1].reference == str(evals) and first.output.dir == str(root / "out")
    assert first.template_dirs == [str(root / "templates")], "the default template folder is a recipe path too"
    keys = {(x.fingerprint(), *x.stage_keys()) for x in loaded}
    assert len(keys) == 1
    # The stage key reads the resolved file: changing its contents reruns dedup, seen from any directory.
    reference_file(evals, ["Name the largest planet."])
    assert load_recipe(recipe).stage_keys()[1] != keys.pop()[2]


def test_set_paths_start_from_the_working_directory(project, monkeypatch):
    root = project.root
    reference_file(root / "pipelines" / "evals.parquet", RIVER_PROMPTS)  # the same name next to the recipe: not this one
    mine = reference_file(root / "cwd" / "evals.parquet", RIVER_PROMPTS[:1])
    (root / "cwd" / "tpl").mkdir()
    recipe = project(stages=dedup_against("evals.parquet"))
    monkeypatch.chdir(root / "cwd")
    assert load_recipe(recipe).recipe.stages[1].reference == str(root / "pipelines" / "evals.parquet")
    r = load_recipe(recipe, ["stages.1.reference=evals.parquet", "output.dir=out", "template_dirs=[tpl, ../templates]"]).recipe
    assert (r.stages[1].reference, r.output.dir) == (str(mine), str(root / "cwd" / "out"))
    assert r.template_dirs == [str(root / "cwd" / "tpl"), str(root / "templates")]
    # A path inside a whole mapping given with --set starts from the working directory as well.
    r = load_recipe(recipe, ["stages.1={stage: dedup, reference: evals.parquet}"]).recipe
    assert r.stages[1].reference == str(mine)
    with pytest.raises(DatagenError) as caught:
        load_recipe(recipe, ["stages.1.reference=nope.parquet"])
    assert str(caught.value) == (
        f"--set stages.1.reference=nope.parquet: stages[1].dedup.reference: file not found: {root / 'cwd' / 'nope.parquet'} (got 'nope.parquet')"
    )


def test_absolute_and_home_paths_are_taken_as_given(project, monkeypatch, tmp_path):
    home = tmp_path / "home"
    evals = reference_file(home / "evals.parquet", RIVER_PROMPTS)
    monkeypatch.setenv("HOME", str(home))
    recipe = project(stages=dedup_against("~/evals.parquet"), output={"dir": str(tmp_path / "elsewhere" / "out")})
    r = load_recipe(recipe).recipe
    assert (r.stages[1].reference, r.output.dir) == (str(evals), str(tmp_path / "elsewhere" / "out"))


def test_local_model_paths_are_recipe_paths_and_model_names_are_not(project, monkeypatch):
    root = project.root
    monkeypatch.chdir("/")
    vllm = load_recipe(project(backend={"kind": "vllm", "model": "../models/gen"}, stages=[{"stage": "collapse", "model": "./encoder"}])).recipe
    assert vllm.backend.model == str(root / "models" / "gen")
    assert vllm.stages[0].model == str(root / "pipelines" / "encoder")
    hub = load_recipe(project(backend={"kind": "vllm", "model": "Qwen/Qwen2.5-0.5B-Instruct"}, stages=[{"stage": "collapse"}])).recipe
    assert (hub.backend.model, hub.stages[0].model) == ("Qwen/Qwen2.5-0.5B-Instruct", "default")
    served = load_recipe(project(backend={"kind": "openai", "model": "./served-name", "base_url": "http://127.0.0.1:1/v1"})).recipe
    assert served.backend.model == "./served-name", "an openai model is the server's name for it, not a path"


def judge(backend: dict) -> list[dict]:
    return [{"stage": "judge", "rubric": "helpfulness", "backend": backend}]


def test_validate_checks_a_stages_model_like_the_generators(project, monkeypatch, capsys):
    root = project.root
    monkeypatch.chdir("/")
    recipe = project(stages=judge({"kind": "vllm", "model": "../models/judge"}))
    assert main(["validate", str(recipe)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"datagen: error: {recipe}: stages[0].judge.backend.model: model path does not exist: {root / 'models' / 'judge'}"
    ]
    (root / "models" / "judge").mkdir(parents=True)
    assert main(["validate", str(recipe)]) == 0, capsys.readouterr().err
    assert "generate -> judge" in capsys.readouterr().out

    monkeypatch.delenv("DATAGEN_TEST_NO_SUCH_KEY", raising=False)
    keyed = project(stages=judge({"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:1/v1", "api_key_env": "DATAGEN_TEST_NO_SUCH_KEY"}))
    assert main(["validate", str(keyed)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"datagen: error: {keyed}: stages[0].judge.backend.api_key_env: environment variable DATAGEN_TEST_NO_SUCH_KEY is not set or empty"
    )
