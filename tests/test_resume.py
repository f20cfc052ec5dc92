"""Nothing lost, nothing twice: runs killed with SIGKILL at chosen points, then resumed, end with
exactly the rows of an uninterrupted run, and the resume redoes only what was not finished.

The killed runs are real `datagen run` processes. A small driver (CHILD, below) patches one spot
of the pipeline to send the process SIGKILL when it is reached for the k-th time: in a backend
call, in a filter, half-way through writing a shard, between writing the manifest and renaming
it into place, while the dataset is written, before it replaces data/, or just before the
manifest says complete.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl
import pytest

from helpers import TINY_TEMPLATE, datagen_cli, write_yaml
from datagen.llm.scripted import ScriptedBackend
from datagen.errors import DatagenError
from datagen.run.executor import run_pipeline
from datagen.recipe import load_recipe

CHILD = r'''
import io, os, signal, sys
from pathlib import Path

point, hit_at = sys.argv[1], int(sys.argv[2])
hits = {}


def reached(name):
    """SIGKILL at the hit_at-th time the chosen point is reached."""
    if name == point:
        hits[name] = hits.get(name, 0) + 1
        return hits[name] == hit_at
    return False


def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


import datasets
import polars as pl
import datagen.run.executor as executor
from datagen.llm.scripted import ScriptedBackend
from datagen.llm.vllm_backend import VLLMBackend

for backend in (ScriptedBackend, VLLMBackend):
    def generate(self, requests, sampling, _original=backend.generate):
        result = _original(self, requests, sampling)
        if reached("generate"):  # the shard's completions exist only in memory
            die()
        return result
    backend.generate = generate

def stream(self, batches, _original=VLLMBackend.stream):  # how generation feeds the vLLM engine
    for item in _original(self, batches):
        if reached("generate"):  # a finished shard's completions exist only in memory
            die()
        yield item
VLLMBackend.stream = stream

original_apply = executor.apply_stage
def apply_stage(stage, batch, templates=None):
    result = original_apply(stage, batch, templates)
    if reached("filter:" + stage.label):
        die()
    return result
executor.apply_stage = apply_stage

original_write = pl.DataFrame.write_parquet
def write_parquet(self, file, *args, **kwargs):
    if "shard-" in str(file) and reached("shard_write"):
        buffer = io.BytesIO()
        original_write(self, buffer)
        Path(file).write_bytes(buffer.getvalue()[: buffer.tell() // 2])
        die()
    return original_write(self, file, *args, **kwargs)
pl.DataFrame.write_parquet = write_parquet

original_replace = os.replace
def replace(src, dst, *args, **kwargs):
    if str(dst).endswith("manifest.json"):
        if reached("manifest_rename"):
            die()
        if b'"complete": true' in Path(src).read_bytes() and reached("complete_manifest"):
            die()
    return original_replace(src, dst, *args, **kwargs)
os.replace = replace

original_to_parquet = datasets.Dataset.to_parquet
def to_parquet(self, path, *args, **kwargs):
    written = original_to_parquet(self, path, *args, **kwargs)
    if reached("dataset_write"):
        os.truncate(path, os.path.getsize(path) // 2)
        die()
    return written
datasets.Dataset.to_parquet = to_parquet

original_rename = Path.rename
def rename(self, target):
    if self.name == ".data.tmp" and reached("dataset_rename"):
        die()
    return original_rename(self, target)
Path.rename = rename

from datagen.cli import main
sys.exit(main(sys.argv[3:]))
'''

RESPONSES = [
    "short",
    "A fine answer, number {index}, long enough to pass the length filter.",
    "A fine answer, number {index}, long enough to pass the length filter.",  # duplicates for dedup
    "one two three four five six seven eight nine ten eleven twelve",
]
PROMPTS, SHARD_SIZE, N = 12, 3, 3
SHARDS = PROMPTS // SHARD_SIZE


def make_recipe(root: Path) -> Path:
    write_yaml(root / "templates" / "tiny.yaml", TINY_TEMPLATE)
    recipe = {
        "name": "resumable",
        "seed": 5,
        "templates": [{"name": "tiny", "count": PROMPTS}],
        "backend": {"kind": "scripted", "responses": RESPONSES, "sampling": {"n": N, "max_tokens": 11}},
        "stages": [{"stage": "finished"}, {"stage": "length", "min_chars": 10}, {"stage": "dedup", "threshold": 0.9}],
        "execution": {"shard_size": SHARD_SIZE},
    }
    return write_yaml(root / "pipelines" / "recipe.yaml", recipe)


def kill_at(child: Path, point: str, hit: int, recipe: Path, out: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    args = [sys.executable, str(child), point, str(hit), "run", str(recipe), "--out", str(out), "--no-progress"]
    return subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)


class CountingBackend(ScriptedBackend):
    def __init__(self):
        super().__init__(RESPONSES)
        self.prompts = 0

    def generate(self, requests, sampling):
        self.prompts += len(requests)
        return super().generate(requests, sampling)


def manifest_of(out: Path) -> dict | None:
    path = out / "run" / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else None


def stage_rows(out: Path) -> dict[str, pl.DataFrame]:
    """Every row each stage recorded, dropped ones too, in a stable order."""
    stages = sorted((out / "run" / "stages").iterdir())
    return {d.name: pl.read_parquet(sorted(d.glob("shard-*.parquet"))).sort("candidate_id") for d in stages}


def dataset_rows(out: Path) -> pl.DataFrame:
    return pl.read_parquet(sorted((out / "data").glob("*.parquet"))).sort("candidate_id")


def leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.startswith(".") and (p.name.endswith(".tmp") or p.name == ".data.tmp")]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("baseline")
    out = root / "out"
    run_pipeline(load_recipe(make_recipe(root)), out, progress=False)
    return out


KILL_POINTS = [
    ("generate", 2),  # shard 1's completions, before they are written
    ("shard_write", 6),  # half of the finished stage's shard 1 on disk, in its temporary file
    ("manifest_rename", 4),  # generate's shard 2 written, the manifest that records it not yet in place
    ("filter:length", 3),  # in the length filter, shard 2
    ("filter:dedup", 1),  # in dedup, after it has fitted on every shard
    ("dataset_write", 1),  # half of the dataset's first file written
    ("dataset_rename", 1),  # the dataset written, not yet moved into data/
    ("complete_manifest", 1),  # everything written but the manifest's complete flag
]


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory):
    """One run killed at each point (several at a time: each is a process of its own)."""
    child = tmp_path_factory.mktemp("driver") / "kill_at.py"
    child.write_text(CHILD)

    def run(point_hit):
        point, hit = point_hit
        root = tmp_path_factory.mktemp(point.replace(":", "_"))
        recipe, out = make_recipe(root), root / "out"
        return root, recipe, out, kill_at(child, point, hit, recipe, out)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(KILL_POINTS, pool.map(run, KILL_POINTS)))


@pytest.mark.slow  # 8 runs killed in child processes
@pytest.mark.parametrize("point, hit", KILL_POINTS, ids=[p for p, _ in KILL_POINTS])
def test_killed_run_resumes_to_the_uninterrupted_rows(point, hit, killed_runs, baseline):
    root, recipe, out, killed = killed_runs[(point, hit)]
    assert killed.returncode == -signal.SIGKILL, f"the run was not killed at {point}: {killed.stderr[-2000:]}"
    manifest = manifest_of(out)
    assert manifest is not None and manifest["complete"] is False, "a killed run never looks complete"
    assert not (out / "data").exists() or point in ("complete_manifest",), "no dataset appears before the run is done"
    pending = [j for j in range(SHARDS) if str(j) not in manifest["stages"]["generate"]["shards"]]

    backend = CountingBackend()
    result = run_pipeline(load_recipe(recipe), out, progress=False, backend_factory=lambda: backend)

    assert backend.prompts == len(pending) * SHARD_SIZE, "only the unfinished shards were generated again"
    assert leftovers(out) == [], "the killed run's temporary files are gone"
    assert manifest_of(out)["complete"] and result.rows_written == manifest_of(baseline)["rows_written"]
    expected, got = stage_rows(baseline), stage_rows(out)
    assert list(got) == list(expected)
    for stage, rows in got.items():
        assert rows["candidate_id"].is_unique().all(), f"{stage}: a row twice"
        assert rows.equals(expected[stage]), f"{stage}: not the rows of the uninterrupted run"
    assert dataset_rows(out).equals(dataset_rows(baseline))


@pytest.mark.slow  # 4 killed child processes and the CLI
def test_killed_again_and_again_then_resumed_by_the_cli(tmp_path, baseline):
    child = tmp_path / "kill_at.py"
    child.write_text(CHILD)
    recipe, out = make_recipe(tmp_path), tmp_path / "out"
    for point, hit in [("generate", 3), ("generate", 1), ("filter:finished", 2), ("dataset_write", 1)]:
        killed = kill_at(child, point, hit, recipe, out)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        assert manifest_of(out)["complete"] is False
    result = datagen_cli("run", recipe, "--out", out, "--no-progress", "--resume")
    assert result.returncode == 0, result.stderr
    assert manifest_of(out)["complete"] and leftovers(out) == []
    expected = stage_rows(baseline)
    assert all(rows.equals(expected[stage]) for stage, rows in stage_rows(out).items())
    assert dataset_rows(out).equals(dataset_rows(baseline))


def test_a_finished_run_is_not_redone(tmp_path):
    recipe, out = make_recipe(tmp_path), tmp_path / "out"
    run_pipeline(load_recipe(recipe), out, progress=False)
    shards = {p: p.read_bytes() for p in (out / "run" / "stages").rglob("shard-*.parquet")}
    again = CountingBackend()
    run_pipeline(load_recipe(recipe), out, progress=False, backend_factory=lambda: again)
    assert again.prompts == 0
    assert {p: p.read_bytes() for p in (out / "run" / "stages").rglob("shard-*.parquet")} == shards


def test_a_damaged_or_replaced_shard_is_redone_with_everything_after_it(tmp_path, baseline):
    recipe, out = make_recipe(tmp_path), tmp_path / "out"
    run_pipeline(load_recipe(recipe), out, progress=False)
    damaged = out / "run" / "stages" / "00_generate" / "shard-00002.parquet"
    damaged.write_bytes(damaged.read_bytes()[:100])  # e.g. a disk that lost the end of the file
    backend = CountingBackend()
    run_pipeline(load_recipe(recipe), out, progress=False, backend_factory=lambda: backend)
    assert backend.prompts == SHARD_SIZE, "the damaged shard, and only it, was generated again"
    expected = stage_rows(baseline)
    assert all(rows.equals(expected[stage]) for stage, rows in stage_rows(out).items())


def test_a_changed_recipe_is_refused_unless_forced(tmp_path):
    recipe, out = make_recipe(tmp_path), tmp_path / "out"
    run_pipeline(load_recipe(recipe), out, progress=False)
    before = manifest_of(out)
    with pytest.raises(DatagenError, match="holds a run of a different recipe"):
        run_pipeline(load_recipe(recipe, ["backend.sampling.max_tokens=5"]), out, progress=False)
    assert manifest_of(out) == before
    run_pipeline(load_recipe(recipe, ["backend.sampling.max_tokens=5"]), out, progress=False, force=True)
    assert manifest_of(out)["fingerprint"] != before["fingerprint"] and manifest_of(out)["complete"]


def test_shard_records_carry_the_key_of_their_input(tmp_path):
    recipe, out = make_recipe(tmp_path), tmp_path / "out"
    run_pipeline(load_recipe(recipe), out, progress=False)
    stages = manifest_of(out)["stages"]
    for label, entry in stages.items():
        assert sorted(entry["shards"]) == [str(j) for j in range(SHARDS)]
        for record in entry["shards"].values():
            assert len(record["key"]) == len(record["digest"]) == 20
    generate, finished = stages["generate"]["shards"], stages["finished"]["shards"]
    assert len({r["key"] for r in generate.values()}) == SHARDS, "each prompt shard has its own key"
    assert len({r["key"] for r in finished.values()}) == SHARDS
    # dedup decides over every row at once, so each of its shards depends on all its inputs
    assert len({r["key"] for r in stages["dedup"]["shards"].values()}) == 1


@pytest.mark.model
def test_killed_during_generation_with_the_real_model(tmp_path):
    """The embedded CPU model: killed after the first of two shards, resumed by the CLI."""
    write_yaml(tmp_path / "templates" / "tiny.yaml", TINY_TEMPLATE)
    recipe = write_yaml(tmp_path / "pipelines" / "recipe.yaml", {
        "name": "model-resume", "seed": 3, "templates": [{"name": "tiny", "count": 4}],
        "backend": {"kind": "vllm", "model": "embedded", "sampling": {"n": 2, "max_tokens": 16}},
        "stages": [{"stage": "finished"}], "execution": {"shard_size": 2},
    })  # fmt: skip
    child = tmp_path / "kill_at.py"
    child.write_text(CHILD)
    env = dict(os.environ, DATAGEN_NO_REEXEC="1", VLLM_CPU_KVCACHE_SPACE="1")
    preload = Path(sys.prefix) / "lib" / "libiomp5.so"
    if preload.exists():
        env["LD_PRELOAD"] = str(preload)
    out = tmp_path / "out"
    killed = kill_at(child, "generate", 2, recipe, out, env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    first_shard = out / "run" / "stages" / "00_generate" / "shard-00000.parquet"
    written = first_shard.read_bytes()
    assert list(manifest_of(out)["stages"]["generate"]["shards"]) == ["0"]

    resumed = datagen_cli("run", recipe, "--out", out, "--no-progress", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    uninterrupted = datagen_cli("run", recipe, "--out", tmp_path / "whole", "--no-progress")
    assert uninterrupted.returncode == 0, uninterrupted.stderr

    assert first_shard.read_bytes() == written, "the finished shard was kept, not generated again"
    got, expected = stage_rows(out)["00_generate"], stage_rows(tmp_path / "whole")["00_generate"]
    assert got["candidate_id"].is_unique().all() and got["candidate_id"].to_list() == expected["candidate_id"].to_list()
    assert got.height == 4 * 2 and (got["completion"].str.len_chars() > 0).all()
    # The shard generated before the kill came from a fresh engine in both runs: the same text.
    shard0 = set(pl.read_parquet(first_shard)["candidate_id"])
    assert got.filter(pl.col("candidate_id").is_in(shard0))["completion"].to_list() == expected.filter(pl.col("candidate_id").is_in(shard0))["completion"].to_list()
    # Same seed, same samples (this test also stands for "same seed, same completions" with vLLM):
    # every row's sample seed in both runs, and the n samples drawn for one prompt differ.
    assert got["sample_seed"].to_list() == expected["sample_seed"].to_list()
    per_prompt = got.group_by("prompt_id").agg(pl.col("completion").n_unique().alias("texts"))
    assert per_prompt.height == 4 and (per_prompt["texts"] == 2).sum() >= 2, per_prompt
