"""What a run directory (or a plain output dataset) holds, read once for the report and `inspect`.

Each step's summary is shown by its kind's section (datagen.report.sections, keyed by the kind
datagen.run.stats.summarize records); a kind without a section of its own is still shown as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from datagen.errors import DatagenError
from datagen.report.sections import with_summary
from datagen.run.run_dir import MANIFEST, RUN_SUBDIR, RunDir


@dataclass
class RunView:
    out: Path
    manifest: dict[str, Any] | None  # None for a plain output dataset
    stages: list[dict[str, Any]]  # totals per stage in pipeline order (executor.summarize)
    rows: pl.LazyFrame | None  # every candidate with every verdict, after the last finished stage
    rows_stage: str | None  # the stage `rows` was read after
    output: pl.LazyFrame | None  # the written dataset (data/*.parquet)
    card: str | None  # README.md

    @property
    def labels(self) -> list[str]:
        return [s["stage"] for s in self.stages]

    def columns(self, frame: pl.LazyFrame | None) -> list[str]:
        return [] if frame is None else frame.collect_schema().names()


def _scan(files: list[Path]) -> pl.LazyFrame | None:
    # Shards may disagree on a column's type (all-null in one shard), hence the relaxed concat.
    return pl.concat([pl.scan_parquet(p) for p in files], how="diagonal_relaxed") if files else None


def load_run(out: Path) -> RunView:
    out = Path(out)
    if out.name == RUN_SUBDIR and (out / MANIFEST).exists():
        out = out.parent  # given OUT/run instead of OUT
    if not out.is_dir():
        raise DatagenError("not a directory" if out.exists() else "no such directory", out)
    run = RunDir(out)
    manifest = run.read_manifest()
    data_files = sorted((out / "data").glob("*.parquet"))
    card_path = out / "README.md"
    card = card_path.read_text(errors="replace") if card_path.is_file() else None
    if manifest is None and not data_files:
        raise DatagenError("holds neither a datagen run (run/manifest.json) nor a dataset (data/*.parquet)", out)
    stages: list[dict[str, Any]] = []
    rows = rows_stage = None
    if manifest is not None:
        from datagen.run.stats import summarize

        entries = manifest.get("stages", {})
        labels = sorted(entries, key=lambda label: entries[label].get("index", 0))
        stages = summarize(manifest, labels)
        for label in reversed(labels):
            index = entries[label].get("index", 0)
            files = [run.shard_path(index, label, j) for j in range(manifest.get("shards", 0))]
            if files and all(p.exists() for p in files):
                rows, rows_stage = _scan(files), label
                break
    return RunView(out, manifest, stages, rows, rows_stage, _scan(data_files), card)


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def key_figures(view: RunView) -> list[tuple[str, str]]:
    """The headline numbers, as (name, value) text pairs: the report's overview and `inspect`."""
    m = view.manifest
    figures: list[tuple[str, str]] = []
    if m is None:
        title = next((line[2:].strip() for line in (view.card or "").splitlines() if line.startswith("# ")), None)
        if title:
            figures.append(("name", title))
        if view.output is not None:
            figures.append(("rows", str(view.output.select(pl.len()).collect().item())))
            if "template_id" in view.output.collect_schema():
                counts = view.output.group_by("template_id").len().sort("template_id").collect().rows()
                figures.append(("rows per template", ", ".join(f"{t}: {n}" for t, n in counts)))
        return figures
    figures += [("recipe", str(m.get("recipe", "?"))), ("model", str(m.get("model", "?")))]
    status = "complete" if m.get("complete") else f"incomplete (verdicts up to stage {view.rows_stage or 'none'})"
    figures.append(("run", status))
    generate = next((s for s in view.stages if s["stage"] == "generate"), None)
    if generate is not None:
        text = f"{generate['kept']} candidates from {generate['rows_in']} prompts"
        tokens, seconds = generate.get("tokens", 0), generate["seconds"]
        if tokens:
            text += f", {tokens} tokens" + (f" ({tokens / seconds:.0f} tokens/s)" if seconds > 0 else "")
        figures.append(("generated", text))
    output = m.get("output") if isinstance(m.get("output"), dict) else {}
    if m.get("rows_written") is not None:
        written = f"{m['rows_written']}" + (f" ({output['format']})" if output.get("format") else "")
        if output.get("pairs") is not None and output.get("prompts") is not None:
            written += f": pairs from {output.get('prompts_with_pairs')} of {output['prompts']} prompts"
        figures.append(("rows written", written))
    for stage, section in with_summary(view.stages):
        headline = section.headline(stage["summary"])
        if headline:
            figures.append((stage["stage"], headline))
    return figures


