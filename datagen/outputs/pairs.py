"""Chosen/rejected pairs for DPO, built from every candidate of a shard (kept and dropped).

Each strategy turns one prompt's candidates into options (a chosen side and a rejected side) in its
order of preference; `select` then takes up to `pairs_per_prompt` of them under rules every strategy
shares: never two identical or near-duplicate sides, never a length ratio above the limit, a
rejected side used once, and no side both chosen and rejected. Chosen sides are candidates alive
after the last stage; rejected sides are candidates that reached the deciding stage.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import polars as pl

from datagen.outputs.config import PairsConfig
from datagen.errors import DatagenError
from datagen.llm.generate import MESSAGE
from datagen.text.minhash import Shingles, jaccard, shingle
from datagen.steps.base import group_ids
from datagen.text.normalize import normalize_series

# Prompt-level provenance copied onto every pair.
PROVENANCE = ("prompt_id", "template_id", "slots", "persona", "difficulty", "topic", "task_type", "reference", "seed", "model", "backend", "sampling",
              "cluster_id", "cluster_label", "failure_id", "group_id", "lineage", "source_ids", "temperature", "top_p")
COMPLETION = "completion"
# Verdicts that say the check could not judge the candidate (missing reference, broken verifier or
# sandbox, a pattern that backtracks without end, unparsable judge): such a candidate is not known
# to be worse, so it is never rejected.
NOT_THE_CANDIDATES_FAULT = frozenset(
    {"no_reference", "bad_reference", "no_tests", "no_verifier", "verifier_error", "verifier_timeout", "sandbox_error", "judge_error",
     "revise_error"}
)
FAILURE_OUTPUT = "failure_output"  # a counterexample run's correction prompts carry the failing output here


@dataclass(frozen=True)
class Side:
    row: int  # the candidate's index in the shard
    column: str  # where its text is: the completion, or the revise stage's revision
    score: float | None
    verdict: str | None

    @property
    def key(self) -> tuple[int, str]:
        return self.row, self.column


@dataclass(frozen=True)
class Option:
    chosen: Side
    rejected: Side


@dataclass
class Tally:
    """What happened to the prompts of one or more shards, for the card."""

    prompts: int = 0
    with_pairs: int = 0
    without_pairs: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    deltas: list[int] = field(default_factory=list)  # len(chosen) - len(rejected), characters
    margins: list[float] = field(default_factory=list)

    def add(self, other: "Tally") -> None:
        self.prompts += other.prompts
        self.with_pairs += other.with_pairs
        self.without_pairs.update(other.without_pairs)
        self.skipped.update(other.skipped)
        self.deltas.extend(other.deltas)
        self.margins.extend(other.margins)


class Shard:
    """The columns of one shard's candidates as Python lists, read once."""

    def __init__(self, frame: pl.DataFrame):
        self.frame = frame
        self.alive: list[bool] = frame["keep"].to_list()
        self.ids: list[str] = frame["candidate_id"].to_list()
        self._columns: dict[str, list] = {}

    def column(self, name: str, field_name: str = "output.pairs.stage") -> list:
        if name not in self._columns:
            if name not in self.frame.columns:
                raise DatagenError(f"the candidates have no column {name!r}; the deciding stage did not write it", field=field_name)
            self._columns[name] = self.frame[name].to_list()
        return self._columns[name]

    def text(self, side: Side) -> str:
        return self.column(side.column)[side.row] or ""

    def side_id(self, side: Side) -> str:
        """Where a side's text comes from: its candidate's id, or for the failing output an eval
        recorded (the correction strategy) that failure's id."""
        if side.column == FAILURE_OUTPUT and "failure_id" in self.frame.columns:
            return self.column("failure_id")[side.row]
        return self.ids[side.row]


Strategy = Callable[[Shard, list[int], PairsConfig], "list[Option] | str"]


def verified(shard: Shard, rows: list[int], config: PairsConfig) -> list[Option] | str:
    """A candidate that passed the deciding stage (e.g. a verifier) vs one that failed it."""
    label = config.stage_label
    passed, reasons = shard.column(f"{label}_keep"), shard.column(f"{label}_reason")
    chosen = [i for i in rows if shard.alive[i] and passed[i] is True]
    rejected = [i for i in rows if passed[i] is False and reasons[i] not in NOT_THE_CANDIDATES_FAULT]
    if not chosen:
        return "no_chosen"
    if not rejected:
        return "no_rejected"
    return [Option(Side(c, COMPLETION, None, "keep"), Side(r, COMPLETION, None, reasons[r])) for c in chosen for r in rejected]


