"""Drops candidates the model did not finish (cut off by max_tokens), that came back empty, or
that are a repetition loop (datagen.text.degenerate: distinct-4 over the text or its tail).

Precedence of the reasons: `empty`, then `repetitive`, then `truncated`. A loop cut off by
max_tokens is `repetitive`: the loop is why it hit the limit, and a larger max_tokens would only
make it longer. A cut-off row records the limit it hit in `finished_max_tokens`.
"""

from __future__ import annotations

import json
from typing import Literal

import polars as pl

from datagen.text.degenerate import repetitive_series
from datagen.steps.base import StageConfigBase, Step, verdict


class FinishedConfig(StageConfigBase):
    stage: Literal["finished"] = "finished"
    drop_truncated: bool = True
    drop_empty: bool = True
    drop_repetitive: bool = True

    def writes(self) -> set[str]:
        return super().writes() | {f"{self.label}_max_tokens"}

    def build(self) -> "FinishedStage":
        return FinishedStage(self)


def _max_tokens(sampling: str | None) -> int | None:
    try:
        value = json.loads(sampling or "{}").get("max_tokens")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


class FinishedStage(Step):
    def __init__(self, config: FinishedConfig):
        self.config = config
        self.label = config.label

    def __call__(self, batch: pl.DataFrame) -> pl.DataFrame:
        cut = pl.col("finish_reason") == "length"
        truncated = pl.lit(self.config.drop_truncated) & cut
        empty = pl.lit(self.config.drop_empty) & (pl.col("completion").str.strip_chars().str.len_chars() == 0)
        looping = repetitive_series(batch["completion"]) if self.config.drop_repetitive and batch.height else pl.Series([False] * batch.height, dtype=pl.Boolean)
        repetitive = pl.lit(looping)
        reason = pl.when(empty).then(pl.lit("empty")).when(repetitive).then(pl.lit("repetitive")).otherwise(pl.lit("truncated"))
        limits = [_max_tokens(s) for s in batch["sampling"]] if "sampling" in batch.columns else [None] * batch.height
        return batch.with_columns(
            *verdict(self.label, ~(truncated | empty | repetitive), reason),
            pl.when(cut).then(pl.lit(pl.Series(limits, dtype=pl.Int64))).otherwise(None).alias(f"{self.label}_max_tokens"),
        )
