"""Ray executor: the local executor's run, with each stage's shards fanned out to Ray Data.

`run_pipeline_ray` is `run_pipeline` with a `RayRunner`: the driver keeps everything the local
executor does (run directory, manifest and resume, `fit` of global stages, per-shard stats,
`summarize`, writer, report) and Ray only computes shard outputs:

- generation: `map_batches` over an actor pool when the backend is vLLM: each actor opens one
  engine on `tensor_parallel_size` GPUs (one engine per GPU by default; a single actor on a
  machine without GPUs) and generates whole shards; other backends get one actor per CPU.
- filters: `map_batches` per stage over an actor pool: each actor builds the stage once (from its
  config, or as shipped from the driver) and keeps it for the stage's shards; one actor per CPU,
  per GPU for a stage on GPUs, or per engine for a stage that holds a vLLM engine (judge, revise).
  Everything a worker holds belongs to its actor, which ends with the stage's map.
  A stage with global state (`fit`: dedup, collapse) is fitted on the driver over every alive row
  of the run, exactly as locally, and the fitted stage is what the workers get, so its verdicts
  are global rather than per block.
- one Ray block is one shard, and a batch is a whole block, so all samples of a prompt are in
  the same batch as the stage contract requires. Outputs carry their shard number and row count,
  so the driver reassembles a shard even if Ray splits a large output block.

Only the driver touches the output directory: shard inputs travel through Ray's object store,
so workers on other machines need no shared filesystem.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from datagen.llm import Backend
from datagen.errors import DatagenError, first_line
from datagen.run.executor import RunResult, apply_stage, run_pipeline
from datagen.run.generation import generate_candidates
from datagen.recipe import LoadedRecipe
from datagen.rows import BackendConfig, SamplingConfig
from datagen.steps import RunStep, StageConfigBase, Step

SHARD, ROWS, SECONDS = "_ray_shard", "_ray_rows", "_ray_seconds"
_TAGS = [SHARD, ROWS, SECONDS]


def _to_arrow(frame: pl.DataFrame):
    # Plain large_string/large_list types: every Ray and Arrow version handles them, and polars
    # reads them back as the same dtypes, so a shard's Parquet is the same as the local executor's.
    return frame.to_arrow(compat_level=pl.CompatLevel.oldest())


def _tagged(frame: pl.DataFrame, shard: int, seconds: float):
    return _to_arrow(
        frame.with_columns(
            pl.lit(shard, pl.Int64).alias(SHARD), pl.lit(frame.height, pl.Int64).alias(ROWS), pl.lit(seconds, pl.Float64).alias(SECONDS)
        )
    )


def _shards_of(table) -> Iterator[tuple[int, pl.DataFrame]]:
    """A block is one shard; should Ray ever hand over several, each is still processed on its own."""
    frame = pl.from_arrow(table)
    for part in frame.partition_by(SHARD, maintain_order=True):
        yield int(part[SHARD][0]), part.drop(SHARD)


def _generate(table, backend: Backend, sampling: SamplingConfig, sampling_seed: int, kind: str) -> Iterator[Any]:
    for shard, prompts in _shards_of(table):
        start = time.perf_counter()
        frame = generate_candidates(prompts, backend, sampling, sampling_seed, kind)  # with TRANSIENT: the driver keeps shards unfinished
        yield _tagged(frame, shard, time.perf_counter() - start)


def _apply(table, stage: Step, config: StageConfigBase) -> Iterator[Any]:
    for shard, before in _shards_of(table):
        start = time.perf_counter()
        after = apply_stage(stage, before, config)
        yield _tagged(after, shard, time.perf_counter() - start)


def _build_stage(source: StageConfigBase | list) -> Step:
    """From its config, or (a one-item list holding its ObjectRef) as fitted on the driver."""
    if isinstance(source, list):
        import ray

        return ray.get(source[0])
    return source.build()


class GenerateWorker:
    """An actor that holds one backend (a vLLM engine on its GPUs, or any other backend) for every
    shard it gets; it lives as long as the stage's map, so nothing outlives the stage."""

    def __init__(self, open_backend: Callable[[], Backend], sampling: SamplingConfig, sampling_seed: int, kind: str):
        # Opened on the first shard, not here: Ray reports an error raised in a constructor as a
        # dead actor (and retries it), while one raised in a call reaches the driver as it is.
        self.open_backend, self.backend = open_backend, None
        self.args = (sampling, sampling_seed, kind)

    def __call__(self, table) -> Iterator[Any]:
        if self.backend is None:
            self.backend = self.open_backend()
        yield from _generate(table, self.backend, *self.args)


