"""The generate stage: a shard of prompts in, one row per completion out, with provenance."""

from __future__ import annotations

import hashlib
import json

import polars as pl

from datagen.llm import Backend, ChatRequest, Generation
from datagen.rows import SamplingConfig

MESSAGE = pl.Struct({"role": pl.String, "content": pl.String})
PROMPT_SCHEMA = {
    "prompt_id": pl.String,
    "template_id": pl.String,
    "messages": pl.List(MESSAGE),
    "slots": pl.String,
    "persona": pl.String,
    "difficulty": pl.String,
    "topic": pl.String,
    "task_type": pl.String,
    "reference": pl.String,
    "tests": pl.String,
    "seed": pl.Int64,
}


CANDIDATE_SCHEMA = PROMPT_SCHEMA | {
    "candidate_id": pl.String,
    "sample_index": pl.Int64,
    "sample_seed": pl.Int64,
    "completion": pl.String,
    "finish_reason": pl.String,
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    "model": pl.String,
    "backend": pl.String,
    "sampling": pl.String,
    "generate_keep": pl.Boolean,
    "generate_reason": pl.String,
    "generate_error": pl.String,  # the backend's message when the request failed
    # Provenance as a tree (LLM steps add children, datagen/steps/llm.py): the row a step expanded
    # (first generation: the prompt), the parent row (none for first generation), ancestors' ids.
    "group_id": pl.String,
    "parent_id": pl.String,
    "lineage": pl.List(pl.String),
}
# The reason of a candidate whose request failed: a fixed token, since reasons are counted.
GENERATE_ERROR = "generate_error"
# Columns every candidate row has; stage verdict columns must not collide with them.
RESERVED_COLUMNS = frozenset(CANDIDATE_SCHEMA) | {"keep", "dropped_by"}


def prompts_frame(rows: list[dict], extra: dict[str, pl.DataType] | None = None) -> pl.DataFrame:
    """The prompt rows; `extra` declares provenance columns beyond PROMPT_SCHEMA (a counterexample's
    cluster, say), which generate_shard copies onto every candidate of the prompt."""
    clash = sorted(set(extra or {}) & RESERVED_COLUMNS)
    if clash:
        raise ValueError(f"extra prompt column {clash[0]!r} is a reserved candidate column")
    return pl.DataFrame(rows, schema=PROMPT_SCHEMA | (extra or {}))


def request_seed(sampling_seed: int, prompt_id: str) -> int:
    """A per-request seed: independent of batch composition, so shards reproduce on their own."""
    digest = hashlib.sha256(f"{sampling_seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


# Sampling parameters a prompt row may carry as its own (drawn per prompt: datagen.sources.slots);
# a null value, or no such column, means the recipe's.
PER_PROMPT_SAMPLING = ("temperature", "top_p")


def prompt_sampling(prompts: pl.DataFrame, sampling: SamplingConfig) -> list[SamplingConfig]:
    """Each prompt's sampling: the recipe's, with the prompt's own PER_PROMPT_SAMPLING values."""
    own = [name for name in PER_PROMPT_SAMPLING if name in prompts.columns]
    if not own:
        return [sampling] * prompts.height
    values = prompts.select(own).to_dicts()
    return [sampling.model_copy(update={k: v for k, v in row.items() if v is not None}) if any(v is not None for v in row.values()) else sampling for row in values]


def generate_shard(prompts: pl.DataFrame, backend: Backend, sampling: SamplingConfig, sampling_seed: int, backend_kind: str) -> pl.DataFrame:
    """One row per completion of each prompt (n per prompt; one row with the error for a failed
    request), with provenance. A prompt row's own `temperature` / `top_p` are applied to its
    request (ChatRequest.sampling), and recorded in those columns and in `sampling`."""
    requests = shard_requests(prompts, sampling, sampling_seed)
    return candidate_rows(prompts, requests, backend.generate(requests, sampling), backend.model_name, sampling, sampling_seed, backend_kind)


def shard_requests(prompts: pl.DataFrame, sampling: SamplingConfig, sampling_seed: int) -> list[ChatRequest]:
    """One request per prompt row, in row order, with its own seed (request_seed) and, where the
    prompt draws its own temperature / top_p, its own sampling."""
    seeds = [request_seed(sampling_seed, pid) for pid in prompts["prompt_id"]]
    own = prompt_sampling(prompts, sampling)
    return [
        ChatRequest(messages=list(m), seed=s, json_schema=sampling.json_schema, sampling=None if mine is sampling else mine)
        for m, s, mine in zip(prompts["messages"].to_list(), seeds, own)
    ]


def candidate_rows(prompts: pl.DataFrame, requests: list[ChatRequest], generations: list[Generation], model_name: str,
                   sampling: SamplingConfig, sampling_seed: int, backend_kind: str) -> pl.DataFrame:
    """The candidate rows of a shard (generate_shard) from its requests (shard_requests) and their
    generations, both in prompt order. Raises RuntimeError when the counts differ."""
    if len(generations) != len(requests):
        raise RuntimeError(f"backend returned {len(generations)} results for {len(requests)} requests")
    seeds = [r.seed for r in requests]
    own = [r.sampling or sampling for r in requests]
    sampling_json = json.dumps(sampling.model_dump(mode="json") | {"seed": sampling_seed}, sort_keys=True)
    rows = []
    for prompt_row, seed, gen, mine in zip(prompts.iter_rows(named=True), seeds, generations, own):
        if mine is not sampling:
            prompt_row = prompt_row | {name: getattr(mine, name) for name in PER_PROMPT_SAMPLING if name in prompt_row}
            row_sampling = json.dumps(mine.model_dump(mode="json") | {"seed": sampling_seed}, sort_keys=True)
        else:
            prompt_row = prompt_row | {name: getattr(sampling, name) for name in PER_PROMPT_SAMPLING if name in prompt_row}
            row_sampling = sampling_json
        if gen.error is not None:
            outputs = [(None, "error", 0)]  # one row, so that the failure is visible and counted
        else:
            outputs = [(c.text, c.finish_reason, c.completion_tokens) for c in gen.completions]
        for index, (text, finish, tokens) in enumerate(outputs):
            rows.append(
                prompt_row
                | {
                    "candidate_id": f"{prompt_row['prompt_id']}-{index}",
                    "sample_index": index,
                    "sample_seed": seed,
                    "completion": text,
                    "finish_reason": finish,
                    "prompt_tokens": gen.prompt_tokens,
                    "completion_tokens": tokens,
                    "model": model_name,
                    "backend": backend_kind,
                    "sampling": row_sampling,
                    "generate_keep": gen.error is None,
                    "generate_reason": None if gen.error is None else GENERATE_ERROR,
                    "generate_error": gen.error,
                    "group_id": prompt_row["prompt_id"],
                    "parent_id": None,
                    "lineage": [prompt_row["prompt_id"]],
                }
            )
    extra = {name: dtype for name, dtype in prompts.schema.items() if name not in PROMPT_SCHEMA}
    frame = pl.DataFrame(rows, schema=CANDIDATE_SCHEMA | extra)
    return frame.with_columns(
        pl.col("generate_keep").alias("keep"),
        pl.when(pl.col("generate_keep")).then(None).otherwise(pl.lit("generate")).cast(pl.String).alias("dropped_by"),
    )