def score_difference(chosen: float, rejected: float) -> float:
    """chosen - rejected rounded to 9 decimals: weighted means such as 7/3 - 4/3 must not miss a
    margin of 1 by a rounding error, and the pair's `margin` column holds the value compared."""
    return round(chosen - rejected, 9)


def score_margin(shard: Shard, rows: list[int], config: PairsConfig) -> list[Option] | str:
    """Best vs worst score, widest margin first; only margins of at least min_margin (and above 0)."""
    label = config.stage_label
    scores = shard.column(config.score, "output.pairs.score_column")
    reasons = shard.column(f"{label}_reason") if f"{label}_reason" in shard.frame.columns else [None] * len(shard.ids)
    scored = [i for i in rows if scores[i] is not None]
    chosen = [i for i in scored if shard.alive[i]]
    if not scored:
        return "unscored"
    if not chosen:
        return "no_chosen"
    if len(scored) < 2:
        return "one_scored"
    options = []
    for c in chosen:
        for r in scored:
            margin = score_difference(float(scores[c]), float(scores[r]))
            if c != r and margin > 0 and margin >= config.min_margin:
                chosen_side = Side(c, COMPLETION, float(scores[c]), reasons[c] or "keep")
                options.append((margin, Option(chosen_side, Side(r, COMPLETION, float(scores[r]), reasons[r] or "keep"))))
    if not options:
        return "below_margin"
    options.sort(key=lambda pair: -pair[0])  # stable: ties stay in sample order
    return [option for _, option in options]


def pairwise(shard: Shard, rows: list[int], config: PairsConfig) -> list[Option] | str:
    """The winner of an order-consistent pairwise judgment vs its loser; highest win rates first."""
    label = config.stage_label
    comparisons, rates = shard.column(f"{label}_comparisons"), shard.column(f"{label}_win_rate")
    by_id = {shard.ids[i]: i for i in rows}
    chosen = [i for i in rows if shard.alive[i] and comparisons[i]]
    if not chosen:
        return "no_chosen" if not any(shard.alive[i] for i in rows) else "not_compared"
    options = []
    for c in chosen:
        items = comparisons[c] if isinstance(comparisons[c], list) else json.loads(comparisons[c])
        for comparison in items:
            r = by_id.get(comparison.get("opponent"))
            if r is not None and comparison.get("result") == "win" and comparison.get("consistent") is True:
                options.append(Option(Side(c, COMPLETION, rates[c], "win"), Side(r, COMPLETION, rates[r], "loss")))
    if not options:
        return "no_consistent_win"
    options.sort(key=lambda o: (-(o.chosen.score or 0.0), o.rejected.score or 0.0))
    return options


def critique_revision(shard: Shard, rows: list[int], config: PairsConfig) -> list[Option] | str:
    """The revised answer (chosen) vs the original it revised (rejected)."""
    label = config.stage_label
    revisions, errors = shard.column(f"{label}_revision"), shard.column(f"{label}_error")
    revised = [i for i in rows if shard.alive[i] and revisions[i] and errors[i] is None]
    if not revised:
        return "no_revision"
    return [Option(Side(i, f"{label}_revision", None, "revision"), Side(i, COMPLETION, None, "original")) for i in revised]


def correction(shard: Shard, rows: list[int], config: PairsConfig) -> list[Option] | str:
    """A failed eval case asked again (datagen.counterexamples): a sample the deciding stage verified
    against the case's expected answer (chosen) vs the failing output the eval recorded (rejected)."""
    failing = shard.column(FAILURE_OUTPUT, "output.pairs.strategy")
    if not any(failing[i] for i in rows):
        return "not_a_correction"
    passed = shard.column(f"{config.stage_label}_keep")
    fixed = [i for i in rows if shard.alive[i] and passed[i] is True and failing[i]]
    if not fixed:
        return "no_verified_correction"
    return [Option(Side(i, COMPLETION, None, "verified"), Side(i, FAILURE_OUTPUT, None, "failure")) for i in fixed]


