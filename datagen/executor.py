"""Local executor: prompt shards flow through generate and each filter stage, one stage at a time.

Every stage's output shard is written to the run directory and recorded in the manifest, so a
rerun of the same recipe skips finished shards instead of regenerating them.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import polars as pl
from tqdm import tqdm

from datagen.backends import Backend, make_backend
from datagen.errors import DatagenError
from datagen.generate import generate_shard, prompts_frame
from datagen.recipe import LoadedRecipe
from datagen.run_dir import RunDir, atomic_write_parquet
from datagen.stages import Stage
from datagen.templates import expand
from datagen.writer import write_dataset


def expand_prompts(loaded: LoadedRecipe) -> pl.DataFrame:
    rows: list[dict] = []
    for use in loaded.recipe.templates:
        rows.extend(expand(loaded.templates[use.name], use.count, loaded.recipe.seed))
    return prompts_frame(rows)


@dataclass
class RunResult:
    out: Path
    rows_written: int
    stage_stats: list[dict[str, Any]] = field(default_factory=list)


def _selected(templates: list[str] | None) -> pl.Expr:
    """Rows a stage applies to: alive ones, of the stage's templates when it names any."""
    alive = pl.col("keep")
    return alive if templates is None else alive & pl.col("template_id").is_in(templates)


def apply_stage(stage: Stage, batch: pl.DataFrame, templates: list[str] | None = None) -> pl.DataFrame:
    """Run a filter on the rows still alive (of its templates); the others pass through as they are."""
    label = stage.label
    batch = batch.with_row_index("_row")
    selected = batch.filter(_selected(templates))
    annotated = stage(selected)
    if annotated.height != selected.height or f"{label}_keep" not in annotated.columns:
        raise RuntimeError(f"stage {label!r} must annotate every row it is given with {label}_keep")
    merged = pl.concat([annotated, batch.filter(~_selected(templates))], how="diagonal_relaxed").sort("_row").drop("_row")
    verdict = pl.col(f"{label}_keep").fill_null(True)
    return merged.with_columns(
        pl.when(pl.col("keep") & ~verdict).then(pl.lit(label)).otherwise(pl.col("dropped_by")).alias("dropped_by"),
        (pl.col("keep") & verdict).alias("keep"),
    )


def shard_stats(label: str, before: pl.DataFrame, after: pl.DataFrame, seconds: float) -> dict[str, Any]:
    """For generate, `before` is the prompt shard: rows in are prompts, kept are candidates."""
    generated = label == "generate"
    alive_in = before.height if generated else int(before["keep"].sum())
    dropped = after.filter(pl.col("dropped_by") == label)
    reasons = dropped.group_by(f"{label}_reason").len().rows() if dropped.height else []
    rows_in = before if generated else before.filter(pl.col("keep"))
    counts_in = dict(rows_in.group_by("template_id").len().rows())
    counts_kept = dict(after.filter(pl.col("keep")).group_by("template_id").len().rows())
    stats: dict[str, Any] = {
        "rows_in": alive_in,
        "kept": int(after["keep"].sum()),
        "reasons": {str(reason): int(count) for reason, count in reasons},
        "seconds": round(seconds, 3),
        "by_template": {t: [n, counts_kept.get(t, 0)] for t, n in sorted(counts_in.items())},
    }
    if generated:
        stats["tokens"] = int(after["completion_tokens"].sum())
    return stats


