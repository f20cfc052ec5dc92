"""Drops candidates the model did not finish (cut off by max_tokens) or that came back empty."""

from __future__ import annotations

from typing import Literal

import polars as pl

from datagen.stages.base import StageConfigBase, verdict


class FinishedConfig(StageConfigBase):
    stage: Literal["finished"] = "finished"
    drop_truncated: bool = True
    drop_empty: bool = True

    def build(self) -> "FinishedStage":
        return FinishedStage(self)


class FinishedStage:
    def __init__(self, config: FinishedConfig):
        self.config = config
        self.label = config.label

    def __call__(self, batch: pl.DataFrame) -> pl.DataFrame:
        truncated = pl.lit(self.config.drop_truncated) & (pl.col("finish_reason") == "length")
        empty = pl.lit(self.config.drop_empty) & (pl.col("completion").str.strip_chars().str.len_chars() == 0)
        reason = pl.when(empty).then(pl.lit("empty")).otherwise(pl.lit("truncated"))
        return batch.with_columns(verdict(self.label, ~(truncated | empty), reason))