def majority(shard: Shard, rows: list[int], config: PairsConfig) -> list[Option] | str:
    """Self-consistency without references: an alive answer in its group's majority answer class
    (the deciding vote's `<label>_in_majority`) vs a minority answer of the same group (one that
    has an answer and reached the vote); the chosen sides' sample order, then the rejected ones'."""
    label = config.stage_label
    voted, in_majority, answers = shard.column(f"{label}_keep"), shard.column(f"{label}_in_majority"), shard.column(f"{label}_answer")
    chosen = [i for i in rows if shard.alive[i] and in_majority[i] is True]
    rejected = [i for i in rows if voted[i] is not None and in_majority[i] is False and answers[i] is not None]
    if not chosen:
        return "no_chosen"
    if not rejected:
        return "no_minority"
    return [Option(Side(c, COMPLETION, None, "majority"), Side(r, COMPLETION, None, "minority")) for c in chosen for r in rejected]


STRATEGIES: dict[str, Strategy] = {
    "verified": verified,
    "score_margin": score_margin,
    "pairwise": pairwise,
    "critique_revision": critique_revision,
    "correction": correction,
    "majority": majority,
}


def length_ratio(a: str, b: str) -> float:
    short, long = sorted((len(a), len(b)))
    return long / short if short else float("inf")


class SideCheck:
    """Why two sides must not make a pair (identical, near-duplicate, lengths too far apart), or None.

    Sides are compared as `datagen.text.normalize` normalises and tokenises them: identical means equal after
    normalisation (NFKC, whitespace, case), near-duplicate is the Jaccard similarity of token
    shingles (words, or characters in scripts written without spaces)."""

    def __init__(self, shard: Shard, columns: list[str], config: PairsConfig):
        self.shard, self.config, self.columns = shard, config, columns
        texts = pl.concat([pl.Series(shard.column(c), dtype=pl.String) for c in columns])
        self.shingles: Shingles = shingle(texts, config.shingle_size)
        self.normalized = normalize_series(texts).to_list()

    def _index(self, side: Side) -> int:
        return self.columns.index(side.column) * len(self.shard.ids) + side.row

    def __call__(self, option: Option) -> str | None:
        chosen, rejected = self.shard.text(option.chosen), self.shard.text(option.rejected)
        a, b = self._index(option.chosen), self._index(option.rejected)
        if (self.normalized[a] or "") == (self.normalized[b] or ""):
            return "identical"
        if jaccard(self.shingles.of(a), self.shingles.of(b)) >= self.config.near_duplicate_threshold:
            return "near_duplicate"
        limit = self.config.max_length_ratio
        if limit is not None and length_ratio(chosen, rejected) > limit:
            return "length_ratio"
        return None


def select(options: list[Option], limit: int, check: Callable[[Option], str | None]) -> tuple[list[Option], Counter]:
    """Up to `limit` options, preferring (in order) chosen sides used least so far, then the
    strategy's own order; an option that fails `check` is skipped and counted by reason."""
    picked: list[Option] = []
    skipped: Counter = Counter()
    excluded: set[int] = set()
    uses: Counter = Counter()
    as_rejected: set[tuple[int, str]] = set()
    while len(picked) < limit:
        best: tuple[tuple[int, int], Option] | None = None
        for rank, option in enumerate(options):
            c, r = option.chosen.key, option.rejected.key
            if rank in excluded or r in as_rejected or r in uses or c in as_rejected:
                continue
            order = (uses[c], rank)
            if best is None or order < best[0]:
                best = (order, option)
        if best is None:
            break
        (_, rank), option = best
        problem = check(option)
        excluded.add(rank)
        if problem is not None:
            skipped[problem] += 1
            continue
        picked.append(option)
        uses[option.chosen.key] += 1
        as_rejected.add(option.rejected.key)
    return picked, skipped


def build_pairs(candidates: pl.DataFrame, config: PairsConfig) -> tuple[pl.DataFrame, Tally]:
    """All pairs of one shard (a prompt's candidates are all in one shard) and what happened to its prompts."""
    shard = Shard(candidates)
    tally = Tally()
    picked: list[Option] = []
    if candidates.height == 0:
        return pair_rows(shard, picked, config), tally
    strategy = STRATEGIES[config.strategy]
    text_columns = [COMPLETION] + ([f"{config.stage_label}_revision"] if config.strategy == "critique_revision" else [])
    text_columns += [FAILURE_OUTPUT] if config.strategy == "correction" else []
    check = SideCheck(shard, text_columns, config)
    # A group: the samples of one prompt, or the children of one row an LLM step expanded.
    groups = candidates.with_row_index("_row").with_columns(_group=group_ids(candidates)).group_by("_group", maintain_order=True).agg("_row")
    for rows in groups["_row"].to_list():
        tally.prompts += 1
        options = strategy(shard, rows, config)
        if isinstance(options, str):
            tally.without_pairs[options] += 1
            continue
        taken, skipped = select(options, config.pairs_per_prompt, check)
        tally.skipped.update(skipped)
        if not taken:
            tally.without_pairs["all_skipped"] += 1
            continue
        tally.with_pairs += 1
        picked.extend(taken)
    for option in picked:
        tally.deltas.append(len(shard.text(option.chosen)) - len(shard.text(option.rejected)))
        if option.chosen.score is not None and option.rejected.score is not None:
            tally.margins.append(score_difference(option.chosen.score, option.rejected.score))
    return pair_rows(shard, picked, config), tally


