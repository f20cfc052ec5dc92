"""Run to a target (datagen/run/target.py) on the scripted backend: exactly N rows, the first N in
the prompt stream's order, the same across runs, a SIGKILL + resume and a raised target; a budget
too small says so (card, manifest, exit status 3); dedup across waves keeps the first of
near-duplicates and never changes an earlier shard."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from helpers import TINY_TEMPLATE, ScriptedModel, datagen_cli, write_yaml
from datagen.errors import DatagenError
from datagen.recipe import load_recipe
from datagen.run.executor import expand_prompts, run_pipeline
from datagen.run.run_dir import file_digest
from datagen.run.target import EXIT_SHORT, interleave

SHARD, N_SAMPLES, PROMPTS = 4, 2, 24  # the tiny template has 3 x 2 x 4 = 24 distinct prompts


def conversation(request) -> str:
    return " / ".join(m["content"] for m in request.messages)


def one_of_two(request, index: int) -> str:
    """Sample 0 repeats the whole request (distinct per prompt, long); sample 1 is too short:
    exactly one row per prompt passes `length: {min_chars: 20}` and dedup."""
    return f"Answer to {conversation(request)}" if index == 0 else "short"


def make_recipe(root: Path, **output) -> Path:
    write_yaml(root / "templates" / "tiny.yaml", TINY_TEMPLATE)
    recipe = {
        "name": "target",
        "seed": 11,
        "template_dirs": ["templates"],
        "templates": [{"name": "tiny", "count": PROMPTS}],
        "backend": {"kind": "scripted", "sampling": {"n": N_SAMPLES, "max_tokens": 60}},
        "stages": [{"stage": "length", "min_chars": 20}, {"stage": "dedup", "threshold": 0.9}],
        "execution": {"shard_size": SHARD},
        "output": output,
    }
    return write_yaml(root / "recipe.yaml", recipe)


def run(recipe: Path, out: Path, reply=one_of_two, overrides: list[str] | None = None):
    model = ScriptedModel(reply=reply)
    result = run_pipeline(load_recipe(recipe, overrides), out, backend_factory=lambda: model, progress="none")
    return result, model


def written(out: Path) -> pl.DataFrame:
    return pl.read_parquet(out / "data" / "*.parquet")


def stream(recipe: Path) -> list[str]:
    """The prompt ids in the order a target run takes them (one template: its own order)."""
    return expand_prompts(load_recipe(recipe))["prompt_id"].to_list()


def test_target_10_at_one_row_per_prompt_gives_the_first_10_prompts_and_stops(tmp_path):
    recipe = make_recipe(tmp_path, target_rows=10)
    result, model = run(recipe, tmp_path / "out")
    rows = written(tmp_path / "out")
    assert result.rows_written == rows.height == 10
    assert rows["prompt_id"].to_list() == stream(recipe)[:10]
    assert rows["sample_index"].to_list() == [0] * 10
    # 10 rows at one per prompt need 3 shards of 4: the run asked for 12 prompts, not 24
    assert model.requests == 12
    manifest = json.loads((tmp_path / "out" / "run" / "manifest.json").read_text())
    assert manifest["target"]["reached"] and manifest["target"]["shards_used"] == 3 and manifest["target"]["kept"] == 12
    assert manifest["target"]["prompts"] == 12 and manifest["target"]["candidates"] == 12 * N_SAMPLES
    card = (tmp_path / "out" / "README.md").read_text()
    assert "- Rows: 10 " in card and "target 10 rows reached after 3 shard(s)" in card
    # the funnel counts the shards the rows come from
    generate = next(s for s in result.stage_stats if s["stage"] == "generate")
    assert generate["rows_in"] == 12 and generate["kept"] == 24


def test_the_same_rows_in_two_runs_and_after_raising_the_target(tmp_path):
    recipe = make_recipe(tmp_path, target_rows=10)
    run(recipe, tmp_path / "a")
    run(recipe, tmp_path / "b")
    assert written(tmp_path / "a").equals(written(tmp_path / "b"))

    small = make_recipe(tmp_path / "raised", target_rows=6)
    result, _ = run(small, tmp_path / "raised" / "out")
    assert result.rows_written == 6
    first = json.loads((tmp_path / "raised" / "out" / "run" / "manifest.json").read_text())
    # raising N continues the same run: the finished shards stay, only the missing prompts are asked
    result, model = run(small, tmp_path / "raised" / "out", overrides=["output.target_rows=10"])
    assert result.rows_written == 10 and model.requests == 12 - 8
    after = json.loads((tmp_path / "raised" / "out" / "run" / "manifest.json").read_text())
    for label in ("generate", "length", "dedup"):
        for j in ("0", "1"):
            assert after["stages"][label]["shards"][j]["digest"] == first["stages"][label]["shards"][j]["digest"]
    assert written(tmp_path / "raised" / "out").equals(written(tmp_path / "a"))
    # and lowering it again writes the first 6 without asking anything
    result, model = run(small, tmp_path / "raised" / "out")
    assert result.rows_written == 6 and model.requests == 0
    assert written(tmp_path / "raised" / "out").equals(written(tmp_path / "a").head(6))


def test_dedup_across_waves_keeps_the_first_and_never_changes_an_earlier_shard(tmp_path):
    """Sample 0 only names the topic (4 topics over 24 prompts): a later prompt's answer duplicates
    an earlier kept one and is dropped; the kept rows are each topic's first prompt in the stream."""
    recipe = make_recipe(tmp_path, target_rows=4)
    prompts = expand_prompts(load_recipe(recipe))
    topics = {pid: json.loads(slots)["topic"] for pid, slots in zip(prompts["prompt_id"], prompts["slots"])}

    def by_topic(request, index):
        topic = next(t for t in ("rivers", "volcanoes", "bridges", "stars") if t in conversation(request))
        return f"All there is to know about {topic}, in one sentence." if index == 0 else "short"

    out = tmp_path / "out"
    result, _ = run(recipe, out, reply=by_topic)
    firsts: dict[str, str] = {}
    for pid in stream(recipe):
        firsts.setdefault(topics[pid], pid)
    expected = sorted(firsts.values(), key=stream(recipe).index)
    assert written(out)["prompt_id"].to_list() == expected
    assert result.target.reached

    manifest = json.loads((out / "run" / "manifest.json").read_text())
    before = {j: file_digest(out / "run" / "stages" / "02_dedup" / f"shard-{int(j):05d}.parquet") for j in manifest["stages"]["dedup"]["shards"]}
    # a fifth distinct row does not exist: the run goes through the whole budget, earlier shards untouched
    result, _ = run(recipe, out, reply=by_topic, overrides=["output.target_rows=5"])
    assert not result.target.reached and result.rows_written == 4
    assert written(out)["prompt_id"].to_list() == expected
    for j, digest in before.items():
        assert file_digest(out / "run" / "stages" / "02_dedup" / f"shard-{int(j):05d}.parquet") == digest
    dedup = pl.read_parquet(out / "run" / "stages" / "02_dedup" / "*.parquet")
    assert dedup.filter(pl.col("dedup_keep") == True)["prompt_id"].to_list() == expected  # noqa: E712
    assert (dedup.filter(pl.col("dedup_reason").is_not_null())["dedup_reason"] == "exact_duplicate").all()