def card_funnel(card: str | None) -> str | None:
    """The dataset card's table of rows through the stages (a plain dataset has no manifest)."""
    if not card or "## Rows through the stages" not in card:
        return None
    lines = card.split("## Rows through the stages", 1)[1].strip().splitlines()
    table = []
    for line in lines:
        if not line.startswith("|"):
            break
        table.append(line)
    return "\n".join(table) or None


def text_of(value: Any) -> str:
    """A completion, a chosen/rejected side or a prompt as plain text (str or list of messages)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(f"[{m.get('role')}] {m.get('content')}" if isinstance(m, dict) else str(m) for m in value)
    return str(value)


# Why a prompt gave no preference pair (datagen.outputs.pairs), in words.
NO_PAIR_REASONS = {
    "no_chosen": "no candidate of the prompt survived every stage, so there is no chosen side",
    "no_rejected": "no candidate failed the deciding stage (or its failures were broken checks), so there is no rejected side",
    "unscored": "no candidate of the prompt has a score in the score column",
    "one_scored": "only one candidate of the prompt has a score, so there is nothing to compare it with",
    "below_margin": "the best and worst scores differ by less than min_margin",
    "not_compared": "no surviving candidate was compared with another (fewer than two candidates reached the pairwise judge)",
    "no_consistent_win": "no comparison had a winner in both orders (ties or order-dependent verdicts)",
    "no_revision": "no revision: the revise stage failed or its revisions were degenerate",
    "not_a_correction": "the row is not a correction of a failure",
    "no_verified_correction": "no correction was verified against the expected answer",
    "no_minority": "no sample gave an answer other than the majority's (samples without an answer are never a rejected side), so there is no minority side",
    "all_skipped": "every possible pair was skipped (identical or near-duplicate sides, or past max_length_ratio)",
    "identical": "the two sides are the same text after normalisation",
    "near_duplicate": "the two sides are near-duplicates (token-shingle Jaccard at or above near_duplicate_threshold)",
    "length_ratio": "one side is more than max_length_ratio times longer than the other",
}


def explain_no_pair(reason: str) -> str:
    """A pair builder's reason code in words (the code itself when unknown)."""
    return NO_PAIR_REASONS.get(reason, reason.replace("_", " "))


def why_empty(stage_stats: list[dict[str, Any]], top: int = 3) -> str | None:
    """Why no row survived: the stage that dropped the last alive rows and its most frequent
    reasons, e.g. "judge dropped the last 12 rows (low_score: 9, judge_error: 3)"; None when
    rows survived (or nothing was generated, then the generate stage is named)."""
    for s in stage_stats:
        if s["stage"] == "generate":
            if s["kept"] == 0:
                reasons = sorted(s["dropped"].items(), key=lambda kv: -kv[1])[:top]
                return "generation produced no candidate" + (f" ({', '.join(f'{r}: {c}' for r, c in reasons)})" if reasons else "")
            continue
        if s["rows_in"] and s["kept"] == 0:
            reasons = sorted(s["dropped"].items(), key=lambda kv: (-kv[1], kv[0]))[:top]
            return f"stage {s['stage']!r} dropped the last {s['rows_in']} rows ({', '.join(f'{r}: {c}' for r, c in reasons)})"
    return None
