"""Each step kind's part of the run report, `datagen inspect` and the dataset card, keyed by the
kind's `stage:` name (the same names as datagen.steps.STEP_KINDS). The report and the card iterate
over a run's steps and ask `section_for`; they know no step kind themselves.

A kind without an entry here is shown by the generic `Section` (its summary as figures and YAML).
A kind with figures worth a chart: a module here defining a `Section` subclass, plus its line in
SECTIONS.
"""

from __future__ import annotations

from typing import Any

from datagen.report.sections.base import Section
from datagen.report.sections.collapse import CollapseSection
from datagen.report.sections.converse import ConverseSection
from datagen.report.sections.counterexample import CounterexampleSection
from datagen.report.sections.dedup import DedupSection
from datagen.report.sections.judge import JudgeSection
from datagen.report.sections.llm import LlmSection
from datagen.report.sections.revise import ReviseSection
from datagen.report.sections.verify import VerifySection
from datagen.report.sections.vote import VoteSection

SECTIONS: dict[str, Section] = {
    "collapse": CollapseSection(),
    "converse": ConverseSection(),
    "counterexample": CounterexampleSection(),
    "dedup": DedupSection(),
    "judge": JudgeSection(),
    "llm": LlmSection(),
    "revise": ReviseSection(),
    "verify": VerifySection(),
    "vote": VoteSection(),
}
GENERIC = Section()


def section_for(stage: dict[str, Any]) -> Section:
    """The section of a step's totals (datagen.run.stats.summarize: `kind`, else its label)."""
    return SECTIONS.get(stage.get("kind") or stage["stage"], GENERIC)


def with_summary(stages: list[dict[str, Any]]) -> list[tuple[dict[str, Any], Section]]:
    """(step totals, its section) of every step that left a summary (a dict), in pipeline order."""
    return [(s, section_for(s)) for s in stages if isinstance(s.get("summary"), dict) and s["summary"]]


def kept_errors(stage: dict[str, Any]) -> int:
    """Rows a step recorded an error on but did not drop (a judge or revise step with on_error:
    keep): alive, but they never passed the step. 0 for a step without a summary."""
    return section_for(stage).kept_errors(stage) if isinstance(stage.get("summary"), dict) else 0


__all__ = ["GENERIC", "SECTIONS", "Section", "kept_errors", "section_for", "with_summary"]
