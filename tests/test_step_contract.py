"""The step contract's declarations: every kind's scope, read from the config (the pairwise judge
compares the samples of one prompt, so its scope is the group), and a recipe's validators leave each
step's config as written (a step resolves what it uses, e.g. revise's model, in build_step)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import TypeAdapter

import datagen
from datagen.paths import BASE_DIR
from datagen.recipe import load_recipe
from datagen.run.executor import build_steps
from datagen.steps import STEP_KINDS, StageConfig
from datagen.steps.judge import JudgeConfig
from datagen.steps.revise import ReviseConfig
from datagen.yaml_io import read_yaml
from helpers import BASE_RECIPE, TINY_TEMPLATE, write_yaml

SHIPPED = sorted((Path(datagen.__file__).parent / "resources" / "pipelines").glob("*.yaml"))
# kinds that need fields to be built on their own: the least a recipe writes
REQUIRED = {"judge": {"rubric": "helpfulness"}, "llm": {"prompt": "Say {{ completion }} again."}, "parse": {"parser": {"kind": "json"}},
            "verify": {"verifiers": {"*": {"kind": "none"}}}}


def test_every_kind_declares_a_scope_the_pairwise_judge_the_group():
    declared = {}
    for kind, config_class in STEP_KINDS.items():
        try:
            config = config_class.model_validate({"stage": kind, **REQUIRED.get(kind, {})})
        except Exception:  # noqa: BLE001 - a kind needing more than this is checked through the shipped recipes
            continue
        declared[kind] = config.scope
    assert set(declared.values()) <= {"row", "group", "run"}
    assert declared["dedup"] == declared["collapse"] == "run" and declared["vote"] == "group"
    assert JudgeConfig(rubric="helpfulness").scope == "row"
    assert JudgeConfig(rubric="helpfulness", mode="pairwise").scope == "group"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_a_recipe_leaves_each_step_config_as_written(path):
    """Each stage validated on its own equals the stage as the whole recipe's validation left it:
    no recipe validator writes into a step's config (fields or private state)."""
    loaded = load_recipe(path)
    raw = read_yaml(path)["stages"]
    adapter = TypeAdapter(StageConfig)
    for i, (written, stage) in enumerate(zip(raw, loaded.recipe.stages)):
        alone = adapter.validate_python(written, context={BASE_DIR: path.parent})
        assert alone.model_dump(mode="json") == stage.model_dump(mode="json"), f"{path.name}: stages.{i}"
        assert (alone.__pydantic_private__ or {}).keys() == (stage.__pydantic_private__ or {}).keys()
        for name, value in (alone.__pydantic_private__ or {}).items():
            assert stage.__pydantic_private__[name] == value, f"{path.name}: stages.{i} private {name} was set by the recipe"


def test_revise_resolves_the_generator_model_from_the_context_not_the_recipe(tmp_path):
    write_yaml(tmp_path / "templates" / "tiny.yaml", TINY_TEMPLATE)
    generator = {"kind": "scripted", "responses": ["an answer"], "sampling": {"n": 1}}
    path = write_yaml(tmp_path / "pipelines" / "r.yaml", BASE_RECIPE | {"backend": generator, "stages": [{"stage": "revise"}]})
    loaded = load_recipe(path)
    [config] = loaded.recipe.stages
    assert config.backend is None and isinstance(config, ReviseConfig)
    assert loaded.recipe.model_dump(mode="json")["stages"][0]["backend"] is None, "the resolved recipe (manifest) shows it as written"
    [step] = build_steps(loaded)
    assert step.backend.kind == "scripted" and step.backend.responses == ["an answer"]
    assert step.engine == step.backend, "the generator's model is the step's engine (the Ray executor places it)"
    own = load_recipe(path, ["stages.0.backend={kind: scripted, responses: [other]}"])
    [step] = build_steps(own)
    assert step.backend.responses == ["other"] and step.engine is None


@pytest.mark.slow  # loads the embedding model twice
def test_no_process_wide_cache_keeps_an_encoder_or_a_ray_worker_state():
    from datagen.run import ray_executor
    from datagen.steps.collapse import CollapseConfig
    from datagen.text.embeddings import load_encoder

    assert load_encoder() is not load_encoder(), "each owner loads (and releases) its own encoder"
    stage = CollapseConfig().build()
    assert stage.encoder is stage.encoder, "the step keeps its encoder while it runs"
    stage.close()
    assert stage._encoder is None, "and lets it go when closed"
    # what a Ray worker opens belongs to its actor (GenerateWorker, StageWorker), not to the module
    assert not [name for name, value in vars(ray_executor).items() if isinstance(value, (dict, list, set)) and not name.isupper() and not name.startswith("__")]


def test_the_readme_chain_example_is_a_valid_recipe(tmp_path):
    """The Chains section's example, as written, validates (with the shipped templates)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("## Chains", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    path = tmp_path / "chain.yaml"
    path.write_text(block)
    templates = Path(datagen.__file__).parent / "resources" / "templates"
    loaded = load_recipe(path, [f"template_dirs=[{templates}]"])
    assert [s.label for s in loaded.recipe.stages] == ["parse", "dedup", "solve", "vote", "verify"]
    assert loaded.recipe.stages[0].parser.json_schema == loaded.recipe.backend.sampling.json_schema
