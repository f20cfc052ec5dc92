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

from datagen.errors import DatagenError
from datagen.llm import Backend
from datagen.outputs import build_output
from datagen.llm.generate import prompts_frame
from datagen.llm.base import stream
from datagen.run.console import EngineOutput
from datagen.run.engines import EnginePool
from datagen.run.generation import generate_locally, open_backend, run_generate
from datagen.run.progress import StageProgress
from datagen.run.stats import shard_stats, summarize
from datagen.run.target import Outcome, Target, run_to_target, stderr_line
from datagen.run.tokens import step_models, usage_record
from datagen.recipe import LoadedRecipe
from datagen.report.html import write_report
from datagen.run.run_dir import RunDir, resolved_recipe, atomic_write_parquet, content_key, remove_stage_files
from datagen.rows import BackendConfig
from datagen.steps import RunStep, StageConfigBase, Step, StepContext
from datagen.sources.templates import expand
from datagen.outputs.writer import write_dataset


def expand_prompts(loaded: LoadedRecipe) -> pl.DataFrame:
    """Every prompt of the run, template entry after template entry: rendered templates (their
    slots may draw from data sources), or a data source's rows as prompts (`from:`), streamed
    batch by batch. With data sources, every prompt has `source_ids`; with sampling slots, the
    drawn parameters' columns (`temperature`), null where the recipe's own apply."""
    if loaded.recipe.input is not None:  # prompts from clusters of failures, not from slot vocabularies
        from datagen.counterexamples.expand import counterexample_prompts

        return counterexample_prompts(loaded)
    from datagen.sources.prompts import source_prompts
    from datagen.sources.slots import SAMPLED

    recipe = loaded.recipe
    extra: dict[str, pl.DataType] = {}
    if recipe.data:
        extra["source_ids"] = pl.List(pl.String)
    samplings = [use.sampling or (loaded.templates[use.name].sampling if use.source is None else None) for use in recipe.templates]
    extra |= {name: pl.Float64 for name in SAMPLED if any(s is not None and getattr(s, name) is not None for s in samplings)}
    frames: list[pl.DataFrame] = []
    for use in recipe.templates:
        if use.source is not None:
            frames.extend(source_prompts(use, loaded.sources[use.source], recipe.seed, extra))
            continue
        rows = expand(loaded.templates[use.name], use.count, recipe.seed, loaded.sources, use.sampling)
        if "source_ids" in extra:
            for row in rows:
                row.setdefault("source_ids", [])
        frames.append(prompts_frame(rows, extra))
    return pl.concat(frames, how="vertical", rechunk=False) if len(frames) > 1 else frames[0]  # no copy: the chunks as they are


def build_steps(loaded: LoadedRecipe) -> list[Step]:
    """Every step of the recipe, built with the run's context; building reads the files a step
    needs (dedup's reference, a rubric) and opens no model."""
    recipe = loaded.recipe
    context = StepContext(recipe.backend, recipe.sampling_seed, str(loaded.path), recipe.input, recipe.budget, recipe.seed, loaded.counterexample_plan())
    steps = []
    for i, config in enumerate(recipe.stages):
        try:
            steps.append(config.build_step(context))
        except DatagenError as err:
            if err.source is None and not (err.field or "").startswith("stages"):  # about the step's own config
                err.field = f"stages.{i}" + (f".{err.field}" if err.field else "")
            raise loaded.blame(err) from None
    return steps


