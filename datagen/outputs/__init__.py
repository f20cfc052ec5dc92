"""Builders: the rows a run writes, made from every candidate of the last stage (kept and dropped).

`sft` and `prompt_completion` keep the alive candidates; `dpo` pairs them by the recipe's
`output.pairs` strategy. Shards are built one at a time (a prompt's candidates are all in one
shard), so memory holds one shard of candidates plus the output rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import polars as pl

from datagen.errors import DatagenError
from datagen.outputs.counterexamples import counterexample_rows, counterexample_stats
from datagen.outputs.mix import ORIGIN, REAL, SYNTHETIC, WEIGHT, apply_mix, real_rows
from datagen.outputs.pairs import Tally, build_pairs, pair_stats
from datagen.outputs.sft import sft_rows, sft_stats

if TYPE_CHECKING:
    from datagen.recipe import OutputConfig
    from datagen.sources.data import Source


# Opens a data source of the recipe by name (datagen.sources.data.Source): real rows come from it.
DataRows = Callable[[str], "Source"]


def build_output(
    shards: list[Path],
    output: "OutputConfig",
    stage_labels: list[str],
    *,
    seed: int = 0,
    source: str | None = None,
    data: DataRows | None = None,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The output rows and the builder's figures for the dataset card.

    Every row gets `origin: synthetic`; `output.mix` (datagen.outputs.mix) then weights, ranks and
    cuts them, and adds real rows of the source `data(name)` opens, sampled with
    `seed`. `data` is called only when the mix has real rows. DatagenError (naming `source`, the recipe, and the output.mix field) for a formula or
    real-row template the rows cannot satisfy."""
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
    rows = rows.with_columns(pl.lit(SYNTHETIC, dtype=pl.String).alias(ORIGIN))
    stats = pair_stats(tally, output.pairs) if output.format == "dpo" and output.pairs is not None else sft_stats(rows)
    if output.format == "counterexamples":
        stats |= counterexample_stats(rows)
    if output.mix is not None:
        rows, mix_stats = mix_rows(rows, output, seed, source, data)
        stats["mix"] = mix_stats
    return rows, {"format": output.format} | stats


def mix_rows(rows: pl.DataFrame, output: "OutputConfig", seed: int, source: str | None, data: DataRows | None) -> tuple[pl.DataFrame, dict[str, Any]]:
    """`output.mix` applied to the generated rows, with the real rows added (see datagen.outputs.mix)."""
    mix = output.mix
    assert mix is not None
    rows, stats = apply_mix(rows, mix, source)
    synthetic = rows.height
    if mix.real is not None:
        if data is None:
            raise DatagenError(f"real rows come from the data source {mix.real.source!r}, but the recipe has no data section", source, "output.mix.real.from")
        weight = mix.real.weight
        if weight is None and WEIGHT in rows.columns:
            weight = rows[WEIGHT].max()
        real, stats["real"] = real_rows(data(mix.real.source), mix.real, output.format, synthetic, seed, weight, source)
        rows = pl.concat([rows, real], how="diagonal_relaxed")
    stats["origin"] = {SYNTHETIC: synthetic, REAL: rows.height - synthetic}
    return rows, stats


__all__ = ["build_output"]
