"""Run to a target: `output.target_rows: N` within `output.max_candidates: M`.

The prompts are taken in a fixed order (templates interleaved in proportion to their `count`, so
every prefix has the recipe's mix) and cut to the budget (M // n prompts, n = samples per prompt).
The run goes wave after wave of shards through every step and stops once the output builder has N
rows from the shards so far; the rows written are the first N in shard order (prompt order, then
sample order). Each shard's result depends only on the shards before it: a step that decides over
the whole run (dedup, collapse) is fitted, for shard j, on shards 0..j only, and keeps the first
of near-duplicates, so a later shard never changes an earlier one. Waves are therefore only a
matter of speed: two runs, a killed and resumed run, and a run whose N was raised later (N and M
enter no resume key) give the same rows.

When the budget runs out first, what was kept is written, one line says so (card, manifest,
stderr) and `datagen run` exits with EXIT_SHORT.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import polars as pl

from datagen.errors import DatagenError

# `datagen run`'s exit status when the budget ran out before the target: the rows are written.
EXIT_SHORT = 3


@dataclass
class Target:
    """The target of a run (`rows`), its budget in candidates (`max_candidates`, None: every
    prompt the templates give) and the samples per prompt (`n`)."""

    rows: int
    max_candidates: int | None
    n: int

    @classmethod
    def of(cls, loaded: Any) -> "Target | None":
        """The recipe's target, None without `output.target_rows`.

        Raises DatagenError: a counterexample recipe (its size is its budget), a final mix (ranked
        and cut over every row), or a budget smaller than one prompt's samples."""
        recipe = loaded.recipe
        output = recipe.output
        if output.target_rows is None:
            return None
        if recipe.input is not None:
            raise DatagenError("a counterexample run's size is its budget; remove output.target_rows", loaded.path, "output.target_rows")
        if getattr(output, "mix", None) is not None:  # its rank and top-k cut decide over every row, not shard by shard
            raise DatagenError("output.mix ranks and cuts over all the rows, a target counts them shard by shard; use one of them",
                               loaded.path, "output.target_rows")
        n = recipe.backend.sampling.n
        if output.max_candidates is not None and output.max_candidates < n:
            raise DatagenError(
                f"is smaller than one prompt's samples (backend.sampling.n = {n})", loaded.path, "output.max_candidates"
            )
        return cls(output.target_rows, output.max_candidates, n)

    def budget_prompts(self, available: int) -> int:
        """The prompts the run may generate from: the budget's, at most what the templates give."""
        return available if self.max_candidates is None else min(available, self.max_candidates // self.n)

    def stream(self, prompts: pl.DataFrame) -> pl.DataFrame:
        """The prompts in the order a target run takes them, cut to the budget."""
        ordered = interleave(prompts)
        return ordered.head(self.budget_prompts(ordered.height))

    def limit(self, available: int) -> str:
        """What bounds the run's prompts, for the line that says the budget ran out."""
        if self.max_candidates is not None and self.max_candidates // self.n < available:
            return f"output.max_candidates = {self.max_candidates} ({self.max_candidates // self.n} prompts x n = {self.n})"
        return f"every prompt the templates give ({available}, their count; output.max_candidates can only lower it)"


def interleave(prompts: pl.DataFrame) -> pl.DataFrame:
    """The prompts with the templates interleaved in proportion to their number of prompts: the
    i-th of a template's c prompts goes at (i + 1/2) / c, ties in template order; each template's
    own order is kept. Every prefix then holds each template in its share (to within one prompt)."""
    if prompts.height == 0:
        return prompts
    templates = {t: k for k, t in enumerate(prompts["template_id"].unique(maintain_order=True))}
    position = pl.int_range(pl.len()).over("template_id")
    size = pl.len().over("template_id")
    keyed = prompts.with_columns(
        ((position.cast(pl.Float64) + 0.5) / size).alias("_at"),
        pl.col("template_id").replace_strict(templates, return_dtype=pl.Int64).alias("_template"),
    )
    return keyed.sort(["_at", "_template"], maintain_order=True).drop("_at", "_template")


@dataclass
class Outcome:
    """Where a target run stopped: `used` shards (the rows come from these), `kept` output rows
    in them (at least the target when `reached`), `candidates` generated in them."""

    target: Target
    used: int
    kept: int
    reached: bool
    prompts: int
    candidates: int
    limit: str
    counts: list[int] = field(default_factory=list)

    @property
    def written(self) -> int:
        return min(self.kept, self.target.rows)

    def line(self) -> str:
        """The one line about the target for the card, the manifest and stderr."""
        if self.reached:
            return (f"target {self.target.rows} rows reached after {self.used} shard(s) "
                    f"({self.prompts} prompts, {self.candidates} candidates); the first {self.target.rows} of {self.kept} are written")
        return (f"target {self.target.rows} rows not reached: the budget ran out with {self.kept} rows "
                f"({self.prompts} prompts, {self.candidates} candidates; limit: {self.limit}); "
                f"they are written, and a larger budget continues this run")

    def record(self) -> dict[str, Any]:
        return {
            "rows": self.target.rows, "max_candidates": self.target.max_candidates, "reached": self.reached,
            "shards_used": self.used, "kept": self.kept, "written": self.written, "prompts": self.prompts,
            "candidates": self.candidates, "line": self.line(),
        }


def next_wave(target: Target, counts: list[int], prompts_done: int, shard_size: int, left: int) -> int:
    """Shards to run next: one to start with, then as many as the rows per prompt seen so far
    project for what is missing (at least one; twice as many as so far while nothing is kept)."""
    have = sum(counts)
    if not counts:
        return 1
    if have == 0:
        return max(1, min(left, len(counts)))
    needed_prompts = (target.rows - have) * prompts_done / have
    return max(1, min(left, math.ceil(needed_prompts / shard_size)))


def run_to_target(
    target: Target,
    shard_sizes: list[int],
    process: Callable[[list[int]], None],
    output_rows: Callable[[int], int],
    shard_figures: Callable[[int], dict[str, float]],
    limit: str,
    say: Callable[[str], None] | None = None,
) -> Outcome:
    """Waves of shards (`process(wave)` runs them through every step) until the output rows of the
    shards so far (`output_rows(j)`, shard by shard) reach the target or the shards run out.
    `shard_figures(j)` gives a processed shard's candidates, tokens and seconds, for the yield
    estimate `say` prints after each wave."""
    counts: list[int] = []
    figures: list[dict[str, float]] = []
    while len(counts) < len(shard_sizes) and sum(counts) < target.rows:
        done = sum(shard_sizes[: len(counts)])
        size = next_wave(target, counts, done, max(shard_sizes), len(shard_sizes) - len(counts))
        wave = list(range(len(counts), len(counts) + size))
        process(wave)
        for j in wave:
            counts.append(output_rows(j))
            figures.append(shard_figures(j))
        if say is not None:
            say(estimate_line(target, counts, sum(shard_sizes[: len(counts)]), _totals(figures)))
    used, running = len(counts), 0
    for j, count in enumerate(counts):  # the rows come from the shortest prefix that holds them
        running += count
        if running >= target.rows:
            used = j + 1
            break
    kept = sum(counts[:used])
    return Outcome(target, used, kept, kept >= target.rows, sum(shard_sizes[:used]), int(_totals(figures[:used])["candidates"]), limit, counts)


def _totals(figures: list[dict[str, float]]) -> dict[str, float]:
    return {key: sum(f.get(key, 0.0) for f in figures) for key in ("candidates", "tokens", "seconds")}


def estimate_line(target: Target, counts: list[int], prompts: int, totals: dict[str, float]) -> str:
    """'target 100: 37 rows after 2 shards (128 prompts, 0.29 rows/prompt); to reach it: ~219 more
    prompts, ~880 candidates, ~61,000 tokens, ~95 s' (projected from the rate so far)."""
    have = sum(counts)
    head = f"target {target.rows}: {have} rows after {len(counts)} shard(s) ({prompts} prompts, {have / prompts:.2f} rows/prompt)"
    if have >= target.rows:
        return head + "; reached"
    if have == 0:
        return head + "; no row kept yet, no projection"
    more = (target.rows - have) * prompts / have
    per_prompt = {key: value / prompts for key, value in totals.items()}
    return (head + f"; to reach it: ~{math.ceil(more)} more prompts, ~{math.ceil(more * per_prompt['candidates']):,} candidates, "
            f"~{math.ceil(more * per_prompt['tokens']):,} tokens, ~{math.ceil(more * per_prompt['seconds']):,} s")


def stderr_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