@dataclass
class RunResult:
    out: Path
    rows_written: int
    stage_stats: list[dict[str, Any]] = field(default_factory=list)
    pairs_written: int | None = None  # counterexample runs: fix/failure DPO pairs in OUT/pairs (None: not built)
    target: Outcome | None = None  # a target run: where it stopped (datagen.run.target)


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
    engines: EnginePool | None = None,
    verbose: bool = False,
) -> RunResult:
    """`engines`: an engine pool the caller owns and keeps open across runs (a notebook or a test
    session running several recipes of one model starts its engine once); the run starts by
    emptying their prefix caches and leaves them open, unless it fails (then it closes them).
    Default: a pool of the run's own, closed when the run ends. Either way, what the
    engines print goes to OUT/run/engine.log during the run unless `verbose`. `backend_factory`
    opens the generator's backend outside the pool (tests, benchmarks)."""
    runner = runner or LocalRunner()
    # What bad input can break (templates, stage files) fails here, before the output is touched.
    prompts = expand_prompts(loaded)
    stages = build_steps(loaded)
    Target.of(loaded)  # a target the recipe cannot have
    run = RunDir(out)
    manifest = run.prepare(loaded.fingerprint(), force, resolved_recipe(loaded))
    owned = engines is None
    engines = EnginePool() if owned else engines
    if isinstance(runner, LocalRunner):  # one engine per model for the whole run (Ray actors hold their own)
        engines.share(stages)
        if backend_factory is None:
            backend_factory = engines.opener(loaded.recipe.backend, partial(open_backend, loaded.recipe.backend, loaded.recipe.sampling_seed, loaded.path))
    try:
        with engines.routed_to(EngineOutput(None if verbose else run.root / "engine.log")):
            if not owned:
                engines.forget()
            try:
                return _run(loaded, run, manifest, prompts, stages, runner, backend_factory, progress)
            except BaseException:
                if not owned:  # an engine the failed run used may be in any state: the next run starts its own
                    engines.close()
                raise
            finally:
                if owned:
                    engines.close()
    finally:
        run.release()


def _run(loaded: LoadedRecipe, run: RunDir, manifest: dict[str, Any], prompts: pl.DataFrame, stages: list[Step], runner: "ShardRunner", backend_factory, progress) -> RunResult:
    recipe, out = loaded.recipe, run.out
    target = Target.of(loaded)
    available = prompts.height
    if target is not None:
        prompts = target.stream(prompts)  # templates interleaved, cut to the budget
        if prompts.height == 0:
            raise DatagenError("no prompt to generate from", loaded.path, "templates")
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
            manifest["stages"][label] = {"index": index, "key": keys[index], "shards": {}}
    opener = backend_factory or partial(open_backend, recipe.backend, recipe.sampling_seed, loaded.path)
    context = _Shards(loaded, run, manifest, shards, stages, labels, runner, opener, progress)
    last = lambda j: run.shard_path(len(labels) - 1, labels[-1], j)  # noqa: E731
    build = lambda paths: build_output(paths, recipe.output, labels, seed=recipe.seed, source=str(loaded.path), data=loaded.sources.__getitem__)  # noqa: E731

    outcome = None
    if target is None:
        context.process(list(range(len(shards))))
        used = len(shards)
    else:
        # One engine for every wave, unless another step calls a model too: engines are then
        # started and closed wave by wave, one at a time, as in a run without a target (two vLLM
        # engines on one GPU would not fit).
        context.prefix, context.hold = True, len(step_models(loaded)) == 1
        held = context.opener = _HeldEngine(opener) if context.hold else opener
        say = None if progress in (False, "none") else stderr_line
        try:
            outcome = run_to_target(target, [s.height for s in shards], context.process, lambda j: build([last(j)])[0].height,
                                    context.figures, target.limit(available), say)
        finally:
            if isinstance(held, _HeldEngine):
                held.close()
            for stage in stages:
                stage.close()
        used = outcome.used
        context.summaries(used)
        manifest["target"] = outcome.record()
    if target is None:
        manifest.pop("target", None)  # left by an earlier run of this recipe to a target

    stage_stats = summarize(manifest, labels, used if target is not None else None)
    models = step_models(loaded)
    for entry in stage_stats:
        entry["model"] = models.get(entry["stage"])
    rows, output_stats = build([last(j) for j in range(used)])
    if target is not None:
        rows = rows.head(target.rows)
        output_stats |= {"rows": rows.height} if "rows" in output_stats else {}
        output_stats["target"] = manifest["target"]
    written = write_dataset(rows, out, loaded, stage_stats, manifest.get("model"), output_stats)
    manifest["output"] = output_stats
    manifest["tokens"] = usage_record(stage_stats, recipe.output.prices)
    manifest["complete"] = True
    manifest["rows_written"] = written
    run.write_manifest(manifest)
    pairs = None
    if recipe.input is not None and recipe.output.format == "counterexamples":
        from datagen.counterexamples.output import write_pairs

        pairs = write_pairs(out, loaded)
    write_report(out)
    return RunResult(out=out, rows_written=written, stage_stats=stage_stats, pairs_written=pairs, target=outcome)


