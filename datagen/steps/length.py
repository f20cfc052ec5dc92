"""Bounds on completion length, in characters and in tokens."""

from __future__ import annotations

from typing import Literal

import polars as pl
from pydantic import Field, model_validator

from datagen.steps.base import StageConfigBase, Step, verdict


class LengthConfig(StageConfigBase):
    stage: Literal["length"] = "length"
    min_chars: int = Field(0, ge=0)
    max_chars: int | None = Field(None, ge=1)
    min_tokens: int = Field(0, ge=0)
    max_tokens: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> "LengthConfig":
        if self.max_chars is not None and self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) is larger than max_chars ({self.max_chars})")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) is larger than max_tokens ({self.max_tokens})")
        return self

    def build(self) -> "LengthStage":
        return LengthStage(self)


class LengthStage(Step):
    def __init__(self, config: LengthConfig):
        self.config = config
        self.label = config.label

    def __call__(self, batch: pl.DataFrame) -> pl.DataFrame:
        c = self.config
        chars = pl.col("completion").str.strip_chars().str.len_chars()
        tokens = pl.col("completion_tokens")
        checks = [
            (chars < c.min_chars, "too_short"),
            (chars > (c.max_chars if c.max_chars is not None else float("inf")), "too_long"),
            (tokens < c.min_tokens, "too_few_tokens"),
            (tokens > (c.max_tokens if c.max_tokens is not None else float("inf")), "too_many_tokens"),
        ]
        reason = pl.lit(None, dtype=pl.String)
        for failed, label in reversed(checks):
            reason = pl.when(failed).then(pl.lit(label)).otherwise(reason)
        return batch.with_columns(verdict(self.label, reason.is_null(), reason))
