"""How far a run's model steps can be trusted: the generator's request errors and degenerate
answers, each step's own figures (its section's `trust`: errors, degenerate verdicts, a judge's
score spread and order agreement, ...) and the length bias of the pairs written. Read from the
stage summaries (and the pair builder's figures) that the manifest keeps, so the report and the
dataset card show the same figures. The bounds a figure is flagged past: datagen.report.flags.
"""

from __future__ import annotations

from typing import Any

from datagen.report.flags import MAX_DEGENERATE_RATE, MAX_ERROR_RATE, Figure, length_bias, rate
from datagen.report.sections import kept_errors, section_for

__all__ = ["Figure", "card_lines", "kept_errors", "trust"]


# Steps whose rows are model output: the degenerate-answer filters after one (finished, collapse,
# length) judge that step's answers, up to the next such step.
ANSWERING_STEPS = ("generate", "llm", "converse")
DEGENERATE_REASONS = ("repetitive", "empty", "truncated")


def _request_errors(generate: dict[str, Any]) -> Figure:
    failed = sum(generate["dropped"].values())
    return rate("request errors", failed, generate["kept"] + failed, MAX_ERROR_RATE, "many requests failed")


def _degenerate(answers: int, later: list[dict[str, Any]]) -> list[Figure]:
    """Degenerate answers among a model step's `answers` rows: the drops of the filters in `later`
    (the stages after the step, up to the next answering step) for looping, empty or cut-off text."""
    dropped: dict[str, int] = {}
    for s in later:
        for reason, count in s["dropped"].items():
            dropped[reason] = dropped.get(reason, 0) + count
    if not any(r in dropped for r in DEGENERATE_REASONS):
        return []
    degenerate = dropped.get("repetitive", 0) + dropped.get("empty", 0)
    return [
        rate("degenerate (repetitive or empty)", degenerate, answers, MAX_DEGENERATE_RATE, "the model often loops or says nothing"),
        rate("cut off at max_tokens", dropped.get("truncated", 0), answers, MAX_ERROR_RATE, "many answers hit max_tokens"),
    ]


def trust(stage_stats: list[dict[str, Any]], output: dict[str, Any] | None = None) -> list[tuple[str, list[Figure]]]:
    """[(step label, [(figure, value, warning or None), ...]), ...] for the generator, every step
    whose section has trust figures, and the pairs written. `stage_stats` as
    datagen.run.stats.summarize returns it.

    Degenerate and cut-off answers are counted against the model step that wrote them (the
    generator, or an `llm` / `converse` step of a chain): the drops for them by the stages after
    it, up to the next such step, over the rows it wrote."""
    if not stage_stats:
        return []
    answering = [0] + [i for i, s in enumerate(stage_stats) if i and s.get("kind", s["stage"]) in ANSWERING_STEPS]
    sections = []
    for i, stage in enumerate(stage_stats):
        figures = [_request_errors(stage)] if i == 0 else []
        if i and isinstance(stage.get("summary"), dict) and stage["summary"]:
            figures += section_for(stage).trust(stage["summary"])
        if i in answering:
            until = next((j for j in answering if j > i), len(stage_stats))
            figures += _degenerate(stage["kept"], stage_stats[i + 1 : until])
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
