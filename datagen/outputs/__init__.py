"""Builders: the rows a run writes, made from every candidate of the last stage (kept and dropped).

`sft` and `prompt_completion` keep the alive candidates; `dpo` pairs them by the recipe's
`output.pairs` strategy. Shards are built one at a time (a prompt's candidates are all in one
shard), so memory holds one shard of candidates plus the output rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from datagen.outputs.counterexamples import counterexample_rows, counterexample_stats
from datagen.outputs.pairs import Tally, build_pairs, pair_stats
from datagen.outputs.sft import sft_rows, sft_stats

if TYPE_CHECKING:
    from datagen.recipe import OutputConfig


def build_output(shards: list[Path], output: "OutputConfig", stage_labels: list[str]) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The output rows and the builder's figures for the dataset card."""
    if not shards:
        raise ValueError("no shards to build from")
    parts, tally = [], Tally()
    for path in shards:
        candidates = pl.read_parquet(path)
        if output.format == "dpo":
            assert output.pairs is not None  # OutputConfig fills it in for dpo
            rows, shard_tally = build_pairs(candidates, output.pairs)
            tally.add(shard_tally)
        elif output.format == "counterexamples":
            rows = counterexample_rows(candidates, stage_labels)
        else:
            rows = sft_rows(candidates, output.format, stage_labels)
        parts.append(rows)
    rows = pl.concat(parts, how="diagonal_relaxed", rechunk=False)  # the shards' chunks as they are: no second copy
    stats = pair_stats(tally, output.pairs) if output.format == "dpo" and output.pairs is not None else sft_stats(rows)
    if output.format == "counterexamples":
        stats |= counterexample_stats(rows)
    return rows, {"format": output.format} | stats


__all__ = ["build_output"]
