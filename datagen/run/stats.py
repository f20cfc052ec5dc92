"""Figures of a run recorded in its manifest: per shard of a step (rows in, kept, reasons, seconds)
and their totals per step, in pipeline order."""

from __future__ import annotations

from typing import Any

import polars as pl


def shard_stats(label: str, before: pl.DataFrame, after: pl.DataFrame, seconds: float) -> dict[str, Any]:
    """For generate, `before` is the prompt shard: rows in are prompts, kept are candidates."""
    generated = label == "generate"
    alive_in = before.height if generated else int(before["keep"].sum())
    dropped = after.filter(pl.col("dropped_by") == label)
    reasons = dropped.group_by(f"{label}_reason").len().rows() if dropped.height else []
    rows_in = before if generated else before.filter(pl.col("keep"))
    counts_in = dict(rows_in.group_by("template_id").len().rows())
    counts_kept = dict(after.filter(pl.col("keep")).group_by("template_id").len().rows())
    stats: dict[str, Any] = {
        "rows_in": alive_in,
        "kept": int(after["keep"].sum()),
        "reasons": {str(reason): int(count) for reason, count in reasons},
        "seconds": round(seconds, 3),
        "by_template": {t: [n, counts_kept.get(t, 0)] for t, n in sorted(counts_in.items())},
    }
    if generated:
        stats["tokens"] = int(after["completion_tokens"].sum())
    stats |= step_tokens(label, after)
    return stats


def step_tokens(label: str, rows: pl.DataFrame) -> dict[str, int]:
    """{"prompt_tokens", "completion_tokens"}: the sums of the step's token columns over `rows` (one
    of its output shards), {} for a step that writes none (it calls no model)."""
    columns = token_columns(label)
    if not set(columns) <= set(rows.columns):
        return {}
    return {key: int(rows[column].sum() or 0) for key, column in zip(("prompt_tokens", "completion_tokens"), columns)}


def token_columns(label: str) -> tuple[str, str]:
    """The columns where a model step records, per row, the prompt and completion tokens of the
    requests it made for that row (a request made for several rows, one prompt with n samples,
    counts its prompt on one of them): their sum over the step's output is what it spent."""
    return f"{label}_prompt_tokens", f"{label}_completion_tokens"


def stage_kinds(manifest: dict[str, Any]) -> dict[str, str]:
    """Step label -> its kind (the `stage:` name; "generate" for generation), from the resolved
    recipe the manifest keeps. A run recorded without it gives {} (its labels are then read as kinds)."""
    stages = ((manifest.get("resolved") or {}).get("recipe") or {}).get("stages") or []
    kinds = {"generate": "generate"}
    for stage in stages:
        if isinstance(stage, dict) and isinstance(stage.get("stage"), str):
            kinds[stage.get("name") or stage["stage"]] = stage["stage"]
    return kinds if stages else {}


def summarize(manifest: dict[str, Any], labels: list[str], used: int | None = None) -> list[dict[str, Any]]:
    """Totals per stage across shards, in pipeline order; `kind` is the step's kind (its section
    in the report and card, see datagen.report.sections)."""
    kinds = stage_kinds(manifest)
    summary = []
    for label in labels:
        recorded = manifest["stages"][label]["shards"]
        # a target run counts only the shards its rows come from (datagen/run/target.py)
        shards = [s for j, s in recorded.items() if used is None or int(j) < used]
        reasons: dict[str, int] = {}
        for s in shards:
            for reason, count in s["reasons"].items():
                reasons[reason] = reasons.get(reason, 0) + count
        by_template: dict[str, list[int]] = {}
        for s in shards:
            for template, (n_in, n_kept) in s.get("by_template", {}).items():
                total = by_template.setdefault(template, [0, 0])
                total[0] += n_in
                total[1] += n_kept
        entry = {
            "stage": label,
            "kind": kinds.get(label, label),
            "by_template": by_template,
            "rows_in": sum(s["rows_in"] for s in shards),
            "kept": sum(s["kept"] for s in shards),
            "dropped": reasons,
            "seconds": round(sum(s["seconds"] for s in shards), 3),
        }
        if "summary" in manifest["stages"][label]:
            entry["summary"] = manifest["stages"][label]["summary"]
        if label == "generate":
            entry["tokens"] = sum(s.get("tokens", 0) for s in shards)
        if any("prompt_tokens" in s for s in shards):
            entry["prompt_tokens"] = sum(s.get("prompt_tokens", 0) for s in shards)
            entry["completion_tokens"] = sum(s.get("completion_tokens", 0) for s in shards)
        summary.append(entry)
    return summary
