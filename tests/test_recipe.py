from __future__ import annotations

import pytest

from helpers import PIPELINES, datagen_in_process
from datagen.errors import DatagenError
from datagen.recipe import load_recipe


def test_shipped_recipes_validate():
    """Each shipped recipe loads with the templates it lists (ids matching their files), and a
    template-driven one expands to exactly the prompts its counts ask for, each prompt once."""
    from datagen.run.executor import expand_prompts

    paths = sorted(PIPELINES.glob("*.yaml"))
    assert {p.stem for p in paths} >= {"quickstart", "dpo_pairs", "rejection_sft", "counterexamples", "constitutional"}
    for path in paths:
        loaded = load_recipe(path)
        recipe = loaded.recipe
        assert list(loaded.templates) == [t.name for t in recipe.templates if t.source is None], path  # `from:` entries: rows as prompts
        assert all(template.id == name and template.path.stem == name for name, template in loaded.templates.items())
        if recipe.input is not None:  # counterexamples: the budget decides, from the failures' clusters
            assert recipe.budget and all(t.count is None for t in recipe.templates), path
            continue
        prompts = expand_prompts(loaded)
        wanted = {t.name: t.count if t.count is not None else _default_count(loaded, t) for t in recipe.templates}
        assert dict(prompts.group_by("template_id").len().rows()) == wanted, path
        assert prompts["prompt_id"].n_unique() == prompts.height == sum(wanted.values()), path


def _default_count(loaded, use) -> int:
    """Prompts of a template entry without a count: every row of a `from:` source, one per row of
    the largest one-row source a template draws from, else every slot combination."""
    if use.source is not None:
        return loaded.sources[use.source].height
    template = loaded.templates[use.name]
    singles = [loaded.sources[slot.source].height for slot in template.sources.values() if slot.k is None]
    return max(singles) if singles else template.combination_count()


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
    assert load_recipe(path, ["backend.max_concurrency=3", "backend.timeout_s=5"]).fingerprint() == base, "connection settings"
    # Filters do not change what generation produces; they have their own chained keys.
    changed_filter = load_recipe(path, ["stages.0.drop_truncated=false"])
    assert changed_filter.fingerprint() == base
    assert changed_filter.stage_keys() != load_recipe(path).stage_keys()
    tpl = project.root / "templates" / "tiny.yaml"
    tpl.write_text(tpl.read_text().replace("Tell me about", "Explain"))
    assert load_recipe(path).fingerprint() != base


# Bad recipes, templates and files through the CLI: tests/test_bad_input.py.


def test_preview_prints_prompts_without_a_model(project):
    result = datagen_in_process("preview", project(), "-n", "2")
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
