"""The fix/failure DPO pairs of a finished counterexample run, written next to its targeted set.

The run's main dataset (OUT/data) is the targeted set; the pairs are built from the same candidates
with the `correction` strategy and written as a dataset of their own in OUT/pairs, which
`datasets.load_dataset("OUT/pairs")` and TRL's DPOTrainer load as they are.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from datagen.outputs import build_output
from datagen.outputs.config import PairsConfig
from datagen.errors import DatagenError
from datagen.recipe import LoadedRecipe, OutputConfig
from datagen.run.run_dir import RunDir
from datagen.outputs.writer import write_dataset

PAIRS_DIR = "pairs"


def correction_stage(loaded: LoadedRecipe) -> str | None:
    """The label of the verify stage that checks the corrections, if the recipe has one."""
    source = loaded.recipe.input
    templates = [t for t in (source.correction_template, source.code_correction_template) if t] if source else []
    for stage in loaded.recipe.stages:
        if stage.stage == "verify" and templates and (stage.templates is None or any(t in stage.templates for t in templates)):
            return stage.label
    return None


def write_pairs(out: Path, loaded: LoadedRecipe) -> int | None:
    """Pairs of a complete run in `out` into out/pairs (none written when there are none); None
    when the recipe verifies no corrections at all."""
    from datagen.run.stats import summarize

    label = correction_stage(loaded)
    if label is None:
        return None
    manifest = RunDir(out).read_manifest()
    if manifest is None or not manifest.get("complete"):
        raise DatagenError("holds no finished run to build pairs from", out)
    labels = sorted(manifest["stages"], key=lambda name: manifest["stages"][name]["index"])
    run = RunDir(out)
    last = [run.shard_path(len(labels) - 1, labels[-1], j) for j in range(manifest["shards"])]
    output = OutputConfig(format="dpo", pairs=PairsConfig(strategy="correction", stage=label))
    rows, stats = build_output(last, output, labels)
    if rows.height == 0:  # no correction verified: no pairs dataset (an empty split does not load)
        shutil.rmtree(out / PAIRS_DIR, ignore_errors=True)
        return 0
    pairs_recipe = dataclasses.replace(loaded, recipe=loaded.recipe.model_copy(update={"output": output}))
    return write_dataset(rows, out / PAIRS_DIR, pairs_recipe, summarize(manifest, labels), manifest.get("model"), stats)
