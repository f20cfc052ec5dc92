from __future__ import annotations

import json

import datasets
import polars as pl
import pytest

from datagen.errors import DatagenError
from datagen.run.executor import apply_stage, run_pipeline
from datagen.steps import RunStep
from datagen.recipe import load_recipe
from datagen.steps.length import LengthConfig, LengthStage
from helpers import ScriptedModel, candidate_frame, write_yaml

RESPONSES = ["short", "A fine answer, number {index}, passes the bar.", "one two three four five six seven eight nine ten eleven"]


def recipe_with_filters(project, **extra):
    return project(
        backend={"kind": "scripted", "responses": RESPONSES, "sampling": {"n": 3, "max_tokens": 10}},
        stages=[{"stage": "finished"}, {"stage": "length", "min_chars": 10}],
        **extra,
    )


def test_run_writes_stage_shards_manifest_and_dataset(project):
    out = project.root / "out"
    result = run_pipeline(load_recipe(recipe_with_filters(project)), out, progress=False)
    manifest = json.loads((out / "run" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["prompts"] == 6 and manifest["shards"] == 2
    assert sorted(p.name for p in (out / "run" / "stages").iterdir()) == ["00_generate", "01_finished", "02_length"]

    candidates = pl.read_parquet(out / "run" / "stages" / "02_length" / "*.parquet")
    assert candidates.height == 18, "every candidate is kept in the run directory, dropped or not"
    truncated = candidates.filter(pl.col("finish_reason") == "length")
    assert truncated.height and (truncated["dropped_by"] == "finished").all()
    assert truncated["length_keep"].is_null().all(), "later stages do not see dropped rows"
    short = candidates.filter(pl.col("completion") == "short")
    assert short.height and (short["length_reason"] == "too_short").all() and (short["dropped_by"] == "length").all()

    kept = candidates.filter(pl.col("keep"))
    assert result.rows_written == kept.height > 0
    stats = {s["stage"]: s for s in result.stage_stats}
    assert stats["generate"]["rows_in"] == 6 and stats["generate"]["kept"] == 18
    assert stats["finished"]["dropped"] == {"truncated": truncated.height}
    assert stats["length"]["dropped"] == {"too_short": short.height}

    ds = datasets.load_dataset(str(out), split="train")
    assert ds.num_rows == kept.height
    row = ds[0]
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    for column in ("template_id", "prompt_id", "slots", "persona", "difficulty", "topic", "seed", "sample_seed", "model", "sampling", "finish_reason"):
        assert row[column] is not None, column
    assert json.loads(row["sampling"])["n"] == 3 and row["seed"] == 7
    card = (out / "README.md").read_text()
    assert "| finished | 18 |" in card and f"truncated: {truncated.height}" in card and "name: test" in card


def test_same_recipe_same_rows(project):
    path = recipe_with_filters(project)
    a = run_pipeline(load_recipe(path), project.root / "a", progress=False)
    b = run_pipeline(load_recipe(path), project.root / "b", progress=False)
    da = datasets.load_dataset(str(a.out), split="train").to_list()
    db = datasets.load_dataset(str(b.out), split="train").to_list()
    assert da == db and da


def test_prompt_completion_format(project):
    out = project.root / "out"
    run_pipeline(load_recipe(recipe_with_filters(project), ["output.format=prompt_completion"]), out, progress=False)
    row = datasets.load_dataset(str(out), split="train")[0]
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert [m["role"] for m in row["completion"]] == ["assistant"] and "messages" not in row


def test_rerun_skips_finished_shards(project):
    path = recipe_with_filters(project)
    out = project.root / "out"
    first = ScriptedModel(RESPONSES)
    run_pipeline(load_recipe(path), out, progress=False, backend_factory=lambda: first)
    before = (out / "data").iterdir().__next__().read_bytes()
    # Simulate a crash after generation of shard 0: drop everything recorded after it.
    manifest_path = out / "run" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["stages"]["generate"]["shards"]["1"]
    manifest["stages"]["length"]["shards"].clear()
    manifest["complete"] = False
    manifest_path.write_text(json.dumps(manifest))
    second = ScriptedModel(RESPONSES)
    run_pipeline(load_recipe(path), out, progress=False, backend_factory=lambda: second)
    assert first.requests == 6 and second.requests == 2, "only the unfinished shard is generated again"
    assert (out / "data").iterdir().__next__().read_bytes() == before


def test_changed_recipe_is_refused_unless_forced(project):
    path = recipe_with_filters(project)
    out = project.root / "out"
    run_pipeline(load_recipe(path), out, progress=False)
    with pytest.raises(DatagenError, match="different recipe"):
        run_pipeline(load_recipe(path, ["seed=99"]), out, progress=False)
    result = run_pipeline(load_recipe(path, ["seed=99"]), out, force=True, progress=False)
    assert result.rows_written > 0


def test_foreign_output_directory_is_refused(project, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DatagenError, match="not empty and holds no datagen run"):
        run_pipeline(load_recipe(recipe_with_filters(project)), out, progress=False)
    assert (out / "notes.txt").read_text() == "mine"


def test_apply_stage_only_sees_alive_rows():
    rows = [("long enough text", True, None), ("tiny", True, None), ("also long enough", False, "finished"), ("x", True, None)]
    batch = candidate_frame({"completion": text, "keep": keep, "dropped_by": by} for text, keep, by in rows)
    seen = {}

    class Spy:
        label = "length"

        def __call__(self, frame):
            seen["rows"] = frame.height
            return LengthConfig(min_chars=5).build()(frame)

    out = apply_stage(Spy(), batch)
    assert seen["rows"] == 3
    assert out["keep"].to_list() == [True, False, False, False]
    assert out["dropped_by"].to_list() == [None, "length", "finished", "length"]
    assert out["completion"].to_list() == batch["completion"].to_list(), "order is preserved"


def test_stage_hooks_fit_summarize_close(project, monkeypatch):
    """A RunStep's fit sees every alive row of the run before any shard; summarize sees all outputs;
    close runs. Capabilities come from the type (RunStep), not from the methods a class happens to have."""
    calls = {}

    class Hooked(RunStep):
        label = "length"

        def fit(self, shards):
            calls["fit_rows"] = sum(frame.height for frame in shards())
            calls["fit_before_call"] = "call" not in calls

        def __call__(self, frame):
            calls["call"] = calls.get("call", 0) + 1
            return LengthStage(LengthConfig(min_chars=10))(frame)

        def summarize(self, outputs):
            return {"rows": outputs.select(pl.len()).collect().item()}

        def close(self):
            calls["closed"] = True

    monkeypatch.setattr(LengthConfig, "build", lambda self: Hooked())
    result = run_pipeline(load_recipe(recipe_with_filters(project)), project.root / "out", progress=False)
    finished = next(s for s in result.stage_stats if s["stage"] == "finished")
    assert calls["fit_rows"] == finished["kept"] and calls["fit_before_call"]
    assert calls["call"] == 2 and calls["closed"]
    assert next(s for s in result.stage_stats if s["stage"] == "length")["summary"] == {"rows": 18}
    assert "### length" in (project.root / "out" / "README.md").read_text()


def test_changed_filter_reruns_filters_not_generation(project):
    path = recipe_with_filters(project)
    out = project.root / "out"
    first = ScriptedModel(RESPONSES)
    a = run_pipeline(load_recipe(path), out, progress=False, backend_factory=lambda: first)
    second = ScriptedModel(RESPONSES)
    b = run_pipeline(load_recipe(path, ["stages.1.min_chars=0"]), out, progress=False, backend_factory=lambda: second)
    assert second.requests == 0, "generation is reused"
    assert b.rows_written > a.rows_written, "the relaxed filter was applied"
    third = ScriptedModel(RESPONSES)
    c = run_pipeline(load_recipe(path, ["stages=[{stage: finished}]"]), out, progress=False, backend_factory=lambda: third)
    assert third.requests == 0 and c.rows_written == b.rows_written
    assert sorted(p.name for p in (out / "run" / "stages").iterdir()) == ["00_generate", "01_finished"]
    assert [s["stage"] for s in c.stage_stats] == ["generate", "finished"]


def test_stage_limited_to_templates_leaves_other_rows_untouched(project):
    out = project.root / "out"
    math = {"id": "other", "user": "Say {{ word }}.", "slots": {"word": ["a", "b", "c"]}, "expansion": {"mode": "product"}}
    write_yaml(project.root / "templates" / "other.yaml", math)
    path = recipe_with_filters(project, templates=[{"name": "tiny", "count": 6}, {"name": "other"}])
    loaded = load_recipe(path, ["stages.1.templates=[other]"])
    run_pipeline(loaded, out, progress=False)
    rows = pl.read_parquet(out / "run" / "stages" / "02_length" / "*.parquet").filter(pl.col("finished_keep"))
    tiny, other = rows.filter(pl.col("template_id") == "tiny"), rows.filter(pl.col("template_id") == "other")
    assert tiny["length_keep"].is_null().all() and tiny["keep"].all(), "rows of other templates pass untouched"
    assert other["length_keep"].is_not_null().all()
    assert (other.filter(pl.col("completion") == "short")["dropped_by"] == "length").all()
