"""Local executor: prompt shards flow through generate and each filter stage, one stage at a time.

Every stage's output shard is written to the run directory and recorded in the manifest, so a
rerun of the same recipe skips finished shards instead of regenerating them.
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import polars as pl

from datagen.llm import Backend, make_backend
from datagen.llm.base import Outage
from datagen.outputs import build_output
from datagen.errors import DatagenError, first_line
from datagen.llm.generate import generate_shard, prompts_frame
from datagen.run.progress import StageProgress
from datagen.recipe import LoadedRecipe
from datagen.report.html import write_report
from datagen.run.run_dir import RunDir, resolved_recipe, atomic_write_parquet, content_key, file_digest, remove_stage_files
from datagen.rows import BackendConfig
from datagen.steps import RunStep, StageConfigBase, Step, StepContext
from datagen.sources.templates import expand
from datagen.outputs.writer import write_dataset


def expand_prompts(loaded: LoadedRecipe) -> pl.DataFrame:
    if loaded.recipe.input is not None:  # prompts from clusters of failures, not from slot vocabularies
        from datagen.counterexamples.expand import counterexample_prompts

        return counterexample_prompts(loaded)
    rows: list[dict] = []
    for use in loaded.recipe.templates:
        rows.extend(expand(loaded.templates[use.name], use.count, loaded.recipe.seed))
    return prompts_frame(rows)


def build_steps(loaded: LoadedRecipe) -> list[Step]:
    """Every step of the recipe, built with the run's context; building reads the files a step
    needs (dedup's reference, a rubric) and opens no model."""
    recipe = loaded.recipe
    context = StepContext(recipe.backend, recipe.sampling_seed, str(loaded.path))
    return [config.build_step(context) for config in recipe.stages]


@dataclass
class RunResult:
    out: Path
    rows_written: int
    stage_stats: list[dict[str, Any]] = field(default_factory=list)
    pairs_written: int | None = None  # counterexample runs: fix/failure DPO pairs in OUT/pairs (None: not built)


def _selected(templates: list[str] | None) -> pl.Expr:
    """Rows a stage applies to: alive ones, of the stage's templates when it names any."""
    alive = pl.col("keep")
    return alive if templates is None else alive & pl.col("template_id").is_in(templates)


def apply_stage(stage: Step, batch: pl.DataFrame, config: StageConfigBase | list[str] | None = None) -> pl.DataFrame:
    """Run a step on the rows still alive (of its templates); the others pass through as they are.

    A filter annotates the rows it is given (seeing the columns its `views` name under the names
    its code reads, e.g. a generated question as `completion`); an expanding step (LLM) returns
    child rows, which take the place of their parent. `config` may be a bare template list (older
    callers)."""
    templates = config if isinstance(config, list) or config is None else config.templates
    views = config.views() if isinstance(config, StageConfigBase) else {}
    expands = isinstance(config, StageConfigBase) and config.expands
    label = stage.label
    batch = batch.with_row_index("_row")
    selected = batch.filter(_selected(templates))
    if expands:
        annotated = stage(selected)
        if f"{label}_keep" not in annotated.columns or not set(annotated["_row"]) <= set(selected["_row"]):
            raise RuntimeError(f"step {label!r} must mark every child row it returns with {label}_keep and its parent's _row")
    else:
        annotated = _with_views(stage, selected, views)
        if annotated.height != selected.height or f"{label}_keep" not in annotated.columns:
            raise RuntimeError(f"stage {label!r} must annotate every row it is given with {label}_keep")
    merged = pl.concat([annotated, batch.filter(~_selected(templates))], how="diagonal_relaxed").sort("_row", maintain_order=True).drop("_row")
    verdict = pl.col(f"{label}_keep").fill_null(True)
    return merged.with_columns(
        pl.when(pl.col("keep") & ~verdict).then(pl.lit(label)).otherwise(pl.col("dropped_by")).alias("dropped_by"),
        (pl.col("keep") & verdict).alias("keep"),
    )


def _viewed(frame: pl.DataFrame, views: dict[str, str]) -> tuple[pl.DataFrame, dict[str, str]]:
    """`frame` with each view's source column shown under the name the step reads, and the
    names its own columns were kept under meanwhile."""
    moved = {name: source for name, source in views.items() if name != source}
    if not moved:
        return frame, {}
    kept = {name: f"_own_{name}" for name in moved if name in frame.columns}
    frame = frame.rename(kept).with_columns(pl.col(source).alias(name) for name, source in moved.items())
    return frame, kept


def _with_views(stage: Step, frame: pl.DataFrame, views: dict[str, str]) -> pl.DataFrame:
    shown, kept = _viewed(frame, views)
    if shown is frame:
        return stage(frame)
    out = stage(shown)
    return out.drop([name for name in views if name in out.columns and name != views[name]]).rename({v: k for k, v in kept.items()})


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


def _progress(label: str, position: str, total: int, unit: str, progress: bool | str) -> StageProgress:
    return StageProgress(label, position, total, unit, progress)


def run_pipeline(
    loaded: LoadedRecipe,
    out: Path,
    *,
    force: bool = False,
    progress: bool | str = True,
    backend_factory: Callable[[], Backend] | None = None,
    runner: "ShardRunner | None" = None,
) -> RunResult:
    recipe = loaded.recipe
    runner = runner or LocalRunner()
    # What bad input can break (templates, stage files) fails here, before the output is touched.
    prompts = expand_prompts(loaded)
    stages = build_steps(loaded)
    run = RunDir(out)
    manifest = run.prepare(loaded.fingerprint(), force, resolved_recipe(loaded))
    try:
        return _run(loaded, run, manifest, prompts, stages, runner, backend_factory, progress)
    finally:
        run.release()


def _run(loaded: LoadedRecipe, run: RunDir, manifest: dict[str, Any], prompts: pl.DataFrame, stages: list[Step], runner: "ShardRunner", backend_factory, progress) -> RunResult:
    recipe, out = loaded.recipe, run.out
    manifest.update(recipe=recipe.name, recipe_path=str(loaded.path))
    atomic_write_parquet(run.root / "prompts.parquet", prompts)
    size = recipe.execution.shard_size
    shards = [prompts.slice(i, size) for i in range(0, prompts.height, size)]
    manifest["prompts"] = prompts.height
    manifest["shards"] = len(shards)
    run.write_manifest(manifest)

    labels = ["generate"] + [s.label for s in stages]
    keys = [manifest["fingerprint"]] + loaded.stage_keys()
    current = {run.stage_dir(i, label).name for i, label in enumerate(labels)}
    for old in (run.root / "stages").glob("*") if (run.root / "stages").exists() else []:
        if old.name not in current:  # a stage that was removed or moved
            remove_stage_files(old)
    manifest["stages"] = {label: e for label, e in manifest["stages"].items() if label in labels}
    for index, label in enumerate(labels):
        entry = manifest["stages"].get(label)
        if entry is None or entry.get("key") != keys[index] or entry.get("index") != index:
            # A new or changed stage (or one before it changed): its old shards are stale.
            remove_stage_files(run.stage_dir(index, label))
            entry = manifest["stages"][label] = {"index": index, "key": keys[index], "shards": {}}
        # The shards to compute, each with the key of the input it is computed from.
        global_input = index > 0 and isinstance(stages[index - 1], RunStep)
        keys_now = {j: shard_key(manifest, labels, index, j, shards, global_input) for j in range(len(shards))}
        todo = {j: key for j, key in keys_now.items() if not run.shard_done(index, label, j, entry["shards"].get(str(j)), key)}
        if index == 0:
            open_backend = backend_factory or partial(_open_backend, recipe.backend, recipe.sampling_seed, loaded.path)
            _run_generate(loaded, run, manifest, shards, todo, runner, open_backend, progress)
            continue
        stage = stages[index - 1]
        try:
            _run_filter(stage, recipe.stages[index - 1], index, labels, run, manifest, len(shards), todo, progress, runner)
        finally:
            stage.close()  # a step that holds a model (judge, llm) releases it here

    last = [run.shard_path(len(labels) - 1, labels[-1], j) for j in range(len(shards))]
    stage_stats = summarize(manifest, labels)
    rows, output_stats = build_output(last, recipe.output, labels)
    written = write_dataset(rows, out, loaded, stage_stats, manifest.get("model"), output_stats)
    manifest["output"] = output_stats
    manifest["complete"] = True
    manifest["rows_written"] = written
    run.write_manifest(manifest)
    pairs = None
    if recipe.input is not None and recipe.output.format == "counterexamples":
        from datagen.counterexamples.output import write_pairs

        pairs = write_pairs(out, loaded)
    write_report(out)
    return RunResult(out=out, rows_written=written, stage_stats=stage_stats, pairs_written=pairs)


def shard_key(manifest: dict[str, Any], labels: list[str], index: int, j: int, shards: list[pl.DataFrame], global_input: bool) -> str:
    """What shard j of a stage is computed from: the stage's key and the content of its input, the
    prompt shard for generate, else the previous stage's shard (every one of them for a stage that
    fits on the whole run, like dedup, whose verdicts in one shard depend on all the others)."""
    stage_key = manifest["stages"][labels[index]]["key"]
    if index == 0:
        return content_key(stage_key, *shards[j]["prompt_id"])
    previous = manifest["stages"][labels[index - 1]]["shards"]
    sources = range(len(shards)) if global_input else [j]
    return content_key(stage_key, *(previous.get(str(i), {}).get("digest", "missing") for i in sources))


def _open_backend(config: BackendConfig, seed: int, source: Path) -> Backend:
    try:
        return make_backend(config, seed)
    except DatagenError as err:
        if err.source is None:
            err.source = str(source)
        raise
    except Exception as err:  # noqa: BLE001 - engines fail in many ways; the user needs one line
        raise DatagenError(f"cannot start the {config.kind} backend for {config.model!r}: {first_line(err)}", source, "backend.model") from err


# A column of the runner's output rows: the row's request failed for a transient reason (connection,
# timeout, 408/429/5xx after retries), so its shard is not finished (see _run_generate).
TRANSIENT = "_transient"


class _Recorder:
    """A backend as it is, that also remembers which requests of its last call failed transiently.
    An Outage (every request failed transiently) becomes rows too: the executor records the shard
    as unfinished and then stops the run (_run_generate), also when the shard came from a Ray worker."""

    def __init__(self, backend: Backend):
        self.backend, self.model_name, self.transient = backend, backend.model_name, []

    def generate(self, requests, sampling):
        try:
            generations = self.backend.generate(requests, sampling)
        except Outage as err:
            generations = err.generations
        self.transient = [bool(getattr(g, "transient", False)) for g in generations]
        return generations

    def close(self) -> None:
        self.backend.close()


def generate_candidates(prompts: pl.DataFrame, backend: Backend, sampling, sampling_seed: int, kind: str) -> pl.DataFrame:
    """`generate_shard`'s candidate rows plus the TRANSIENT column."""
    recorder = _Recorder(backend)
    frame = generate_shard(prompts, recorder, sampling, sampling_seed, kind)
    failed = [pid for pid, transient in zip(prompts["prompt_id"], recorder.transient) if transient]
    return frame.with_columns(pl.col("prompt_id").is_in(failed).alias(TRANSIENT))


class ShardRunner(Protocol):
    """Computes stage outputs for a list of shards, yielding each as it is done (in any order);
    the executor writes, counts and records them. LocalRunner here, RayRunner in ray_executor."""

    def generate(
        self, open_backend: Callable[[], Backend], backend: BackendConfig, sampling_seed: int, shards: list[tuple[int, pl.DataFrame]]
    ) -> Iterator[tuple[int, pl.DataFrame, float]]:
        """(shard, candidates with the TRANSIENT column, seconds) per prompt shard (or its pending prompts)."""
        ...

    def filter(self, stage: Step, config: StageConfigBase, sources: list[tuple[int, Path]]) -> Iterator[tuple[int, pl.DataFrame, pl.DataFrame, float]]:
        """(shard, before, after, seconds) per input shard file; `stage` is already fitted."""
        ...


class LocalRunner:
    """One shard after another, in this process."""

    def generate(self, open_backend, backend: BackendConfig, sampling_seed: int, shards):
        if not shards:
            return
        loading = time.perf_counter()
        engine = open_backend()
        loading = time.perf_counter() - loading  # counted in the first shard's time: stage times include model loading
        try:
            for j, prompts in shards:
                start = time.perf_counter()
                frame = generate_candidates(prompts, engine, backend.sampling, sampling_seed, backend.kind)
                yield j, frame, time.perf_counter() - start + loading
                loading = 0.0
        finally:
            engine.close()

    def filter(self, stage: Step, config: StageConfigBase, sources):
        for j, source in sources:
            start = time.perf_counter()
            before = pl.read_parquet(source)
            after = apply_stage(stage, before, config)
            yield j, before, after, time.perf_counter() - start


def _run_generate(loaded, run: RunDir, manifest, shards, todo, runner: ShardRunner, open_backend, progress) -> None:
    """Generate the shards in `todo`. A shard whose earlier run left prompts `pending` (their
    requests failed for a transient reason) only sends those prompts again and adds their rows to
    the ones it kept, so every prompt ends up in its shard exactly once."""
    recipe = loaded.recipe
    done = manifest["stages"]["generate"]["shards"]
    n_stages = len(recipe.stages) + 1
    kept: dict[int, pl.DataFrame] = {}
    inputs = []
    for j, key in todo.items():
        record = done.get(str(j)) or {}
        path = run.shard_path(0, "generate", j)
        if record.get("key") == key and record.get("pending") and path.is_file() and file_digest(path) == record.get("digest"):
            kept[j] = pl.read_parquet(path)
            inputs.append((j, shards[j].filter(pl.col("prompt_id").is_in(record["pending"]))))
        else:
            inputs.append((j, shards[j]))
    sizes = {j: frame.height for j, frame in inputs}
    results = runner.generate(open_backend, recipe.backend, recipe.sampling_seed, inputs)
    with _progress("generate", f"[1/{n_stages}]", sum(sizes.values()), "prompt", progress) as bar, closing(results):
        for j, frame, seconds in results:
            retry = frame.filter(pl.col(TRANSIENT))
            frame = frame.filter(~pl.col(TRANSIENT)).drop(TRANSIENT)
            tokens = int(frame["completion_tokens"].sum())  # generated now (a partial shard's kept rows were counted before)
            if j in kept:
                frame, seconds = _in_prompt_order(pl.concat([kept[j], frame], how="diagonal_relaxed"), shards[j]), seconds + done[str(j)]["seconds"]
            if frame.height:
                manifest["model"] = frame["model"][0]
            digest = atomic_write_parquet(run.shard_path(0, "generate", j), frame)
            record = shard_stats("generate", shards[j], frame, seconds) | {"key": todo[j], "digest": digest}
            if retry.height:  # not finished: the next run sends exactly these prompts again
                record |= {"pending": sorted(set(retry["prompt_id"])), "pending_error": retry["generate_error"][0]}
            done[str(j)] = record
            run.write_manifest(manifest)
            bar.update(sizes[j], tokens=tokens)
            if retry["prompt_id"].n_unique() == sizes[j]:  # every request failed: the server is gone
                raise DatagenError(
                    f"every one of {sizes[j]} requests failed ({record['pending_error']}); rerun the same command to resume",
                    recipe.backend.base_url or loaded.path,
                    "backend.base_url" if recipe.backend.base_url else "backend",
                )
    pending = {j: record for j, record in done.items() if record.get("pending")}
    if pending:
        count = sum(len(record["pending"]) for record in pending.values())
        first = pending[min(pending, key=int)]["pending_error"]
        raise DatagenError(
            f"{count} prompt(s) in {len(pending)} shard(s) failed for a transient reason ({first}); "
            "rerun the same command to send exactly those again",
            recipe.backend.base_url or loaded.path,
            "backend",
        )


def _in_prompt_order(frame: pl.DataFrame, prompts: pl.DataFrame) -> pl.DataFrame:
    """Rows grouped by prompt in the shard's prompt order, samples in their order within a prompt."""
    position = {pid: i for i, pid in enumerate(prompts["prompt_id"])}
    order = pl.col("prompt_id").replace_strict(position, return_dtype=pl.Int64)
    return frame.with_columns(order.alias("_position")).sort(["_position", "sample_index"], maintain_order=True).drop("_position")


def _run_filter(stage: Step, config: StageConfigBase, index: int, labels: list[str], run: RunDir, manifest, n_shards: int, todo, progress, runner: ShardRunner) -> None:
    label, templates = stage.label, config.templates
    done = manifest["stages"][label]["shards"]
    previous = [run.shard_path(index - 1, labels[index - 1], j) for j in range(n_shards)]
    if hasattr(stage, "use_cache"):  # the judge keeps its verdicts, so a changed keep rule asks no model again
        stage.use_cache(run.root / "cache" / label)
    if todo and isinstance(stage, RunStep):
        # Steps with state over the run (dedup, collapse) see every alive row before any shard.
        views = config.views()
        stage.fit(lambda: (_viewed(pl.read_parquet(p).filter(_selected(templates)), views)[0] for p in previous))
    inputs = [previous[j] for j in todo]
    total = sum(pl.scan_parquet(p).filter(_selected(templates)).select(pl.len()).collect().item() for p in inputs)  # rows still alive
    results = runner.filter(stage, config, list(zip(todo, inputs)))
    with _progress(label, f"[{index + 1}/{len(labels)}]", total, "row", progress) as bar, closing(results):
        for j, before, after, seconds in results:
            digest = atomic_write_parquet(run.shard_path(index, label, j), after)
            done[str(j)] = shard_stats(label, before, after, seconds) | {"key": todo[j], "digest": digest}
            run.write_manifest(manifest)
            bar.update(before.filter(_selected(templates)).height)
    if todo or "summary" not in manifest["stages"][label]:
        outputs = pl.scan_parquet([run.shard_path(index, label, j) for j in range(n_shards)])
        summary = stage.summarize(_viewed_lazy(outputs, config.views()))
        if summary is not None:
            manifest["stages"][label]["summary"] = summary
            run.write_manifest(manifest)


def _viewed_lazy(outputs: pl.LazyFrame, views: dict[str, str]) -> pl.LazyFrame:
    moved = {name: source for name, source in views.items() if name != source}
    return outputs.with_columns(pl.col(source).alias(name) for name, source in moved.items()) if moved else outputs


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
