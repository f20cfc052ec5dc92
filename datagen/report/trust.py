"""How far a run's model steps can be trusted: the generator's request errors and degenerate
answers, each step's own figures (its section's `trust`: errors, degenerate verdicts, a judge's
score spread and order agreement, ...) and the length bias of the pairs written. Read from the
stage summaries (and the pair builder's figures) that the manifest keeps, so the report and the
dataset card show the same figures. The bounds a figure is flagged past: datagen.report.flags.
"""

from __future__ import annotations

from typing import Any

from datagen.report.flags import MAX_DEGENERATE_RATE, MAX_ERROR_RATE, Figure, length_bias, rate
from datagen.report.sections import kept_errors, with_summary

__all__ = ["Figure", "card_lines", "kept_errors", "trust"]


def _generate(stats: list[dict[str, Any]]) -> list[Figure]:
    generated = stats[0]["kept"]
    failed = sum(stats[0]["dropped"].values())
    figures = [rate("request errors", failed, generated + failed, MAX_ERROR_RATE, "many requests failed")]
    dropped: dict[str, int] = {}
    for s in stats[1:]:
        for reason, count in s["dropped"].items():
            dropped[reason] = dropped.get(reason, 0) + count
    degenerate = dropped.get("repetitive", 0) + dropped.get("empty", 0)
    if any(r in dropped for r in ("repetitive", "empty", "truncated")):
        figures.append(rate("degenerate (repetitive or empty)", degenerate, generated, MAX_DEGENERATE_RATE, "the generator often loops or says nothing"))
        figures.append(rate("cut off at max_tokens", dropped.get("truncated", 0), generated, MAX_ERROR_RATE, "many answers hit max_tokens"))
    return figures


def trust(stage_stats: list[dict[str, Any]], output: dict[str, Any] | None = None) -> list[tuple[str, list[Figure]]]:
    """[(step label, [(figure, value, warning or None), ...]), ...] for the generator, every step
    whose section has trust figures, and the pairs written. `stage_stats` as
    datagen.run.stats.summarize returns it."""
    if not stage_stats:
        return []
    sections = [("generate", _generate(stage_stats))]
    for stage, section in with_summary(stage_stats[1:]):
        figures = section.trust(stage["summary"])
        if figures:
            sections.append((stage["stage"], figures))
    delta = (output or {}).get("length_delta_chars")
    if isinstance(delta, dict) and "chosen_longer" in delta:
        sections.append(("pairs", [length_bias("chosen side is the longer one", delta["chosen_longer"], int((output or {}).get("pairs") or 0))]))
    return sections


def card_lines(stage_stats: list[dict[str, Any]], output: dict[str, Any] | None = None) -> list[str]:
    """The trust figures as the dataset card's Markdown section (empty when there are none)."""
    sections = trust(stage_stats, output)
    if not sections:
        return []
    lines = ["", "## Trust", "", "| step | figure | value | warning |", "|---|---|---|---|"]
    for step, figures in sections:
        lines += [f"| {step} | {name} | {value} | {'**' + warning + '**' if warning else '-'} |" for name, value, warning in figures]
    return lines