class _HeldEngine:
    """An opener that starts the backend once and hands out a view whose close() keeps it open,
    so that a target run's waves share one engine; `close` ends it."""

    def __init__(self, opener: Callable[[], Backend]):
        self.opener, self.backend = opener, None

    def __call__(self) -> Backend:
        if self.backend is None:
            self.backend = self.opener()
        return _Unclosed(self.backend)

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None


class _Unclosed:
    def __init__(self, backend: Backend):
        self.backend, self.model_name = backend, backend.model_name

    def generate(self, requests, sampling):
        return self.backend.generate(requests, sampling)

    def stream(self, batches):
        return stream(self.backend, batches)

    def close(self) -> None:
        return None


@dataclass
class _Shards:
    """Runs given shards through every step. With `prefix` (a target run) a step that decides
    over the run is fitted per shard on the shards up to it, so that a shard's result does not
    depend on which shards came after it; with `hold` steps stay open between calls."""

    loaded: LoadedRecipe
    run: RunDir
    manifest: dict[str, Any]
    shards: list[pl.DataFrame]
    stages: list[Step]
    labels: list[str]
    runner: "ShardRunner"
    opener: Callable[[], Backend]
    progress: bool | str
    prefix: bool = False
    hold: bool = False

    def process(self, wave: list[int]) -> None:
        recipe, manifest, labels = self.loaded.recipe, self.manifest, self.labels
        for index, label in enumerate(labels):
            entry = manifest["stages"][label]
            global_input = index > 0 and isinstance(self.stages[index - 1], RunStep)
            keys_now = {j: shard_key(manifest, labels, index, j, self.shards, global_input, prefix=self.prefix) for j in wave}
            todo = {j: key for j, key in keys_now.items() if not self.run.shard_done(index, label, j, entry["shards"].get(str(j)), key)}
            if index == 0:
                run_generate(self.loaded, self.run, manifest, self.shards, todo, self.runner, self.opener, self.progress)
                continue
            stage = self.stages[index - 1]
            try:
                _run_filter(stage, recipe.stages[index - 1], index, labels, self.run, manifest, len(self.shards), todo, self.progress,
                            self.runner, prefix=self.prefix)
            finally:
                if not self.hold:
                    stage.close()  # a step that holds a model (judge, llm) releases it here

    def summaries(self, used: int) -> None:
        """Each step's figures over the shards a target run's rows come from."""
        for index, (stage, config) in enumerate(zip(self.stages, self.loaded.recipe.stages), start=1):
            paths = [self.run.shard_path(index, stage.label, j) for j in range(used)]
            summary = stage.summarize(_viewed_lazy(pl.scan_parquet(paths), config.views())) if paths else None
            entry = self.manifest["stages"][stage.label]
            if summary is None:
                entry.pop("summary", None)
            else:
                entry["summary"] = summary
        self.run.write_manifest(self.manifest)

    def figures(self, j: int) -> dict[str, float]:
        """A processed shard's candidates, tokens (every step) and seconds, for the yield estimate."""
        records = [self.manifest["stages"][label]["shards"].get(str(j), {}) for label in self.labels]
        return {
            "candidates": records[0].get("kept", 0),
            "tokens": sum(r.get("prompt_tokens", 0) + r.get("completion_tokens", 0) for r in records),
            "seconds": sum(r.get("seconds", 0.0) for r in records),
        }


