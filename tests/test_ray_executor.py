"""The Ray executor (local Ray, 2 CPUs) runs a recipe exactly as the local executor does."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import polars as pl
import pytest
import ray

from datagen.cli import main
from datagen.errors import DatagenError
from datagen.run.executor import run_pipeline
from datagen.run.ray_executor import run_pipeline_ray
from datagen.recipe import load_recipe
from helpers import start_local_ray

# Two near-duplicate sentences (one word apart), one more sentence, and texts the filters drop;
# shards of two prompts x 3 samples, so duplicates land in different shards.
RESPONSES = [
    "Rivers carve deep valleys over long spans of time and carry their sediment down to the sea, sample {index}.",
    "Rivers carve deep valleys over long spans of time and carry their sediment down to the ocean, sample {index}.",
    "A volcano forms where magma rises through the crust and erupts as lava and ash, sample {index}.",
    "too short",
    " ".join(f"word{i}" for i in range(40)),  # cut off by max_tokens
]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module; the executor uses a Ray it finds running and leaves it up."""
    start_local_ray()
    yield
    ray.shutdown()


def recipe(project) -> Path:
    return project(
        templates=[{"name": "tiny", "count": 8}],
        backend={"kind": "scripted", "responses": RESPONSES, "sampling": {"n": 3, "max_tokens": 24}},
        stages=[{"stage": "finished"}, {"stage": "length", "min_chars": 12}, {"stage": "dedup", "threshold": 0.7, "shingle_size": 3}],
        execution={"shard_size": 2},
    )


def stage_shards(out: Path) -> dict[str, pl.DataFrame]:
    return {f"{d.name}/{p.name}": pl.read_parquet(p) for d in sorted((out / "run" / "stages").iterdir()) for p in sorted(d.glob("*.parquet"))}


def without_seconds(manifest: dict) -> dict:
    for entry in manifest["stages"].values():
        for stats in entry["shards"].values():
            stats.pop("seconds")
    return manifest


@pytest.mark.slow  # a local Ray
def test_ray_run_equals_local_run_row_for_row(project, local_ray, capsys):
    path = recipe(project)
    local, distributed = project.root / "local", project.root / "ray"
    run_pipeline(load_recipe(path), local, progress=False)
    assert main(["run", str(path), "--out", str(distributed), "--executor", "ray", "--no-progress"]) == 0
    assert f"to {distributed}" in capsys.readouterr().out

    a, b = stage_shards(local), stage_shards(distributed)
    assert list(a) == list(b) and len(a) == 4 * 4, "every stage wrote its 4 shards"
    for name in a:
        assert a[name].schema == b[name].schema, name
        assert a[name].equals(b[name]), name
    rows = datasets.load_dataset(str(distributed), split="train").to_list()
    assert rows and rows == datasets.load_dataset(str(local), split="train").to_list()
    manifests = [json.loads((out / "run" / "manifest.json").read_text()) for out in (local, distributed)]
    assert without_seconds(manifests[0]) == without_seconds(manifests[1])

    # Dedup decided over the whole run, not per block: rows were dropped as duplicates of rows
    # in other shards, which a per-shard dedup could not have seen.
    shard_of = {cid: name for name, frame in b.items() if name.startswith("03_dedup") for cid in frame["candidate_id"]}
    dedup = pl.concat([frame for name, frame in b.items() if name.startswith("03_dedup")])
    dropped = dedup.filter(pl.col("dropped_by") == "dedup")
    assert set(dropped["dedup_reason"]) == {"exact_duplicate", "near_duplicate"}
    across = [cid for cid, kept in zip(dropped["candidate_id"], dropped["dedup_cluster"]) if shard_of[cid] != shard_of[kept]]
    assert len(across) >= 3


@pytest.mark.slow  # a local Ray
def test_error_in_a_ray_worker_reaches_the_caller_as_one_line(project, local_ray):
    # The driver never opens the backend under Ray: this error is raised inside the generation actor.
    loaded = load_recipe(recipe(project), ["backend.kind=vllm", "backend.model=/nonexistent/model"])
    with pytest.raises(DatagenError) as caught:
        run_pipeline_ray(loaded, project.root / "out", progress=False)
    assert str(caught.value) == f"{project.root / 'pipelines' / 'recipe.yaml'}: backend.model: model path does not exist: /nonexistent/model"


def test_address_needs_the_ray_executor(project, capsys):
    assert main(["run", str(recipe(project)), "--out", str(project.root / "out"), "--address", "auto"]) == 2
    assert "--address: only used with --executor ray" in capsys.readouterr().err


@pytest.mark.slow  # a local Ray
def test_a_chain_with_llm_and_converse_steps_on_ray_equals_the_local_run(tmp_path, local_ray):
    """LLM steps (children per row, the generator's model by default) and a converse step run on Ray
    workers built with the run's context, and give the local executor's rows."""
    from test_chains import chain_recipe

    path = chain_recipe(tmp_path, prompts=8, shard_size=2)
    data = __import__("yaml").safe_load(path.read_text())
    data["stages"].append({"stage": "converse", "turns": 2, "sampling": {"max_tokens": 20}})
    path.write_text(__import__("yaml").safe_dump(data))
    local, distributed = tmp_path / "local", tmp_path / "ray"
    run_pipeline(load_recipe(path), local, progress=False)
    run_pipeline_ray(load_recipe(path), distributed, progress=False)
    a, b = stage_shards(local), stage_shards(distributed)
    assert list(a) == list(b) and any("_solve/" in name for name in a)
    for name in a:
        assert a[name].equals(b[name]), name
    assert datasets.load_dataset(str(distributed), split="train").to_list() == datasets.load_dataset(str(local), split="train").to_list()
