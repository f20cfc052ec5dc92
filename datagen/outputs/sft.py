"""SFT rows: the candidates alive after the last stage, in TRL's `messages` or prompt/completion format."""

from __future__ import annotations

from typing import Any

import polars as pl

# Bookkeeping columns that say nothing about a kept row (every verdict there is "keep", and no
# kept row had a failed request).
INTERNAL = {"keep", "dropped_by", "completion", "generate_error"}


def sft_rows(candidates: pl.DataFrame, fmt: str, stage_labels: list[str]) -> pl.DataFrame:
    alive = candidates.filter(pl.col("keep"))
    assistant = pl.concat_list(pl.struct(pl.lit("assistant").alias("role"), pl.col("completion").alias("content")))
    verdicts = {f"{label}_{suffix}" for label in stage_labels for suffix in ("keep", "reason")}
    meta = [c for c in alive.columns if c not in INTERNAL and c not in verdicts and c != "messages"]
    if fmt == "sft":
        head = [pl.concat_list(pl.col("messages"), assistant).alias("messages")]
    else:
        head = [pl.col("messages").alias("prompt"), assistant.alias("completion")]
    return alive.select(*head, *meta)


def sft_stats(rows: pl.DataFrame) -> dict[str, Any]:
    prompts = rows["prompt_id"].n_unique() if "prompt_id" in rows.columns and rows.height else 0
    return {"rows": rows.height, "prompts": prompts}