SCRIPTED = {"kind": "scripted", "responses": ["A long enough answer, number {index}, for the length filter."], "sampling": {"n": N_SAMPLES, "max_tokens": 60}}


def cli_recipe(root: Path, **output) -> Path:
    path = make_recipe(root, **output)
    data = __import__("yaml").safe_load(path.read_text())
    data["backend"] = SCRIPTED
    data["stages"] = [{"stage": "length", "min_chars": 20}]  # every candidate passes: n rows per prompt
    return write_yaml(path, data)


@pytest.mark.slow
def test_a_budget_too_small_writes_what_it_has_says_so_and_exits_3(tmp_path):
    recipe = cli_recipe(tmp_path, target_rows=10, max_candidates=6)  # 3 prompts x 2 samples
    out = tmp_path / "out"
    result = datagen_cli("run", recipe, "--out", out, "--no-progress")
    assert result.returncode == EXIT_SHORT == 3, result.stderr
    warning = [line for line in result.stderr.splitlines() if "target" in line]
    assert len(warning) == 1 and "target 10 rows not reached" in warning[0] and "6 rows" in warning[0]
    assert "output.max_candidates = 6" in warning[0]
    assert written(out).height == 6
    card = (out / "README.md").read_text()
    assert "- Target: target 10 rows not reached" in card
    manifest = json.loads((out / "run" / "manifest.json").read_text())
    assert manifest["target"]["reached"] is False and manifest["complete"] is True
    # a larger budget continues the run and reaches the target
    result = datagen_cli("run", recipe, "--out", out, "--no-progress", "--set", "output.max_candidates=40")
    assert result.returncode == 0, result.stderr
    assert "target 10 rows reached" in result.stdout
    assert written(out).height == 10


@pytest.mark.slow
def test_bad_targets_are_refused_in_one_line(tmp_path):
    recipe = cli_recipe(tmp_path, target_rows=10, max_candidates=1)  # less than one prompt's n = 2 samples
    result = datagen_cli("run", recipe, "--out", tmp_path / "out")
    assert result.returncode == 2 and "output.max_candidates" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    result = datagen_cli("validate", recipe, "--set", "output.max_candidates=null", "--set", "output.target_rows=0")
    assert result.returncode == 2 and "target_rows" in result.stderr
    result = datagen_cli("validate", recipe, "--set", "output.target_rows=null")
    assert result.returncode == 2 and "max_candidates" in result.stderr and "target_rows" in result.stderr