def shard_key(manifest: dict[str, Any], labels: list[str], index: int, j: int, shards: list[pl.DataFrame], global_input: bool, prefix: bool = False) -> str:
    """What shard j of a stage is computed from: the stage's key and the content of its input, the
    prompt shard for generate, else the previous stage's shard (every one of them for a stage that
    fits on the whole run, like dedup, whose verdicts in one shard depend on all the others; in a
    target run (`prefix`) the shards up to j, which is all it is fitted on)."""
    stage_key = manifest["stages"][labels[index]]["key"]
    if index == 0:
        return content_key(stage_key, *shards[j]["prompt_id"])
    previous = manifest["stages"][labels[index - 1]]["shards"]
    sources = (range(j + 1) if prefix else range(len(shards))) if global_input else [j]
    return content_key(stage_key, *(previous.get(str(i), {}).get("digest", "missing") for i in sources))


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

    generate = staticmethod(generate_locally)

    def filter(self, stage: Step, config: StageConfigBase, sources):
        for j, source in sources:
            start = time.perf_counter()
            before = pl.read_parquet(source)
            after = apply_stage(stage, before, config)
            yield j, before, after, time.perf_counter() - start


def _run_filter(stage: Step, config: StageConfigBase, index: int, labels: list[str], run: RunDir, manifest, n_shards: int, todo, progress,
                runner: ShardRunner, prefix: bool = False) -> None:
    """Run a step on the shards in `todo`, writing and recording each. `prefix` (a target run):
    a step over the run is fitted for each shard on the shards up to it, and its figures are
    left to the end of the run (datagen.run.target)."""
    label, templates = stage.label, config.templates
    done = manifest["stages"][label]["shards"]
    previous = [run.shard_path(index - 1, labels[index - 1], j) for j in range(n_shards)]
    if hasattr(stage, "use_cache"):  # the judge keeps its verdicts, so a changed keep rule asks no model again
        stage.use_cache(run.root / "cache" / label)
    views = config.views()
    if todo and isinstance(stage, RunStep) and not prefix:
        # Steps with state over the run (dedup, collapse) see every alive row before any shard.
        stage.fit(lambda: (_viewed(pl.read_parquet(p).filter(_selected(templates)), views)[0] for p in previous))
    inputs = [previous[j] for j in todo]
    total = sum(pl.scan_parquet(p).filter(_selected(templates)).select(pl.len()).collect().item() for p in inputs)  # rows still alive
    if prefix and isinstance(stage, RunStep):
        results = _prefix_fitted(stage, config, previous, sorted(todo), runner)
    else:
        results = runner.filter(stage, config, list(zip(todo, inputs)))
    with _progress(label, f"[{index + 1}/{len(labels)}]", total, "row", progress) as bar, closing(results):
        for j, before, after, seconds in results:
            digest = atomic_write_parquet(run.shard_path(index, label, j), after)
            done[str(j)] = shard_stats(label, before, after, seconds) | {"key": todo[j], "digest": digest}
            run.write_manifest(manifest)
            bar.update(before.filter(_selected(templates)).height)
    if not prefix and (todo or "summary" not in manifest["stages"][label]):
        outputs = pl.scan_parquet([run.shard_path(index, label, j) for j in range(n_shards)])
        summary = stage.summarize(_viewed_lazy(outputs, config.views()))
        if summary is not None:
            manifest["stages"][label]["summary"] = summary
            run.write_manifest(manifest)


def _prefix_fitted(stage: RunStep, config: StageConfigBase, previous: list[Path], todo: list[int], runner: "ShardRunner"):
    """Shard after shard, `stage` fitted on every alive row of the shards up to that one."""
    templates, views = config.templates, config.views()
    for j in todo:
        stage.fit(lambda j=j: (_viewed(pl.read_parquet(p).filter(_selected(templates)), views)[0] for p in previous[: j + 1]))
        yield from runner.filter(stage, config, [(j, previous[j])])


def _viewed_lazy(outputs: pl.LazyFrame, views: dict[str, str]) -> pl.LazyFrame:
    moved = {name: source for name, source in views.items() if name != source}
    return outputs.with_columns(pl.col(source).alias(name) for name, source in moved.items()) if moved else outputs
