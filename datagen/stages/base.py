"""What a filter stage is: a config that builds a callable annotating a batch with its verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import polars as pl
from pydantic import Field

from datagen.schema import StrictModel


class StageConfigBase(StrictModel):
    name: str | None = Field(None, pattern=r"^[a-z][a-z0-9_]*$", description="column prefix; defaults to the stage kind")
    templates: list[str] | None = Field(
        None, min_length=1, description="apply only to rows of these templates; the others pass through untouched"
    )

    @property
    def label(self) -> str:
        return self.name or self.stage  # type: ignore[attr-defined]

    def input_files(self) -> list[Path]:
        """Files the stage reads besides its rows; their contents are part of the stage's key."""
        return []

    def build(self) -> "Stage":
        raise NotImplementedError


class Stage(Protocol):
    """Adds `<label>_keep` (bool) and `<label>_reason` (null when kept) plus any scores.

    It only sees rows that every earlier stage kept; it must not drop or reorder rows.
    Optional hooks, called by the executor when a stage defines them:
      fit(shards): called once before any shard with a callable returning an iterator over
        every alive input row (all shards, in order), for stages with global state (dedup).
      summarize(outputs: pl.LazyFrame) -> dict: stage-level figures for the report and card
        (JSON-serializable), computed from all of the stage's output shards.
      close(): called when the stage is done (or failed), to release models it holds.
    """

    label: str

    def __call__(self, batch: pl.DataFrame) -> pl.DataFrame: ...


def verdict(label: str, keep: pl.Expr, reason: pl.Expr) -> list[pl.Expr]:
    """The two verdict columns, with the reason null where the row is kept."""
    return [keep.alias(f"{label}_keep"), pl.when(keep).then(None).otherwise(reason).cast(pl.String).alias(f"{label}_reason")]


class FittedVerdicts:
    """The verdicts a global stage decided in `fit` (candidate_id plus its columns), looked up per
    shard by binary search over sorted ids: joining each shard against the whole table would hash
    every row of the run again for every shard."""

    def __init__(self, verdicts: pl.DataFrame):
        self.table = verdicts.sort("candidate_id")
        self.ids = self.table["candidate_id"]

    def lookup(self, batch: pl.DataFrame) -> pl.DataFrame | None:
        """The batch's verdict columns in the batch's row order, or None if fit did not see every row."""
        if batch.height == 0:
            return self.table.clear().drop("candidate_id")
        if self.ids.len() == 0:
            return None
        at = self.ids.search_sorted(batch["candidate_id"]).clip(upper_bound=self.ids.len() - 1)
        found = self.table.gather(at)
        if not (found["candidate_id"] == batch["candidate_id"]).all():
            return None
        return found.drop("candidate_id")

    def require(self, batch: pl.DataFrame, label: str) -> pl.DataFrame:
        """`lookup`, for a stage that cannot decide a batch on its own once fitted."""
        columns = self.lookup(batch)
        if columns is None:
            raise RuntimeError(f"stage {label!r} got rows that fit did not see")
        return columns