def pair_schema(candidates: pl.DataFrame, config: PairsConfig) -> dict[str, pl.DataType]:
    text = pl.List(MESSAGE) if config.style == "conversational" else pl.String
    schema: dict[str, pl.DataType] = {"prompt": text, "chosen": text, "rejected": text, "strategy": pl.String}
    schema |= {"chosen_id": pl.String, "rejected_id": pl.String, "chosen_score": pl.Float64, "rejected_score": pl.Float64,
               "margin": pl.Float64, "chosen_verdict": pl.String, "rejected_verdict": pl.String}
    if config.strategy == "critique_revision":
        schema |= {"principle": pl.String, "critique": pl.String}
    return schema | {c: candidates.schema[c] for c in PROVENANCE if c in candidates.columns}


def pair_rows(shard: Shard, picked: list[Option], config: PairsConfig) -> pl.DataFrame:
    schema = pair_schema(shard.frame, config)
    provenance = [c for c in PROVENANCE if c in schema]
    label = config.stage_label
    conversational = config.style == "conversational"
    rows = []
    for option in picked:
        c, r = option.chosen, option.rejected
        messages = shard.column("messages")[c.row]
        row: dict[str, Any] = {
            "prompt": messages if conversational else "\n\n".join(m["content"] for m in messages),
            "chosen": [{"role": "assistant", "content": shard.text(c)}] if conversational else shard.text(c),
            "rejected": [{"role": "assistant", "content": shard.text(r)}] if conversational else shard.text(r),
            "strategy": config.strategy,
            "chosen_id": shard.ids[c.row],
            "rejected_id": shard.side_id(r),
            "chosen_score": c.score,
            "rejected_score": r.score,
            "margin": score_difference(c.score, r.score) if c.score is not None and r.score is not None else None,
            "chosen_verdict": c.verdict,
            "rejected_verdict": r.verdict,
        }
        if config.strategy == "critique_revision":
            row["principle"] = shard.column(f"{label}_principle")[c.row]
            row["critique"] = shard.column(f"{label}_critique")[c.row]
        rows.append(row | {name: shard.column(name)[c.row] for name in provenance})
    return pl.DataFrame(rows, schema=schema)


def _figures(values: list[float], digits: int) -> dict[str, float]:
    array = np.asarray(values, dtype=float)
    quantiles = dict(zip(("min", "p10", "p25", "median", "p75", "p90", "max"), np.quantile(array, [0, 0.1, 0.25, 0.5, 0.75, 0.9, 1])))
    return {"mean": round(float(array.mean()), digits)} | {k: round(float(v), digits) for k, v in quantiles.items()}


def pair_stats(tally: Tally, config: PairsConfig) -> dict[str, Any]:
    stats: dict[str, Any] = {
        "strategy": config.strategy,
        "stage": config.stage_label,
        "style": config.style,
        "pairs": len(tally.deltas),
        "prompts": tally.prompts,
        "prompts_with_pairs": tally.with_pairs,
        "prompts_without_pairs": dict(sorted(tally.without_pairs.items())),
        "skipped_options": dict(sorted(tally.skipped.items())),
        "pairs_per_prompt": config.pairs_per_prompt,
        "max_length_ratio": config.max_length_ratio,
        "near_duplicate_threshold": config.near_duplicate_threshold,
    }
    if config.strategy == "score_margin":
        stats |= {"score_column": config.score, "min_margin": config.min_margin}
    if tally.deltas:
        deltas = tally.deltas
        stats["length_delta_chars"] = _figures(deltas, 1) | {"chosen_longer": round(sum(d > 0 for d in deltas) / len(deltas), 4)}
    if tally.margins:
        stats["score_margin"] = _figures(tally.margins, 3)
    return stats