def _progress(label: str, position: str, total: int, unit: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=f"{position} {label}", unit=unit, disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def run_pipeline(
    loaded: LoadedRecipe,
    out: Path,
    *,
    force: bool = False,
    progress: bool = True,
    backend_factory: Callable[[], Backend] | None = None,
) -> RunResult:
    recipe = loaded.recipe
    run = RunDir(out)
    manifest = run.prepare(loaded.fingerprint(), force)
    manifest.update(recipe=recipe.name, recipe_path=str(loaded.path))
    prompts = expand_prompts(loaded)
    atomic_write_parquet(run.root / "prompts.parquet", prompts)
    size = recipe.execution.shard_size
    shards = [prompts.slice(i, size) for i in range(0, prompts.height, size)]
    manifest["prompts"] = prompts.height
    manifest["shards"] = len(shards)
    run.write_manifest(manifest)

    stages: list[Stage] = [config.build() for config in recipe.stages]
    labels = ["generate"] + [s.label for s in stages]
    keys = [manifest["fingerprint"]] + loaded.stage_keys()
    current = {run.stage_dir(i, label).name for i, label in enumerate(labels)}
    for old in (run.root / "stages").glob("*") if (run.root / "stages").exists() else []:
        if old.name not in current:  # a stage that was removed or moved
            shutil.rmtree(old)
    manifest["stages"] = {label: e for label, e in manifest["stages"].items() if label in labels}
    for index, label in enumerate(labels):
        entry = manifest["stages"].get(label)
        if entry is None or entry.get("key") != keys[index] or entry.get("index") != index:
            # A new or changed stage (or one before it changed): its old shards are stale.
            shutil.rmtree(run.stage_dir(index, label), ignore_errors=True)
            entry = manifest["stages"][label] = {"index": index, "key": keys[index], "shards": {}}
        done = entry["shards"]
        todo = [j for j in range(len(shards)) if str(j) not in done or not run.shard_path(index, label, j).exists()]
        if index == 0:
            backend = None
            if todo:
                backend = backend_factory() if backend_factory else _open_backend(loaded)
                manifest["model"] = backend.model_name
            try:
                _run_generate(loaded, run, manifest, shards, todo, backend, progress)
            finally:
                if backend is not None:
                    backend.close()
            continue
        stage = stages[index - 1]
        try:
            _run_filter(stage, recipe.stages[index - 1].templates, index, labels, run, manifest, len(shards), todo, progress)
        finally:
            if hasattr(stage, "close"):  # stages that hold a model (judge) release it here
                stage.close()

    last = [run.shard_path(len(labels) - 1, labels[-1], j) for j in range(len(shards))]
    stage_stats = summarize(manifest, labels)
    written = write_dataset(last, out, loaded, stage_stats, manifest.get("model"))
    manifest["complete"] = True
    manifest["rows_written"] = written
    run.write_manifest(manifest)
    return RunResult(out=out, rows_written=written, stage_stats=stage_stats)


def _open_backend(loaded: LoadedRecipe) -> Backend:
    config = loaded.recipe.backend
    try:
        return make_backend(config, loaded.recipe.sampling_seed)
    except DatagenError as err:
        if err.source is None:
            err.source = str(loaded.path)
        raise
    except Exception as err:  # noqa: BLE001 - engines fail in many ways; the user needs one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DatagenError(f"cannot start the {config.kind} backend for {config.model!r}: {first}", loaded.path, "backend.model") from err


def _run_generate(loaded, run: RunDir, manifest, shards, todo, backend, progress) -> None:
    recipe = loaded.recipe
    done = manifest["stages"]["generate"]["shards"]
    n_stages = len(recipe.stages) + 1
    with _progress("generate", f"[1/{n_stages}]", sum(shards[j].height for j in todo), "prompt", progress) as bar:
        tokens = 0
        started = time.perf_counter()
        for j in todo:
            start = time.perf_counter()
            frame = generate_shard(shards[j], backend, recipe.backend.sampling, recipe.sampling_seed, recipe.backend.kind)
            atomic_write_parquet(run.shard_path(0, "generate", j), frame)
            done[str(j)] = shard_stats("generate", shards[j], frame, time.perf_counter() - start)
            run.write_manifest(manifest)
            tokens += done[str(j)]["tokens"]
            bar.set_postfix_str(f"{tokens / max(time.perf_counter() - started, 1e-9):.0f} tok/s")
            bar.update(shards[j].height)


def _run_filter(stage: Stage, templates: list[str] | None, index: int, labels: list[str], run: RunDir, manifest, n_shards: int, todo, progress) -> None:
    label = stage.label
    done = manifest["stages"][label]["shards"]
    previous = [run.shard_path(index - 1, labels[index - 1], j) for j in range(n_shards)]
    if todo and hasattr(stage, "fit"):
        # Stages with global state (dedup, collapse) see every alive row before any shard.
        stage.fit(lambda: (pl.read_parquet(p).filter(_selected(templates)) for p in previous))
    inputs = [previous[j] for j in todo]
    total = sum(pl.scan_parquet(p).select(pl.len()).collect().item() for p in inputs)
    with _progress(label, f"[{index + 1}/{len(labels)}]", total, "row", progress) as bar:
        for j, source in zip(todo, inputs):
            start = time.perf_counter()
            before = pl.read_parquet(source)
            after = apply_stage(stage, before, templates)
            atomic_write_parquet(run.shard_path(index, label, j), after)
            done[str(j)] = shard_stats(label, before, after, time.perf_counter() - start)
            run.write_manifest(manifest)
            bar.update(before.height)
    if hasattr(stage, "summarize") and (todo or "summary" not in manifest["stages"][label]):
        outputs = pl.scan_parquet([run.shard_path(index, label, j) for j in range(n_shards)])
        manifest["stages"][label]["summary"] = stage.summarize(outputs)
        run.write_manifest(manifest)


def summarize(manifest: dict[str, Any], labels: list[str]) -> list[dict[str, Any]]:
    """Totals per stage across shards, in pipeline order."""
    summary = []
    for label in labels:
        shards = manifest["stages"][label]["shards"].values()
        reasons: dict[str, int] = {}
        for s in shards:
            for reason, count in s["reasons"].items():
                reasons[reason] = reasons.get(reason, 0) + count
        by_template: dict[str, list[int]] = {}
        for s in shards:
            for template, (n_in, n_kept) in s.get("by_template", {}).items():
                total = by_template.setdefault(template, [0, 0])
                total[0] += n_in
                total[1] += n_kept
        entry = {
            "stage": label,
            "by_template": by_template,
            "rows_in": sum(s["rows_in"] for s in shards),
            "kept": sum(s["kept"] for s in shards),
            "dropped": reasons,
            "seconds": round(sum(s["seconds"] for s in shards), 3),
        }
        if "summary" in manifest["stages"][label]:
            entry["summary"] = manifest["stages"][label]["summary"]
        if label == "generate":
            entry["tokens"] = sum(s.get("tokens", 0) for s in shards)
        summary.append(entry)
    return summary