class StageWorker:
    """An actor that holds one built stage (a judge's engine, an encoder, compiled checks) for
    every shard it gets, for as long as the stage's map runs."""

    def __init__(self, source: StageConfigBase | list, config: StageConfigBase):
        self.source, self.stage = source, None  # built on the first shard, as GenerateWorker does
        self.config = config

    def __call__(self, table) -> Iterator[Any]:
        if self.stage is None:
            self.stage = _build_stage(self.source)
        yield from _apply(table, self.stage, self.config)


def _uses_vllm(backend: BackendConfig | None) -> bool:
    return backend is not None and backend.kind == "vllm"


def _gpus_per_engine(backend: BackendConfig) -> int:
    engine = backend.engine
    return max(1, int(engine.get("tensor_parallel_size", 1)) * int(engine.get("pipeline_parallel_size", 1)))


def _user_error(err: BaseException) -> BaseException:
    """The DatagenError a worker raised, out of Ray's wrappers (so the CLI prints its one line)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        wrapped = getattr(current, "cause", None)  # a RayTaskError: also an instance of its cause's class
        if wrapped is None and isinstance(current, DatagenError):
            return current
        current = wrapped or current.__cause__
    return err


class RayRunner:
    """Computes shard outputs on Ray; used by `run_pipeline` in place of the in-process loop.

    `address`: None starts a local Ray (with `num_cpus` CPUs, default all); "auto" or "HEAD:6379"
    joins a running cluster (`ray start`). A Ray already initialized in this process is used as it
    is and left running.
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None, workers: int | None = None):
        self.address = address
        self.num_cpus = num_cpus
        self.workers = workers  # parallelism of every stage; default: from the cluster's resources
        self._owns_ray = False

    def __enter__(self) -> "RayRunner":
        try:
            import ray
        except ImportError:
            raise DatagenError("the Ray executor needs Ray: pip install 'datagen[ray]' (install.sh installs it)", field="--executor") from None
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
            if self.address is None:
                kwargs["num_cpus"] = self.num_cpus
            try:
                ray.init(address=self.address, **kwargs)
            except (ConnectionError, ValueError, RuntimeError) as err:
                raise DatagenError(f"cannot connect to Ray at {self.address!r}: {first_line(err)}", field="--address") from err
            self._owns_ray = True
        from ray.data import DataContext

        context = DataContext.get_current()
        context.enable_progress_bars = False  # the executor shows its own per-stage progress
        context.print_on_execution_start = False
        # A failed shard is raised to the caller (the CLI prints its one line); Ray Data would also
        # log its traceback, and a warning that its own progress bars are off.
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)
        return self

    def __exit__(self, *exc) -> None:
        if self._owns_ray:
            import ray

            ray.shutdown()
            self._owns_ray = False

    # --- the two hooks run_pipeline calls -------------------------------------------------

    def generate(
        self, open_backend: Callable[[], Backend], backend: BackendConfig, sampling_seed: int, shards: list[tuple[int, pl.DataFrame]]
    ) -> Iterator[tuple[int, pl.DataFrame, float]]:
        if not shards:
            return
        args = (open_backend, backend.sampling, sampling_seed, backend.kind)
        engine = backend if _uses_vllm(backend) else None
        yield from self._map(shards, GenerateWorker, args, self._resources(len(shards), engine))

    def filter(self, stage: Step, config: StageConfigBase, sources: list[tuple[int, Path]]) -> Iterator[tuple[int, pl.DataFrame, pl.DataFrame, float]]:
        if not sources:
            return
        import ray

        backend = stage.engine or config.model_backend(None)
        engine = backend if isinstance(backend, BackendConfig) and _uses_vllm(backend) else None
        fitted = isinstance(stage, RunStep)
        gpu = str(getattr(config, "device", "cpu")).startswith("cuda") and not fitted
        # A stage with global state was fitted on the driver over the whole run: ship that state,
        # never refit per block; a step built with the run's context (an LLM step: the generator's
        # model, the sampling seed), which has not opened its model yet: ship it too.
        # Any other stage is rebuilt from its config where it runs.
        source = [ray.put(stage)] if fitted or config.needs_context else config
        paths = dict(sources)
        inputs = ((j, pl.read_parquet(path)) for j, path in sources)
        for j, after, seconds in self._map(inputs, StageWorker, (source, config), self._resources(len(sources), engine, gpu)):
            yield j, pl.read_parquet(paths[j]), after, seconds

    # --- internals -----------------------------------------------------------------------

    def _resources(self, shards: int, engine: BackendConfig | None = None, gpu: bool = False) -> dict[str, Any]:
        """Parallelism and per-worker resources: one actor per engine's GPUs for a model on GPUs,
        a single actor for vLLM without GPUs (its CPU build uses every core), else one actor per CPU."""
        import ray

        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
        if engine is not None and gpus:
            per = _gpus_per_engine(engine)
            if per > gpus:
                raise DatagenError(f"an engine needs {per} GPUs and the Ray cluster has {gpus}", field="backend.engine.tensor_parallel_size")
            size, ask = gpus // per, {"num_gpus": per}
        elif engine is not None:
            size, ask = 1, {}
        elif gpu and gpus:
            size, ask = gpus, {"num_gpus": 1}
        else:
            size, ask = cpus, {}
        return {"size": max(1, min(self.workers or size, shards)), "num_cpus": 1, **ask}

    def _map(self, inputs: Iterable[tuple[int, pl.DataFrame]], worker: type, args: tuple, resources: dict[str, Any]) -> Iterator[tuple[int, pl.DataFrame, float]]:
        """The shards through a pool of `worker` actors (built with `args`), each holding what it
        opened for the length of this map: no state outlives a stage in a Ray worker process."""
        import ray
        from ray.data import ActorPoolStrategy

        refs = [ray.put(_to_arrow(frame.with_columns(pl.lit(j, pl.Int64).alias(SHARD)))) for j, frame in inputs]
        compute = ActorPoolStrategy(size=resources.pop("size"))
        dataset = ray.data.from_arrow_refs(refs).map_batches(worker, batch_size=None, batch_format="pyarrow", fn_constructor_args=args, compute=compute, **resources)
        pieces: dict[int, list[pl.DataFrame]] = {}
        try:
            for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                for part in pl.from_arrow(table).partition_by(SHARD, maintain_order=True):
                    j = int(part[SHARD][0])
                    got = pieces.setdefault(j, [])
                    got.append(part)
                    if sum(p.height for p in got) == part[ROWS][0]:
                        whole = pl.concat(pieces.pop(j))
                        yield j, whole.drop(_TAGS), float(whole[SECONDS][0])
        except Exception as err:
            cause = _user_error(err)
            if cause is err:
                raise
            raise cause from None
        if pieces:
            raise RuntimeError(f"Ray returned incomplete shards {sorted(pieces)}")


def run_pipeline_ray(
    loaded: LoadedRecipe,
    out: Path,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    workers: int | None = None,
    **kwargs: Any,
) -> RunResult:
    """`run_pipeline` on Ray Data; same run directory, same rows (see the module docstring).

    Raises DatagenError for a recipe with `output.target_rows`: a target run goes wave after wave
    of shards with steps fitted per shard on the shards before it (datagen.run.target), which
    only the local executor does."""
    if loaded.recipe.output.target_rows is not None:
        raise DatagenError("a run to a target goes shard after shard; run it without --executor ray", loaded.path, "output.target_rows")
    with RayRunner(address, num_cpus, workers) as runner:
        return run_pipeline(loaded, out, runner=runner, **kwargs)
