"""The generation step: prompt shards -> candidate rows from one engine, each shard written and
recorded as soon as it is done. A shard whose requests failed for a transient reason stays pending
and a rerun sends exactly those prompts again."""

from __future__ import annotations

import time
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import polars as pl

from datagen.errors import DatagenError, first_line
from datagen.llm import Backend, make_backend
from datagen.llm.base import Outage, stream
from datagen.llm.generate import candidate_rows, generate_shard, shard_requests
from datagen.rows import BackendConfig
from datagen.run.progress import StageProgress
from datagen.run.run_dir import RunDir, atomic_write_parquet, file_digest
from datagen.run.stats import shard_stats

if TYPE_CHECKING:
    from datagen.run.executor import ShardRunner


def open_backend(config: BackendConfig, seed: int, source: Path) -> Backend:
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
    return frame.with_columns(*generation_tokens(), pl.col("prompt_id").is_in(failed).alias(TRANSIENT))


def generation_tokens() -> list[pl.Expr]:
    """generate_prompt_tokens / generate_completion_tokens, the token columns every model step
    writes (datagen/run/tokens.py): a request's prompt is counted once, on its first sample, so
    that the columns sum to what the backend counted."""
    first = pl.col("sample_index") == 0
    return [
        pl.when(first).then(pl.col("prompt_tokens")).otherwise(0).fill_null(0).alias("generate_prompt_tokens"),
        pl.col("completion_tokens").fill_null(0).alias("generate_completion_tokens"),
    ]


def generate_locally(open_backend: Callable[[], Backend], backend: BackendConfig, sampling_seed: int, shards: list[tuple[int, pl.DataFrame]]) -> Iterator[tuple[int, pl.DataFrame, float]]:
    """LocalRunner.generate: one engine for all the shards, fed continuously (datagen.llm.base.stream):
    the next shard's requests join the engine while the current one's last completions run, and a
    shard is yielded (to be written and recorded) as soon as its last request is done. A shard's
    seconds are the wall time since the previous shard was done (the first's include loading the
    model), so that they add up to the stage's wall time."""
    if not shards:
        return
    since = time.perf_counter()  # counted in the first shard's time: stage times include model loading
    engine = open_backend()
    prompts = dict(shards)
    requests: dict[int, list] = {}  # of the shards given to the engine and not yet done

    def batches():
        for j, frame in shards:
            requests[j] = shard_requests(frame, backend.sampling, sampling_seed)
            yield j, requests[j], backend.sampling

    try:
        with closing(stream(engine, batches())) as done:
            for j, generations in done:
                frame = candidate_rows(prompts[j], requests.pop(j), generations, engine.model_name, backend.sampling, sampling_seed, backend.kind)
                transient = [pid for pid, g in zip(prompts.pop(j)["prompt_id"], generations) if g.transient]
                frame = frame.with_columns(*generation_tokens(), pl.col("prompt_id").is_in(transient).alias(TRANSIENT))
                now = time.perf_counter()
                yield j, frame, now - since
                since = now
    finally:
        engine.close()


def run_generate(loaded, run: RunDir, manifest, shards, todo, runner: "ShardRunner", open_backend, progress) -> None:
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
    outage: DatagenError | None = None
    with StageProgress("generate", f"[1/{n_stages}]", sum(sizes.values()), "prompt", progress) as bar, closing(results):
        for j, frame, seconds in results:
            retry = frame.filter(pl.col(TRANSIENT))
            frame = frame.filter(~pl.col(TRANSIENT)).drop(TRANSIENT)
            tokens = int(frame["completion_tokens"].sum())  # generated now (a partial shard's kept rows were counted before)
            if j in kept:
                frame, seconds = in_prompt_order(pl.concat([kept[j], frame], how="diagonal_relaxed"), shards[j]), seconds + done[str(j)]["seconds"]
            if frame.height:
                manifest["model"] = frame["model"][0]
            digest = atomic_write_parquet(run.shard_path(0, "generate", j), frame)
            record = shard_stats("generate", shards[j], frame, seconds) | {"key": todo[j], "digest": digest}
            if retry.height:  # not finished: the next run sends exactly these prompts again
                record |= {"pending": sorted(set(retry["prompt_id"])), "pending_error": retry["generate_error"][0]}
            done[str(j)] = record
            run.write_manifest(manifest)
            bar.update(sizes[j], tokens=tokens)
            if retry["prompt_id"].n_unique() == sizes[j] and outage is None:  # every request failed: the server is gone
                outage = DatagenError(
                    f"every one of {sizes[j]} requests failed ({record['pending_error']}); rerun the same command to resume",
                    recipe.backend.base_url or loaded.path,
                    "backend.base_url" if recipe.backend.base_url else "backend",
                )
                # In this process the stream takes no new shard after an outage (datagen.llm.base.stream):
                # the shards already sent are recorded before the run stops, so no answer is lost.
                # Another runner (Ray) would go on through every shard: it stops here.
                if runner.generate is not generate_locally:
                    raise outage
    if outage is not None:
        raise outage
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


def in_prompt_order(frame: pl.DataFrame, prompts: pl.DataFrame) -> pl.DataFrame:
    """Rows grouped by prompt in the shard's prompt order, samples in their order within a prompt."""
    position = {pid: i for i, pid in enumerate(prompts["prompt_id"])}
    order = pl.col("prompt_id").replace_strict(position, return_dtype=pl.Int64)
    return frame.with_columns(order.alias("_position")).sort(["_position", "sample_index"], maintain_order=True).drop("_position")