def test_ray_refuses_a_target_recipe_before_starting(tmp_path):
    from datagen.run.ray_executor import run_pipeline_ray

    recipe = cli_recipe(tmp_path, target_rows=10)
    with pytest.raises(DatagenError, match="without --executor ray") as err:
        run_pipeline_ray(load_recipe(recipe), tmp_path / "out")
    assert err.value.field == "output.target_rows"
    assert not (tmp_path / "out").exists()


def test_interleave_keeps_each_templates_share_in_every_prefix():
    prompts = pl.DataFrame({"template_id": ["a"] * 2 + ["b"] * 6, "prompt_id": [f"a{i}" for i in range(2)] + [f"b{i}" for i in range(6)]})
    order = interleave(prompts)["prompt_id"].to_list()
    assert sorted(order) == sorted(prompts["prompt_id"]) and [p for p in order if p[0] == "b"] == [f"b{i}" for i in range(6)]
    for k in range(1, len(order) + 1):
        assert abs(sum(p[0] == "a" for p in order[:k]) - k * 2 / 8) <= 1


CHILD = r'''
import os, signal, sys
point, hit_at = sys.argv[1], int(sys.argv[2])
hits = [0]
import datagen.run.executor as executor
from datagen.llm.scripted import ScriptedBackend

def reply(self, request, index):
    return f"Answer to {' / '.join(m['content'] for m in request.messages)}" if index == 0 else "short"
ScriptedBackend._text = reply

def die_at(name):
    if name == point:
        hits[0] += 1
        if hits[0] == hit_at:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

original_generate = ScriptedBackend.generate
def generate(self, requests, sampling):
    result = original_generate(self, requests, sampling)
    die_at("generate")
    return result
ScriptedBackend.generate = generate

original_apply = executor.apply_stage
def apply_stage(stage, batch, config=None):
    result = original_apply(stage, batch, config)
    die_at("filter:" + stage.label)
    return result
executor.apply_stage = apply_stage

from datagen.cli import main
sys.exit(main(sys.argv[3:]))
'''


@pytest.mark.slow
@pytest.mark.parametrize("point, hit", [("generate", 2), ("filter:dedup", 3)])
def test_killed_target_run_resumes_to_the_same_rows(tmp_path, point, hit):
    recipe = make_recipe(tmp_path, target_rows=10)
    data = __import__("yaml").safe_load(recipe.read_text())
    data["backend"] = SCRIPTED  # the child replaces its text by one_of_two's
    write_yaml(recipe, data)
    child = tmp_path / "child.py"
    child.write_text(CHILD)

    def run_child(point: str, hit: int, out: Path) -> subprocess.CompletedProcess:
        args = [sys.executable, str(child), point, str(hit), "run", str(recipe), "--out", str(out), "--no-progress"]
        return subprocess.run(args, capture_output=True, text=True, timeout=600)

    baseline = run_child("never", 1, tmp_path / "baseline")
    assert baseline.returncode == 0, baseline.stderr
    killed = run_child(point, hit, tmp_path / "out")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = run_child("never", 1, tmp_path / "out")
    assert resumed.returncode == 0, resumed.stderr
    assert written(tmp_path / "out").equals(written(tmp_path / "baseline"))
    assert written(tmp_path / "out")["prompt_id"].to_list() == stream(recipe)[:10]


def test_one_engine_for_every_wave_unless_another_step_calls_a_model(tmp_path):
    from helpers import CountingFactory

    recipe = make_recipe(tmp_path, target_rows=10)
    factory = CountingFactory(lambda: ScriptedModel(reply=one_of_two))
    result = run_pipeline(load_recipe(recipe), tmp_path / "alone", backend_factory=factory, progress="none")
    assert result.target.reached and len(factory.started) == 1 and factory.started[0].closed

    # with an llm step (a second engine) the generator's is started and closed wave by wave
    step = '{stage: llm, name: polish, user: "Polish: {{ completion }}", backend: {kind: scripted}}'
    factory = CountingFactory(lambda: ScriptedModel(reply=one_of_two))
    result = run_pipeline(load_recipe(recipe, [f"stages.+={step}"]), tmp_path / "two", backend_factory=factory, progress="none")
    assert result.target.reached and len(factory.started) == 2 and all(model.closed for model in factory.started)
    assert written(tmp_path / "two").height == 10


def test_a_run_without_the_target_forgets_it(tmp_path):
    recipe = make_recipe(tmp_path, target_rows=4)
    run(recipe, tmp_path / "out")
    result, _ = run(recipe, tmp_path / "out", overrides=["output.target_rows=null"])
    assert result.target is None and result.rows_written == PROMPTS  # one row per prompt, every prompt
    manifest = json.loads((tmp_path / "out" / "run" / "manifest.json").read_text())
    assert "target" not in manifest and "Target:" not in (tmp_path / "out" / "README.md").read_text()
